// The f32 training attention as a job of the GEMM engine (src/cpu/gemm/training-attention.ts): outputs,
// log-sum-exps and all three gradients bitwise those of the kernels it replaced (kept frozen in
// test/reference/), for ropeAttention (both rotary layouts, shared and per-batch angles) and
// causalAttention, on 1 and 2 threads, chunks of all pairs, a batch row, one or two pairs, over shapes with
// S off every tile (query blocks of 32, micro-tiles of 4 x 8, past the GEMM's 256-deep block), H 1..5;
// the worker threads really taking tasks; float64 where the old kernels took another product path; clear
// errors on bad arguments.
import { afterEach, describe, expect, it } from 'vitest';
import type { KernelTensor } from '../src/backend.js';
import * as plain from '../src/cpu/attention-kernels.js';
import { cpu, raw, wrap } from '../src/cpu/backend.js';
import { getEngine } from '../src/cpu/gemm/runtime.js';
import {
  type HeadOperand,
  queryRanges,
  type TrainingAttentionArgs,
  trainingAttentionForward,
  trainingAttentionRuns,
} from '../src/cpu/gemm/training-attention.js';
import * as rope from '../src/cpu/rope-attention-kernels.js';
import { Rng, setAttentionScoreBudget, setGemmThreads } from '../src/index.js';
import * as refPlain from './reference/attention-kernels.js';
import * as refRope from './reference/rope-attention-kernels.js';
import { withScratchPast2GiB } from './scratch-past-2gib.js';

afterEach(() => {
  setAttentionScoreBudget();
  refPlain.setAttentionScoreBudget();
  setGemmThreads(2);
});

interface Shape {
  B: number;
  S: number;
  H: number;
  dn: number;
  dr: number;
  dv: number;
}

const SHAPES: Shape[] = [
  { B: 8, S: 128, H: 4, dn: 32, dr: 16, dv: 32 }, // the tiny preset's layer
  { B: 2, S: 5, H: 3, dn: 3, dr: 4, dv: 5 },
  { B: 3, S: 70, H: 5, dn: 24, dr: 8, dv: 20 },
  { B: 1, S: 9, H: 1, dn: 5, dr: 2, dv: 3 },
  { B: 2, S: 33, H: 2, dn: 7, dr: 6, dv: 9 },
  { B: 2, S: 4, H: 2, dn: 2, dr: 2, dv: 3 }, // S below a micro-tile, several pairs (a batched GEMM before)
  { B: 1, S: 300, H: 2, dn: 8, dr: 4, dv: 12 }, // keys past the GEMM's 256-deep block
  { B: 1, S: 37, H: 2, dn: 262, dr: 6, dv: 5 }, // q · kᵀ deeper than that block: the packed keys' two depth blocks
  { B: 1, S: 45, H: 2, dn: 6, dr: 4, dv: 261 }, // dO · vᵀ deeper than that block: the packed values' two depth blocks
];

function inputs(s: Shape, seed: number, cosRows: number) {
  const { B, S, H, dn, dr, dv } = s;
  const rng = new Rng(seed);
  const r = (shape: number[]) =>
    wrap(
      'f32',
      shape,
      Float32Array.from({ length: shape.reduce((x, y) => x * y) }, () => 2 * rng.normal()),
    );
  const rope = [
    r([B, S, H, dn + dr]),
    r([B, S, H, dn + dv]),
    r([B, S, dr]),
    r([cosRows, S, dr / 2]),
    r([cosRows, S, dr / 2]),
  ];
  const plainIns = [r([B, S, H, dn + dr]), r([B, S, H, dn + dr]), r([B, S, H, dv])];
  return { rope, plain: plainIns, dO: r([B, S, H, dv]) };
}

/** [o, lse, dq, dk(v), dkr | dv] of both kernel pairs, as raw arrays. */
function runRope(
  k: Pick<typeof rope, 'ropeAttentionKernel' | 'ropeAttentionBackwardKernel'>,
  ins: KernelTensor[],
  dO: KernelTensor,
  interleave: boolean,
) {
  const attrs = { scale: 0.3, interleave };
  const [o, lse] = k.ropeAttentionKernel(cpu, ins, attrs);
  return [o!, lse!, ...k.ropeAttentionBackwardKernel(cpu, [...ins, o!, lse!, dO], attrs)].map(raw);
}
function runPlain(
  k: Pick<typeof plain, 'causalAttentionKernel' | 'causalAttentionBackwardKernel'>,
  ins: KernelTensor[],
  dO: KernelTensor,
) {
  const [o, lse] = k.causalAttentionKernel(cpu, ins, { scale: 0.45 });
  return [o!, lse!, ...k.causalAttentionBackwardKernel(cpu, [...ins, o!, lse!, dO], { scale: 0.45 })].map(raw);
}

