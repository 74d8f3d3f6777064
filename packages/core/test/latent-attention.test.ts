// latentAttention (the f32 MLA attention as one job of the GEMM engine): the same bits at 1 and 2
// threads (a row's sums never depend on how rows are cut into tasks), the worker threads really taking
// tasks (a decode step's few rows too), the float64 reference within 1e-6 (contiguous and mapped key
// rows, ragged lengths, keys past one 512-key tile, C past one 256-deep GEMM block), resident keys read
// in place with the same bits as copied ones, clear errors on bad arguments, and false (nothing
// run) without the wasm engine.
import { afterAll, afterEach, describe, expect, it, vi } from 'vitest';
import { gemmConfig } from '../src/cpu/gemm/config.js';
import { latentAttention, type LatentAttentionArgs, type LatentSequence } from '../src/cpu/gemm/latent-attention.js';
import { getEngine } from '../src/cpu/gemm/runtime.js';
import { allocResident, freeResident, setGemmThreads } from '../src/cpu/gemm/index.js';
import { randomUniform, relativeError } from '../src/testing.js';
import { withScratchPast2GiB } from './scratch-past-2gib.js';

const saved = { ...gemmConfig };
afterEach(() => Object.assign(gemmConfig, saved));
afterAll(() => Object.assign(gemmConfig, saved));

const f32 = (n: number, seed: number, amp = 1) => Float32Array.from(randomUniform(n, seed, -amp, amp));

/** float64 reference: causal softmax attention of every query row over its visible key rows. */
function reference(a: LatentAttentionArgs): Float64Array {
  const { S, H, C, R, scale, seqs } = a;
  const out = new Float64Array(seqs.length * S * H * C);
  seqs.forEach(({ T, offset, rowOf, base }, n) => {
    for (let s = 0; s < S; s++)
      for (let h = 0; h < H; h++) {
        const q = (n * S + s) * H + h;
        const lim = Math.min(T - 1, offset + s);
        const w = new Float64Array(lim + 1);
        for (let j = 0; j <= lim; j++) {
          const row = rowOf ? rowOf[j]! : base + j;
          let d = 0;
          for (let c = 0; c < C; c++) d += a.qL[q * C + c]! * a.kv[row * C + c]!;
          for (let i = 0; i < R; i++) d += a.qR[q * R + i]! * a.kr[row * R + i]!;
          w[j] = d * scale;
        }
        const mx = Math.max(...w);
        let z = 0;
        for (let j = 0; j <= lim; j++) z += w[j] = Math.exp(w[j]! - mx);
        for (let j = 0; j <= lim; j++) {
          const row = rowOf ? rowOf[j]! : base + j;
          for (let c = 0; c < C; c++) out[q * C + c]! += (w[j]! / z) * a.kv[row * C + c]!;
        }
      }
  });
  return out;
}

function problem(S: number, H: number, C: number, R: number, lens: number[], mapped: boolean): LatentAttentionArgs {
  const N = lens.length;
  const rows = lens.reduce((t, T) => t + T, 0) + 7;
  // mapped: every sequence's keys in reverse order of the pool, in runs of 5 (a paged cache's blocks)
  let next = rows;
  let base = 0;
  const seqs: LatentSequence[] = lens.map((T) => {
    const q: LatentSequence = { T, offset: T - S, rowOf: null, base };
    if (mapped) {
      const rowOf = new Int32Array(T);
      for (let j = 0; j < T; j += 5) {
        const run = Math.min(5, T - j);
        next -= run;
        for (let i = 0; i < run; i++) rowOf[j + i] = next + i;
      }
      q.rowOf = rowOf;
    }
    base += T;
    return q;
  });
  return {
    S,
    H,
    C,
    R,
    scale: 1 / Math.sqrt(C),
    qL: f32(N * S * H * C, 1, 3),
    qR: f32(N * S * H * R, 2, 3),
    kv: f32(rows * C, 3),
    kr: f32(rows * R, 4),
    seqs,
    out: new Float32Array(N * S * H * C),
  };
}

