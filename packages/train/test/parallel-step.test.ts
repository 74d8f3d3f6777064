// THE proof of the parallel training step: the tiny preset trained for several steps on a layout equals
// the same steps on one process. In f64 the only differences are the order of sums (gradients over
// ranks and micro-batches, the k-way expert combine, the all-reduce tree), ~1e-16 per operation
// (measured: losses agree to ~1e-16 relative); the bounds below, 1e-11 on losses and gradient norms
// and 1e-10 on the parameters after the AdamW steps, leave room only for rounding, not for a bug.
import { fileURLToPath } from 'node:url';
import { PassThrough } from 'node:stream';
import { relativeError } from '@dsv3/core/testing';
import { launchLocal } from '@dsv3/parallel';
import { beforeAll, describe, expect, it } from 'vitest';
import { trainStep, type StepResult } from '../src/index.js';
import { STEPS, adamsOf, flatParams, stepInputs, tinyF64 } from './parallel-common.js';

/** Bytes of the reference model's parameters (or whole state dict, buffers too) whose names pass `keep`. */
type BytesWhere = (keep: (name: string) => boolean) => number;
let paramBytesWhere: BytesWhere;
let stateBytesWhere: BytesWhere;

const script = fileURLToPath(new URL('./ranks/parallel-step.ts', import.meta.url));
let ref: { results: StepResult[]; params: Float64Array };
let names: string[];

beforeAll(async () => {
  const model = tinyF64();
  model.train();
  const adams = adamsOf(model);
  const results: StepResult[] = [];
  for (let s = 0; s < STEPS; s++) results.push(await trainStep(model, adams, model.parameters(), stepInputs(s, 1)));
  ref = { results, params: flatParams(model) };
  const named = model.namedParameters();
  paramBytesWhere = (keep) => named.reduce((a, [n, p]) => a + (keep(n) ? p.value.size * 8 : 0), 0);
  const state = Object.entries(model.stateDict());
  stateBytesWhere = (keep) => state.reduce((a, [n, t]) => a + (keep(n) ? t.size * (t.dtype === 'f64' ? 8 : 4) : 0), 0);
  names = named.map(([n]) => n);
}, 300_000);

interface Case {
  parallel: string;
  nproc: number;
  zero: boolean;
  schedules: string[];
  /** Sequences per micro-batch (the reference uses 1; all sequences have one length, so the objective is the same). */
  micro: number;
  ranksPerNode?: number;
  /**
   * Bytes each rank must hold (sharded by stage and expert), by schedule: of parameters after set-up
   * with `paramBytesWhere`, of the state dict its start-up gave memory with `stateBytesWhere`.
   */
  heldBytes: (rank: number, schedule: string, bytesWhere: BytesWhere) => number;
}

const all = () => true;
const routed = (n: string) => /\.experts\.\d+\./.test(n);
const embedding = (n: string) => n.startsWith('model.embed_tokens.');
// tiny: 3 layers; units [embedding, layer 0, 1, 2, head] cut in two: stage 0 = embedding + layer 0.
const stage0 = (n: string) => embedding(n) || n.startsWith('model.layers.0.');
// DualPipeV on 2 ranks: 4 stages [emb], [layer 0], [layer 1], [layer 2, head]; rank 0 holds stages 0
// and 3 (the embedding for both), rank 1 stages 1 and 2.
const vRank1 = (n: string) => n.startsWith('model.layers.0.') || n.startsWith('model.layers.1.');

const cases: Case[] = [
  // The issue's layout: 8 ranks, DualPipe between the stages, experts over 2 ranks, ZeRO-1.
  // DualPipe holds both stages on each pipeline rank (2x parameters); ep=2 halves the routed experts.
  {
    parallel: 'dp=2,pp=2,ep=2',
    nproc: 8,
    zero: true,
    schedules: ['dualpipe'],
    micro: 1,
    heldBytes: (_r, _s, bytesWhere) => bytesWhere(all) - bytesWhere(routed) / 2,
  },
  // Experts over 4 ranks as 2 nodes of 2: the two-hop dispatch (across nodes, then within the node).
  {
    parallel: 'ep=4',
    ranksPerNode: 2,
    nproc: 4,
    zero: false,
    schedules: ['1f1b'],
    micro: 1,
    heldBytes: (_r, _s, bytesWhere) => bytesWhere(all) - (bytesWhere(routed) * 3) / 4,
  },
  // Every other schedule kind on a 2-rank pipeline (8 micro-batches of 2 sequences); each rank holds
  // its stages (the last stage also the embedding, which the MTP modules use).
  {
    parallel: 'pp=2',
    nproc: 2,
    zero: false,
    schedules: ['gpipe', '1f1b', 'zb1p', 'dualpipev'],
    micro: 2,
    heldBytes: (rank, schedule, bytesWhere) =>
      schedule === 'dualpipev'
        ? bytesWhere((n) => vRank1(n) === (rank === 1))
        : bytesWhere((n) => (rank === 0 ? stage0(n) : !stage0(n) || embedding(n))),
  },
];