/** The first element (Object.is: -0 and NaN payloads count) where two result lists differ, or null. */
function firstDifference(a: ArrayLike<number>[], b: ArrayLike<number>[]): string | null {
  for (const [j, x] of a.entries()) {
    const y = b[j]!;
    if (x.length !== y.length) return `output ${j}: length ${x.length} vs ${y.length}`;
    for (let i = 0; i < x.length; i++)
      if (!Object.is(x[i], y[i])) return `output ${j} element ${i}: ${x[i]} vs ${y[i]}`;
  }
  return null;
}

describe('training attention on the GEMM engine', () => {
  it('runs here (the wasm engine is there)', () => {
    expect(trainingAttentionRuns()).toBe(true);
  });

  for (const threads of [1, 2])
    it(`is bitwise the previous kernels', both layouts, forward and gradients (${threads} thread${threads > 1 ? 's' : ''})`, () => {
      setGemmThreads(threads);
      let cases = 0;
      SHAPES.forEach((s, n) => {
        // all pairs in one chunk, a batch row per chunk, one pair per chunk, two (chunks that split batch
        // rows) on the shorter shapes. The old kernels ran that many pairs per GEMM call; with one pair
        // per call and S <= 4 they took the GEMV (see below), so those shapes skip the last two.
        const split = s.S > 4 && s.S < 128;
        const budgets = [undefined, s.H * s.S * s.S, ...(split ? [s.S * s.S, 2 * s.S * s.S] : [])];
        for (const budget of budgets) {
          setAttentionScoreBudget(budget);
          refPlain.setAttentionScoreBudget(budget);
          for (const [interleave, cosRows] of [
            [false, 1],
            [true, s.B],
          ] as const) {
            const x = inputs(s, 100 + 7 * n, cosRows);
            const diff = firstDifference(
              runRope(rope, x.rope, x.dO, interleave),
              runRope(refRope, x.rope, x.dO, interleave),
            );
            expect(diff, `ropeAttention ${JSON.stringify(s)} interleave ${interleave} budget ${budget}`).toBeNull();
            cases++;
          }
          const x = inputs(s, 200 + 7 * n, 1);
          const diff = firstDifference(runPlain(plain, x.plain, x.dO), runPlain(refPlain, x.plain, x.dO));
          expect(diff, `causalAttention ${JSON.stringify(s)} budget ${budget}`).toBeNull();
          cases++;
        }
      });
      expect(cases).toBe(SHAPES.reduce((n, s) => n + (s.S > 4 && s.S < 128 ? 4 : 2), 0) * 3);
    });

  it('hands tasks to the worker threads, with the same bits as on one thread', () => {
    const e = getEngine()!;
    if (!e.canThread()) return;
    const s = SHAPES[0]!;
    const x = inputs(s, 7, 1);
    setGemmThreads(1);
    const one = runRope(rope, x.rope, x.dO, false);
    setGemmThreads(2);
    const before = e.workerTasks();
    const deadline = Date.now() + 20_000;
    let two: ArrayLike<number>[];
    do two = runRope(rope, x.rope, x.dO, false);
    while (e.workerTasks() === before && Date.now() < deadline);
    expect(e.workerTasks(), 'tasks run on a worker').toBeGreaterThan(before);
    expect(firstDifference(two, one)).toBeNull();
  });

  it("cuts a prefill's few pairs into query ranges of about equal causal work, at query-block multiples", () => {
    expect(queryRanges(512, 8, 1)).toEqual([0, 512]); // one thread: whole pairs
    expect(queryRanges(512, 32, 2)).toEqual([0, 512]); // enough pairs (a training step)
    expect(queryRanges(512, 8, 2)).toEqual([0, 352, 512]); // V3-mini's prefill: 8 heads, 2 threads
    expect(queryRanges(40, 1, 2)).toEqual([0, 32, 40]); // no more parts than query blocks
    for (const [S, pairs] of [
      [512, 1],
      [300, 2],
      [4096, 8],
      [2048, 8],
      [70, 15],
    ] as const) {
      const r = queryRanges(S, pairs, 2);
      const work = r.slice(1).map((end, k) => end * end - r[k]! * r[k]!); // ~ rows x their keys
      expect(r[0]).toBe(0);
      expect(r.at(-1)).toBe(S);
      r.slice(1, -1).forEach((at, k) => {
        expect(at % 32, `${S}: boundary ${at}`).toBe(0);
        expect(at).toBeGreaterThan(r[k]!);
      });
      expect(pairs * (r.length - 1)).toBeLessThanOrEqual(512);
      // two parts of a long prompt: about equal (finer parts are bounded by the 32-row blocks)
      if (r.length === 3 && S >= 512)
        expect(Math.max(...work) / Math.min(...work), `${S} x ${pairs}: ${r}`).toBeLessThan(1.15);
    }
  });

  it("splits a prefill-shaped job's query rows over the threads with the previous kernels' bits", () => {
    // one batch row of 8 heads, S past several query blocks (V3-mini's prefill has 8 heads): on 2 threads
    // each pair's rows are cut in two (queryRanges), the output and lse still those of the frozen kernels
    // (S = 203: the second part's keys end inside a packed 8-key panel)
    for (const s of [
      { B: 1, S: 200, H: 8, dn: 16, dr: 8, dv: 12 },
      { B: 1, S: 203, H: 8, dn: 16, dr: 8, dv: 12 },
    ]) {
      expect(queryRanges(s.S, s.H, 2).length).toBe(3);
      for (const threads of [1, 2]) {
        setGemmThreads(threads);
        for (const [interleave, cosRows] of [
          [false, 1],
          [true, 1],
        ] as const) {
          const x = inputs(s, 41, cosRows);
          expect(
            firstDifference(runRope(rope, x.rope, x.dO, interleave), runRope(refRope, x.rope, x.dO, interleave)),
          ).toBeNull();
        }
      }
    }
  });

  it("takes the softmax's row maximum as the previous kernels do for any scale and special scores", () => {
    // a positive finite scale takes the maximum over P in f32 then scales it (softmaxRows' maxTimesScale):
    // its bits are the f64 products' maximum's; 0, negative, infinite or NaN scales take the f64 pass.
    // Scores with ±0, ±∞ and NaN; scales whose products underflow (1e-300) or round (1/3)
    const s = { B: 1, S: 70, H: 2, dn: 0, dr: 0, dv: 9 };
    const dq = 12;
    for (const threads of [1, 2]) {
      setGemmThreads(threads);
      for (const scale of [0.3, 1 / 3, 1e-300, 5e-324, -0.3, 0, -0, Infinity, Number.NaN]) {
        for (const special of [false, true]) {
          const x = inputs({ ...s, dn: dq }, 77, 1).plain;
          if (special) {
            const [q, k] = [raw(x[0]!), raw(x[1]!)];
            q.fill(0, 0, 3 * dq); // rows of zero scores (+0 or −0 products)
            k[5 * s.H * dq] = -0;
            q[(40 * s.H + 1) * dq] = Infinity; // a row of ±∞ scores
            k[20 * s.H * dq + 2] = Number.NaN; // a key whose scores are NaN from row 20 on
            q[50 * s.H * dq] = -Infinity;
          }
          const dO = inputs({ ...s, dn: dq }, 78, 1).dO;
          const run = (k: Pick<typeof plain, 'causalAttentionKernel' | 'causalAttentionBackwardKernel'>) => {
            const [o, lse] = k.causalAttentionKernel(cpu, x, { scale });
            return [o!, lse!, ...k.causalAttentionBackwardKernel(cpu, [...x, o!, lse!, dO], { scale })].map(raw);
          };
          expect(firstDifference(run(plain), run(refPlain)), `scale ${scale} special ${special}`).toBeNull();
        }
      }
    }
  });

  it('reads its task words as unsigned: operands past 2 GiB of the engine memory', () => {
    const s = SHAPES[2]!;
    const x = inputs(s, 11, 1);
    // the reference before any hole: run between two, its blocks would take the first hole's freed pages
    // (a job's large scratch goes back when it ends), and the next could not place 2 GiB again
    const want = runRope(refRope, x.rope, x.dO, false);
    for (const threads of [1, 2]) {
      setGemmThreads(threads);
      let got: ArrayLike<number>[] = [];
      const at = withScratchPast2GiB(getEngine()!, () => {
        got = runRope(rope, x.rope, x.dO, false);
      });
      expect(at).toBeGreaterThanOrEqual(2 ** 31);
      expect(firstDifference(got, want)).toBeNull();
    }
  });

  it('one pair of S <= 4 (a GEMV before) agrees with float64', () => {
    // With a single (batch, head) pair the old kernels' q·kᵀ and dO·vᵀ took the GEMV kernel (batch 1,
    // m <= gemvMaxM), whose sums split differently; the job runs the GEMM there too.
    for (const S of [1, 2, 3, 4]) {
      const s = { B: 1, S, H: 1, dn: 3, dr: 2, dv: 5 };
      const x = inputs(s, 300 + S, 1);
      const wide = (ts: KernelTensor[]) => ts.map((t) => wrap('f64', t.shape, Float64Array.from(raw(t))));
      const got = runRope(rope, x.rope, x.dO, false);
      const want = runRope(rope, wide(x.rope), wide([x.dO])[0]!, false);
      got.forEach((g, j) => {
        const w = want[j]!;
        const scale = Math.max(1, ...Array.from(w, Math.abs));
        for (let i = 0; i < g.length; i++)
          expect(Math.abs(g[i]! - w[i]!) / scale, `S ${S} output ${j} element ${i}`).toBeLessThan(1e-5);
      });
    }
  });

  it('rejects bad arguments with what was expected', () => {
    const f = (n: number) => new Float32Array(n);
    const heads = (data: Float32Array, width: number, offset = 0): HeadOperand => ({
      data,
      layout: 'heads',
      width,
      offset,
    });
    const [B, S, H, dq, dv] = [2, 8, 2, 4, 3];
    const ok: TrainingAttentionArgs = {
      B,
      S,
      H,
      dq,
      dv,
      scale: 1,
      q: heads(f(B * S * H * dq), dq),
      k: heads(f(B * S * H * dq), dq),
      kShared: null,
      v: heads(f(B * S * H * dv), dv),
      maxPairs: 64,
      rotary: null,
    };
    const [o, lse] = [f(B * S * H * dv), f(B * H * S)];
    expect(() => trainingAttentionForward(ok, o, lse)).not.toThrow();
    expect(() => trainingAttentionForward({ ...ok, S: 0 }, o, lse)).toThrow(/S must be an integer >= 1, got 0/);
    expect(() => trainingAttentionForward({ ...ok, q: heads(f(10), dq) }, o, lse)).toThrow(
      /q needs 32 rows of 4 floats \(128\), got 10/,
    );
    expect(() => trainingAttentionForward({ ...ok, v: heads(f(B * S * H * 4), 4, 2) }, o, lse)).toThrow(
      /v reads columns \[2, 5\) of rows 4 wide/,
    );
    expect(() => trainingAttentionForward(ok, f(5), lse)).toThrow(/o needs 32 rows of 3 floats/);
    expect(() => trainingAttentionForward(ok, o, f(3))).toThrow(/lse needs 32 floats \(\[B, H, S\]\), got 3/);
    expect(() =>
      trainingAttentionForward(
        { ...ok, kShared: { data: f(B * S * 8), layout: 'shared', width: 8, offset: 0 } },
        o,
        lse,
      ),
    ).toThrow(/shared part must be whole 'shared' rows narrower than dq \(4\)/);
    // rotating the shared key part needs that part and a query rotation of its width
    const shared = { data: f(B * S * 2), layout: 'shared' as const, width: 2, offset: 0 };
    const k = heads(f(B * S * H * 2), 2);
    expect(() => trainingAttentionForward({ ...ok, rotateShared: true }, o, lse)).toThrow(
      /rotating the keys' shared part needs it and a query rotation of its width \(0\), got none/,
    );
    const angles = { cos: f(S), sin: f(S), rows: 1, width: 4, interleave: false };
    expect(() =>
      trainingAttentionForward({ ...ok, k, kShared: shared, rotateShared: true, rotary: angles }, o, lse),
    ).toThrow(/query rotation of its width \(2\), got width 4/);
    expect(() =>
      trainingAttentionForward(
        { ...ok, k, kShared: shared, rotateShared: true, rotary: { ...angles, width: 2 } },
        o,
        lse,
      ),
    ).not.toThrow();
  });
});