describe('latentAttention', () => {
  const cases: [string, number, number, number, number, number[], boolean][] = [
    ['prefill S=T=130, H=8 (five query blocks)', 130, 8, 64, 16, [130], false],
    ['ragged lengths 9 / 40 / 700 (two key tiles), mapped rows, C=260', 9, 6, 260, 8, [9, 40, 700], true],
    ['decode S=1, H=16, three sequences, mapped rows', 1, 16, 32, 8, [3, 65, 200], true],
    ['S=37, H=3: rows not a multiple of 4', 37, 3, 24, 4, [37, 50], false],
    ['decode S=1, H=8, one sequence of 600 keys (its 8 rows cut once per thread)', 1, 8, 40, 8, [600], false],
    ['decode S=1, H=6, one sequence (6 rows: a task of 4 and one of 2)', 1, 6, 24, 8, [77], true],
  ];
  for (const [name, S, H, C, R, lens, mapped] of cases) {
    it(name, () => {
      const a = problem(S, H, C, R, lens, mapped);
      const ref = reference(a);
      const outs: Float32Array[] = [];
      for (const threads of [1, 2]) {
        setGemmThreads(threads);
        gemmConfig.wakeMinWork = 0; // small jobs too wake the workers (else they may sit out a short one)
        const e = getEngine()!;
        const before = e.workerTasks();
        // a worker spawned by this call may start after the caller has claimed every task: repeat a while
        const deadline = Date.now() + 5000;
        do {
          a.out = new Float32Array(a.out.length);
          expect(latentAttention(a)).toBe(true);
        } while (threads === 2 && e.canThread() && e.workerTasks() === before && Date.now() < deadline);
        if (threads === 2 && e.canThread()) expect(e.workerTasks(), 'tasks run on a worker').toBeGreaterThan(before);
        expect(relativeError(a.out, ref)).toBeLessThan(1e-6);
        outs.push(a.out);
      }
      expect(Buffer.from(outs[1]!.buffer).equals(Buffer.from(outs[0]!.buffer)), '1 and 2 threads: same bits').toBe(
        true,
      );
    });
  }

  it('a small job (a decode step) is cut for sleeping workers only at wakeMinWork; for awake ones always', async () => {
    setGemmThreads(2);
    const e = getEngine()!;
    if (!e.canThread()) return;
    const a = problem(1, 8, 40, 8, [300], false);
    const work = 8 * 300 * (2 * 40 + 8); // the job's multiply-adds
    const asleep = async (): Promise<void> => {
      const deadline = Date.now() + 5000;
      while (e.workersAwake() && Date.now() < deadline) await new Promise((r) => setTimeout(r, 5));
      expect(e.workersAwake(), 'the workers fell asleep').toBe(false);
    };
    const tasksRun = (): number => {
      const run = vi.spyOn(e, 'runTasks'); // (calls through)
      expect(latentAttention(a)).toBe(true);
      const tasks = run.mock.calls[0]![0];
      run.mockRestore();
      return tasks;
    };
    gemmConfig.wakeMinWork = 0;
    tasksRun(); // the workers exist
    await asleep();
    gemmConfig.wakeMinWork = work + 1;
    expect(tasksRun(), 'asleep, under the threshold: one task').toBe(1);
    const alone = a.out.slice();
    await asleep();
    gemmConfig.wakeMinWork = work;
    expect(tasksRun(), 'asleep, at the threshold: a task per thread').toBe(2);
    expect(Buffer.from(a.out.buffer).equals(Buffer.from(alone.buffer))).toBe(true);
    gemmConfig.wakeMinWork = work + 1;
    if (e.workersAwake()) expect(tasksRun(), 'awake (spinning after the last job)').toBe(2);
  });

  it('reads keys resident in the engine memory in place when they are one run of rows, with the same bits', () => {
    const e = getEngine()!;
    // contiguous rows from a base, mapped rows in one run from 9, mapped rows in runs of 5 (copied),
    // a decode step and a prefill, ragged lengths
    const shapes: [number, number, number, number, number[], boolean][] = [
      [1, 8, 40, 8, [600], false],
      [1, 8, 40, 8, [3, 513, 70], false],
      [20, 4, 24, 8, [20, 45], true],
    ];
    for (const [S, H, C, R, lens, mapped] of shapes)
      for (const run of mapped ? [true, false] : [false]) {
        const a = problem(S, H, C, R, lens, mapped);
        if (run) {
          let at = 9;
          for (const q of a.seqs) {
            q.rowOf = Int32Array.from({ length: q.T }, (_, j) => at + j);
            at += q.T;
          }
          a.kv = Float32Array.from({ length: (at + 3) * C }, (_, i) => a.kv[i % a.kv.length]!);
          a.kr = Float32Array.from({ length: (at + 3) * R }, (_, i) => a.kr[i % a.kr.length]!);
        }
        const kv = allocResident('f32', a.kv.length) as Float32Array;
        const kr = allocResident('f32', a.kr.length) as Float32Array;
        kv.set(a.kv);
        kr.set(a.kr);
        for (const threads of [1, 2]) {
          setGemmThreads(threads);
          const stage = vi.spyOn(e, 'stage'); // (calls through)
          a.out = new Float32Array(a.out.length);
          expect(latentAttention(a)).toBe(true);
          const copied = a.out;
          a.out = new Float32Array(a.out.length);
          expect(latentAttention({ ...a, kv, kr, out: a.out })).toBe(true);
          const staged = stage.mock.calls.map(([bytes]) => bytes);
          stage.mockRestore();
          const keyBytes = lens.reduce((t, T) => t + T * (C + R) * 4, 0);
          const label = `S=${S} lens ${lens} ${mapped ? (run ? 'one run' : 'runs of 5') : 'contiguous'}, ${threads} threads`;
          // the in-place job stages no key rows (unless they are not one run)
          if (!mapped || run) expect(staged[0]! - staged[1]!, label).toBeGreaterThanOrEqual(keyBytes);
          else expect(staged[1], label).toBe(staged[0]);
          expect(Buffer.from(a.out.buffer).equals(Buffer.from(copied.buffer)), label).toBe(true);
          expect(relativeError(a.out, reference(a))).toBeLessThan(1e-6);
        }
        freeResident(kv);
        freeResident(kr);
      }
  });

  it('reads its task words as unsigned: operands past 2 GiB of the engine memory (f32 V3-mini)', () => {
    for (const threads of [1, 2]) {
      setGemmThreads(threads);
      const a = problem(130, 8, 64, 16, [130], false);
      const at = withScratchPast2GiB(getEngine()!, () => expect(latentAttention(a)).toBe(true));
      expect(at).toBeGreaterThanOrEqual(2 ** 31);
      expect(relativeError(a.out, reference(a))).toBeLessThan(1e-6);
    }
  });

  it('runs nothing and returns false without the wasm engine', () => {
    gemmConfig.forceJs = true;
    const a = problem(4, 2, 8, 4, [6], false);
    expect(latentAttention(a)).toBe(false);
    expect(a.out.every((v) => v === 0)).toBe(true);
  });

  it('names what is wrong with its arguments', () => {
    const a = problem(4, 2, 8, 4, [6, 9], true);
    expect(() => latentAttention({ ...a, H: 0 })).toThrow(/H must be an integer >= 1, got 0/);
    expect(() => latentAttention({ ...a, out: new Float32Array(3) })).toThrow(/need qL and out of 128/);
    const bad = { ...a.seqs[1]!, rowOf: Int32Array.from([0, 1, 2, 3, 4, 5, 6, 7, 1000]) };
    expect(() => latentAttention({ ...a, seqs: [a.seqs[0]!, bad] })).toThrow(/sequence 1 reads key row 1000, past kv/);
    const short = { ...a.seqs[1]!, rowOf: new Int32Array(2) };
    expect(() => latentAttention({ ...a, seqs: [a.seqs[0]!, short] })).toThrow(/sequence 1 holds 9 keys but maps 2/);
  });
});
