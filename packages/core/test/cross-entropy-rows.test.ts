// Cross-entropy's row passes on the GEMM engine's threads (cross-entropy-rows-simd.ts) equal the
// JavaScript loops they replaced bit for bit — the rows' maxima and exp sums, the losses and lse, the
// logits' gradient — on several shapes (ragged widths: V mod 4 = 0..3, one row, the tiny step's 1,024 x
// 258), with ignored targets, NaN / ±Infinity / huge logits, at 1 and 2 threads (a worker seen taking
// rows); the losses and gradient lie within the stated bound of float64's.
import { afterAll, describe, expect, it } from 'vitest';
import * as T from '../src/index.js';
import { CpuStorage } from '../src/cpu/backend.js';
import { crossEntropyBackwardRowsSimd, crossEntropyRowsSimd } from '../src/cpu/cross-entropy-rows-simd.js';
import { isResident, setGemmThreads } from '../src/cpu/gemm/index.js';
import { getEngine } from '../src/cpu/gemm/runtime.js';
import { takeF32 } from '../src/cpu/pool.js';
import { expF32 } from '../src/cpu/vector-exp.js';
import { exec } from '../src/ops/exec.js';
import { Rng } from '../src/rng.js';

afterAll(() => setGemmThreads(2));
const rng = new Rng(1718);
/**
 * The first index where a and b differ in bits (every NaN alike: its payload is the hardware's, not the
 * arithmetic's), with both values; null when equal. Short to print where a whole-array diff is not.
 */
function firstDiff(a: Float32Array | Float64Array, b: Float32Array | Float64Array): string | null {
  if (a.length !== b.length) return `lengths ${a.length} / ${b.length}`;
  const wa = a instanceof Float32Array ? new Uint32Array(a.slice().buffer) : new BigUint64Array(a.slice().buffer);
  const wb = b instanceof Float32Array ? new Uint32Array(b.slice().buffer) : new BigUint64Array(b.slice().buffer);
  for (let i = 0; i < a.length; i++)
    if (wa[i] !== wb[i] && !(Number.isNaN(a[i]) && Number.isNaN(b[i]))) return `[${i}]: ${a[i]} / ${b[i]}`;
  return null;
}
const IGNORE = -100;

/** The forward kernel's loop before: per row m, z (f64) and then lse, loss. */
function forwardLoop(xv: Float32Array, tv: Int32Array, V: number) {
  const N = tv.length;
  const loss = new Float32Array(N);
  const lse = new Float32Array(N);
  const ms = new Float32Array(N);
  const zs = new Float64Array(N);
  const row = new Float32Array(V);
  for (let n = 0; n < N; n++) {
    const r = n * V;
    let m = -Infinity;
    for (let j = 0; j < V; j++) m = Math.max(m, xv[r + j]!);
    let z = 0;
    expF32(xv, r, row, 0, V, 1, -m);
    for (let j = 0; j < V; j++) z += row[j]!;
    ms[n] = m;
    zs[n] = z;
    if (tv[n] === IGNORE) continue;
    const l = m + Math.log(z);
    lse[n] = l;
    loss[n] = l - xv[r + tv[n]!]!;
  }
  return { loss, lse, ms, zs };
}

/** The backward kernel's loop before. */
function backwardLoop(xv: Float32Array, tv: Int32Array, lv: Float32Array, gv: Float32Array, V: number): Float32Array {
  const N = tv.length;
  const dx = new Float32Array(N * V);
  for (let n = 0; n < N; n++) {
    const r = n * V;
    if (tv[n] === IGNORE) continue;
    expF32(xv, r, dx, r, V, 1, -lv[n]!);
    for (let j = 0; j < V; j++) dx[r + j] = gv[n]! * dx[r + j]!;
    dx[r + tv[n]!]! -= gv[n]!;
  }
  return dx;
}

/** Logits [N, V] in the engine's memory: normal rows at mixed scales, a few extreme values. */
function logits(N: number, V: number, extreme: boolean): Float32Array {
  const x = takeF32(Math.max(N * V, 4096)).subarray(0, N * V);
  for (let i = 0; i < x.length; i++) x[i] = rng.normal() * 4 ** ((Math.floor(i / V) % 4) - 1);
  if (extreme && N >= 4) {
    x[1 * V] = 1e30; // a row dominated by one logit (the others' exps underflow)
    x[2 * V + (V - 1)] = -Infinity; // a masked logit in the tail
    x[3 * V] = Number.NaN; // a NaN row stays NaN
  }
  return x;
}

const SHAPES: [number, number][] = [
  [1024, 258], // the tiny step's
  [37, 7],
  [5, 4],
  [9, 1],
  [64, 129],
  [1, 3],
  [300, 130],
  [33, 1001],
];