type RankResult = Record<
  string,
  {
    results: StepResult[];
    params: Record<string, Float64Array>;
    heldBytes: number;
    materializedBytes: number;
    /** Gradients left after the steps: how many, and how many are slices of their bucket's flat array. */
    grads: { inBucket: number; all: number };
  }
>;

describe('parallel training step equals one process (tiny preset, f64)', () => {
  for (const c of cases) {
    it(`${c.parallel} on ${c.nproc} ranks${c.ranksPerNode ? ` (${c.ranksPerNode} per node)` : ''} (${c.schedules.join(', ')}), ZeRO-1 ${c.zero ? 'on' : 'off'}`, {
      timeout: 900_000,
    }, async () => {
      const log = new PassThrough();
      let text = '';
      log.on('data', (d) => (text += d));
      const env = {
        PARALLEL: c.parallel,
        ZERO: c.zero ? '1' : '0',
        SCHEDULES: c.schedules.join(','),
        MICRO: String(c.micro),
        ...(c.ranksPerNode && { RANKS_PER_NODE: String(c.ranksPerNode) }),
      };
      const res = await launchLocal({ nproc: c.nproc, script, env, timeoutMs: 880_000, stdout: log, stderr: log });
      for (const r of res) expect(r.error, `rank ${r.rank}: ${r.error?.stack}\n${text}`).toBeUndefined();
      for (const kind of c.schedules) {
        const got = (res[0]!.result as RankResult)[kind]!;
        // Every rank reports the same (all-reduced) step results.
        for (const rk of res)
          (rk.result as RankResult)[kind]!.results.forEach((s, i) =>
            expect(s.loss, `${kind}: rank ${rk.rank} step ${i + 1}`).toBe(got.results[i]!.loss),
          );
        got.results.forEach((s, i) => {
          const e = ref.results[i]!;
          for (const k of ['loss', 'mainLoss', 'mtpLoss', 'balanceLoss', 'gradNorm'] as const) {
            expect(
              Math.abs((s[k] as number) - (e[k] as number)),
              `${kind} step ${i + 1} ${k}: ${s[k]} vs ${e[k]}`,
            ).toBeLessThanOrEqual(1e-11 * Math.abs(e[k] as number));
          }
          expect(s.maxVio).toEqual(e.maxVio);
        });
        // Each rank holds only its stages' and experts' parameters, and its start-up gave memory to
        // nothing else; their parts make the whole model.
        for (const rk of res) {
          const r = (rk.result as RankResult)[kind]!;
          expect(r.heldBytes, `${kind}: rank ${rk.rank} parameter bytes`).toBe(
            c.heldBytes(rk.rank, kind, paramBytesWhere),
          );
          expect(r.materializedBytes, `${kind}: rank ${rk.rank} bytes built`).toBe(
            c.heldBytes(rk.rank, kind, stateBytesWhere),
          );
          // gradients were accumulated in place in the rank's flat per-bucket arrays, not in new tensors
          expect(r.grads.all, `${kind}: rank ${rk.rank} gradients`).toBeGreaterThan(0);
          expect(r.grads.inBucket, `${kind}: rank ${rk.rank} gradients in their bucket`).toBe(r.grads.all);
        }
        const parts = Object.assign({}, ...res.map((rk) => (rk.result as RankResult)[kind]!.params));
        expect(Object.keys(parts).sort()).toEqual([...names].sort());
        const flat = new Float64Array(ref.params.length);
        let o = 0;
        for (const n of names) {
          flat.set(parts[n], o);
          o += parts[n].length;
        }
        expect(relativeError(flat, ref.params), kind).toBeLessThan(1e-10);
      }
    });
  }
});
