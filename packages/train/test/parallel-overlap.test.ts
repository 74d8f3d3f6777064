// DualPipe's FB overlap (a forward chunk and a backward chunk run concurrently, each stream's EP
// all-to-alls on its own groups) changes nothing but timing: the tiny preset on pp=2, ep=2 trained with
// the overlap on equals, bitwise, the same steps with each FB pair run back to back. Every layer is a MoE
// layer, so both chunks of a pair communicate, and EP rank 0 pauses at the top of each MoE layer's
// backward (SKEW_MS), so within a pair the two EP ranks call their streams' all-to-alls in different
// orders: streams sharing one group would pair the wrong collectives (and this test fails).
import { fileURLToPath } from 'node:url';
import { PassThrough } from 'node:stream';
import { launchLocal } from '@dsv3/parallel';
import { describe, expect, it } from 'vitest';
import type { StepResult } from '../src/index.js';

const script = fileURLToPath(new URL('./ranks/parallel-step.ts', import.meta.url));

type RankResult = Record<string, { results: StepResult[]; params: Record<string, Float64Array> }>;

/** One launch: both schedules in turn, with the FB overlap on or off. */
async function launch(overlap: boolean): Promise<{ rank: number; result: RankResult }[]> {
  const log = new PassThrough();
  let text = '';
  log.on('data', (d) => (text += d));
  const env = {
    PARALLEL: 'pp=2,ep=2',
    ZERO: '0',
    SCHEDULES: SCHEDULES.join(','),
    MICRO: '1',
    FB_OVERLAP: overlap ? '1' : '0',
    // every layer MoE (the preset's first is dense), so both chunks of an FB pair communicate
    FIRST_DENSE: '0',
    SKEW_MS: '2',
  };
  const res = await launchLocal({ nproc: 4, script, env, timeoutMs: 430_000, stdout: log, stderr: log });
  for (const r of res) expect(r.error, `rank ${r.rank}: ${r.error?.stack}\n${text}`).toBeUndefined();
  return res.map((r) => ({ rank: r.rank, result: r.result as RankResult }));
}

const SCHEDULES = ['dualpipe', 'dualpipev'];

describe('DualPipe FB overlap is bitwise the sequential FB (tiny preset, f64, pp=2, ep=2)', () => {
  it('dualpipe and dualpipev, overlap on vs off, EP rank 0 skewed', { timeout: 900_000 }, async () => {
    // Separate launches: each creates the same groups in the same order (the twins exist either way),
    // so every all-reduce takes the same path and sums in the same order.
    const on = await launch(true);
    const off = await launch(false);
    for (const kind of SCHEDULES) {
      for (const [i, rk] of on.entries()) {
        const a = rk.result[kind]!;
        const b = off[i]!.result[kind]!;
        expect(a.results.length).toBeGreaterThan(0);
        // losses, gradient norms, balance statistics: the same numbers
        expect(a.results, `${kind} rank ${rk.rank}`).toEqual(b.results);
        expect(Object.keys(a.params).sort()).toEqual(Object.keys(b.params).sort());
        const bytes = (v: Float64Array) => Buffer.from(v.buffer, v.byteOffset, v.byteLength);
        for (const [name, v] of Object.entries(a.params))
          expect(bytes(v).equals(bytes(b.params[name]!)), `${kind} rank ${rk.rank} ${name}`).toBe(true);
      }
    }
  });
});