describe('cross-entropy rows on the engine', () => {
  for (const threads of [1, 2])
    for (const [N, V] of SHAPES)
      it(`${N} x ${V}, ${threads} thread(s): m, z and dx bitwise the loops`, () => {
        setGemmThreads(threads);
        const x = logits(N, V, true);
        expect(isResident(x)).toBe(true);
        const tv = Int32Array.from({ length: N }, (_, n) => (n % 5 === 4 ? IGNORE : Math.floor(rng.uniform() * V)));
        const want = forwardLoop(x, tv, V);
        const m = new Float32Array(N);
        const z = new Float64Array(N);
        const e = getEngine()!;
        const before = e.workerTasks();
        const deadline = Date.now() + 2000;
        // a pass this large wakes the worker; retried a while in case it came late to every task
        const split = threads === 2 && N * V >= 1 << 17 && e.canThread();
        do expect(crossEntropyRowsSimd(x, V, m, z)).toBe(true);
        while (split && e.workerTasks() === before && Date.now() < deadline);
        if (split) expect(e.workerTasks(), 'rows on a worker').toBeGreaterThan(before);
        expect(firstDiff(m, want.ms)).toBeNull();
        expect(firstDiff(z, want.zs)).toBeNull();
        const g = Float32Array.from({ length: N }, () => rng.uniform() + 0.5);
        const dx = takeF32(Math.max(N * V, 4096)).subarray(0, N * V);
        expect(crossEntropyBackwardRowsSimd(x, want.lse, g, V, dx)).toBe(true);
        const loopDx = new Float32Array(N * V);
        for (let n = 0; n < N; n++) expF32(x, n * V, loopDx, n * V, V, 1, -want.lse[n]!);
        for (let i = 0; i < loopDx.length; i++) loopDx[i] = g[Math.floor(i / V)]! * loopDx[i]!;
        expect(firstDiff(dx, loopDx)).toBeNull();
      });

  for (const threads of [1, 2])
    it(`through crossEntropy: losses, lse and the gradient bitwise the loops, within the bound of float64 (${threads} thread(s))`, () => {
      setGemmThreads(threads);
      for (const [N, V] of SHAPES) {
        const x = logits(N, V, false);
        const tv = Int32Array.from({ length: N }, (_, n) => (n % 7 === 3 ? IGNORE : Math.floor(rng.uniform() * V)));
        const be = T.defaultBackend();
        const xt = new T.Tensor(be, new CpuStorage(x), [N, V], 'f32');
        const tt = T.tensor(tv, { dtype: 'i32' });
        const [loss, lse] = exec('crossEntropy', [xt, tt], { ignoreIndex: IGNORE });
        const want = forwardLoop(x, tv, V);
        expect(firstDiff(loss!.dataSync() as Float32Array, want.loss)).toBeNull();
        expect(firstDiff(lse!.dataSync() as Float32Array, want.lse)).toBeNull();
        const g = T.tensor(Float32Array.from({ length: N }, () => rng.uniform() + 0.5));
        const [dx] = exec('crossEntropyBackward', [xt, tt, lse!, g], { ignoreIndex: IGNORE });
        const gv = g.dataSync() as Float32Array;
        expect(firstDiff(dx!.dataSync() as Float32Array, backwardLoop(x, tv, want.lse, gv, V))).toBeNull();
        // float64: loss = log Σ e^x − x_t; dx = g·(softmax − onehot). The f32 exp is within 2 ulps, so
        // each loss is within 2^−21 of |lse| plus lse's f32 rounding; dx within 2^−20 relative of g·p + g.
        const dxv = dx!.dataSync() as Float32Array;
        const lossv = loss!.dataSync() as Float32Array;
        let worst = 0; // the largest error as a fraction of its bound
        for (let n = 0; n < N; n++) {
          if (tv[n] === IGNORE) {
            expect(lossv[n]).toBe(0);
            continue;
          }
          let m = -Infinity;
          for (let j = 0; j < V; j++) m = Math.max(m, x[n * V + j]!);
          let s = 0;
          for (let j = 0; j < V; j++) s += Math.exp(x[n * V + j]! - m);
          const l = m + Math.log(s);
          worst = Math.max(worst, Math.abs(lossv[n]! - (l - x[n * V + tv[n]!]!)) / (Math.abs(l) * 2 ** -20 + 1e-30));
          for (let j = 0; j < V; j++) {
            const ref = gv[n]! * (Math.exp(x[n * V + j]! - l) - (j === tv[n] ? 1 : 0));
            worst = Math.max(worst, Math.abs(dxv[n * V + j]! - ref) / (gv[n]! * 2 ** -20 + Math.abs(ref) * 2 ** -20));
          }
        }
        expect(worst, `${N} x ${V}: the largest error over its bound`).toBeLessThanOrEqual(1);
      }
    });

  it('rejects operands of the wrong sizes', () => {
    const x = takeF32(4096);
    expect(() => crossEntropyRowsSimd(x, 100, new Float32Array(40), new Float64Array(40))).toThrow(RangeError);
    expect(() => crossEntropyRowsSimd(x, 1024, new Float32Array(4), new Float64Array(3))).toThrow(RangeError);
    expect(() =>
      crossEntropyBackwardRowsSimd(x, new Float32Array(4), new Float32Array(3), 1024, takeF32(4096)),
    ).toThrow(RangeError);
  });
});
