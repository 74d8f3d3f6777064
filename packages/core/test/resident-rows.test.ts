// The elementwise + − × ÷, fills and RMSNorm as row-kernel jobs of the GEMM engine, on operands in place
// in its memory: bitwise the host path and the scalar loops (the same f64 operations per element / row
// in the same order), on 1 and 2 threads, split into tasks (thresholds lowered so small ragged shapes
// split too) or not, with aliasing (o = a, o = b), odd widths, one row, rows fewer than tasks, and norm
// weights resident or on the host.
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { ARITH_SPLIT, type ArithOp, arithF32, fillF32 } from '../src/cpu/arith-simd.js';
import { allocResident, freeResident, isResident, setGemmThreads } from '../src/cpu/gemm/index.js';
import { gemmConfig } from '../src/cpu/gemm/config.js';
import { getEngine } from '../src/cpu/gemm/runtime.js';
import { RMSNORM_SPLIT, rmsnormBackwardSimd, rmsnormSimd } from '../src/cpu/rmsnorm-simd.js';
import { Rng } from '../src/rng.js';
import { expectSameBits } from '../src/testing.js';

const saved = { ...gemmConfig };
const savedArith = { ...ARITH_SPLIT };
const savedNorm = { ...RMSNORM_SPLIT };
const held: Float32Array[] = [];
afterEach(() => {
  Object.assign(gemmConfig, saved);
  Object.assign(ARITH_SPLIT, savedArith);
  Object.assign(RMSNORM_SPLIT, savedNorm);
  for (const a of held.splice(0)) freeResident(a);
});
afterAll(() => setGemmThreads(saved.threads ?? 2));

const rng = new Rng(1515);
/** A resident copy of host array h (in the engine's memory). */
const resident = (h: Float32Array): Float32Array => {
  const a = allocResident('f32', h.length) as Float32Array;
  expect(isResident(a)).toBe(true);
  a.set(h);
  held.push(a);
  return a;
};
const rand = (n: number, scale = 1): Float32Array => {
  const a = new Float32Array(n);
  for (let i = 0; i < n; i++) a[i] = rng.normal() * scale;
  return a;
};
/** The split settings a case runs under: [threads, lowered task sizes]. */
const SETTINGS: [number, boolean][] = [
  [1, false],
  [2, false],
  [2, true],
];
/** Runs each setting; with lowered task sizes on 2 threads, checks the worker took tasks. */
function eachSetting(lower: () => void, body: () => void): void {
  for (const [threads, lowered] of SETTINGS) {
    setGemmThreads(threads);
    if (lowered) lower();
    const e = getEngine()!;
    const before = e.workerTasks();
    const onWorker = threads === 2 && lowered;
    // a worker still waking may find the caller has claimed every task: repeat a while (as the other job tests do)
    const deadline = Date.now() + 5000;
    do body();
    while (onWorker && e.workerTasks() === before && Date.now() < deadline);
    if (onWorker) expect(e.workerTasks(), 'tasks run on a worker').toBeGreaterThan(before);
  }
}

const SCALAR: Record<ArithOp, (x: number, y: number) => number> = {
  add: (x, y) => x + y,
  sub: (x, y) => x - y,
  mul: (x, y) => x * y,
  div: (x, y) => x / y,
};

describe('elementwise passes on resident operands as engine jobs', () => {
  it('+ − × ÷ (vv, vs, sv) equal the rounded f64 loop bitwise, split or not, 1 and 2 threads, o = a and o = b', () => {
    eachSetting(
      () => {
        Object.assign(ARITH_SPLIT, { taskVectors: 3, wakeVectors: 0 });
      },
      () => {
        for (const n of [256, 259, 1001, 4097, 20001]) {
          const ha = rand(n + 8, 4);
          const hb = rand(n + 8, 4);
          for (let i = 0; i < n; i += 97) hb[i] = 0; // ±∞ and NaN from ÷ 0
          for (const op of ['add', 'sub', 'mul', 'div'] as ArithOp[])
            for (const [as, bs] of [
              [1, 1],
              [1, 0],
              [0, 1],
            ] as const) {
              const [a, b] = [resident(ha), resident(hb)];
              const o = resident(new Float32Array(n + 8).fill(7));
              expect(arithF32(op, a, 3, as, b, 5, bs, o, 2, n)).toBe(true);
              const want = new Float32Array(n + 8).fill(7);
              for (let i = 0; i < n; i++) want[2 + i] = SCALAR[op](as ? ha[3 + i]! : ha[3]!, bs ? hb[5 + i]! : hb[5]!);
              expectSameBits(o, want, 'o', { nan: 'bits' }); // the span around it untouched
              // the host path gives the same bits
              const ho = new Float32Array(n + 8).fill(7);
              expect(arithF32(op, ha, 3, as, hb, 5, bs, ho, 2, n)).toBe(true);
              expectSameBits(ho, want, 'ho', { nan: 'bits' });
              if (as && bs) {
                // in place over either operand
                expect(arithF32(op, a, 0, 1, b, 0, 1, a, 0, n)).toBe(true);
                expect(arithF32(op, o, 0, 1, b, 0, 1, b, 0, n)).toBe(true);
                const wa = ha.map((x, i) => (i < n ? SCALAR[op](x, hb[i]!) : x));
                const wb = hb.map((y, i) => (i < n ? SCALAR[op](want[i]!, y) : y));
                expectSameBits(a, wa, 'a', { nan: 'bits' });
                expectSameBits(b, wb, 'b', { nan: 'bits' });
              }
            }
        }
      },
    );
  });

  it('with some operands on the host (copied into the engine, o copied back), the same bits; o = a on the host', () => {
    for (const [threads, lowered] of SETTINGS) {
      setGemmThreads(threads);
      if (lowered) Object.assign(ARITH_SPLIT, { taskVectors: 3, wakeVectors: 0 });
      const n = 1003;
      const [ha, hb] = [rand(n + 8, 4), rand(n + 8, 4)];
      for (let mask = 0; mask < 8; mask++) {
        const place = (h: Float32Array, bit: number) => (mask & bit ? resident(h) : Float32Array.from(h));
        for (const op of ['sub', 'div'] as ArithOp[]) {
          const [a, b, o] = [place(ha, 1), place(hb, 2), place(new Float32Array(n + 8).fill(7), 4)];
          expect(arithF32(op, a, 3, 1, b, 5, 1, o, 2, n)).toBe(true);
          const want = new Float32Array(n + 8).fill(7);
          for (let i = 0; i < n; i++) want[2 + i] = SCALAR[op](ha[3 + i]!, hb[5 + i]!);
          expectSameBits(o, want, 'o', { nan: 'bits' });
          expectSameBits(a, ha, 'a', { nan: 'bits' }); // inputs untouched
          expectSameBits(b, hb, 'b', { nan: 'bits' });
          // a -= b in place with a where the mask puts it
          expect(arithF32(op, a, 0, 1, b, 0, 1, a, 0, n)).toBe(true);
          expectSameBits(
            a,
            ha.map((x, i) => (i < n ? SCALAR[op](x, hb[i]!) : x)),
            'a',
            { nan: 'bits' },
          );
        }
      }
    }
  });

  it('fills equal Float32Array.fill over ragged ranges, split or not', () => {
    eachSetting(
      () => {
        Object.assign(ARITH_SPLIT, { taskVectors: 2, wakeVectors: 0 });
      },
      () => {
        for (const [n, from, to] of [
          [300, 0, 300],
          [1001, 3, 998],
          [70001, 5, 70000],
        ] as const) {
          const o = resident(rand(n));
          const want = Float32Array.from(o).fill(-2.5, from, to);
          fillF32(o, -2.5, from, to);
          expectSameBits(o, want, 'o', { nan: 'bits' });
        }
      },
    );
  });
});

/** RMSNorm's forward, one row at a time in f64 (reduce.ts's loop, the kernels' operation order). */
function forwardLoop(v: Float32Array, wv: Float32Array, n: number, eps: number): Float32Array {
  const out = new Float32Array(v.length);
  for (let r = 0; r < v.length; r += n) {
    let ss = 0;
    for (let j = 0; j < n; j++) ss += v[r + j]! * v[r + j]!;
    const inv = 1 / Math.sqrt(ss / n + eps);
    for (let j = 0; j < n; j++) out[r + j] = v[r + j]! * inv * wv[j]!;
  }
  return out;
}

/** The backward's loop (train-kernels.ts's operation order); dw summed in f64 over the rows in order. */
function backwardLoop(xv: Float32Array, wv: Float32Array, gv: Float32Array, eps: number) {
  const n = wv.length;
  const dx = new Float32Array(xv.length);
  const dw = new Float64Array(n);
  for (let r = 0; r < xv.length; r += n) {
    let ss = 0;
    let dot = 0;
    for (let j = 0; j < n; j++) {
      ss += xv[r + j]! * xv[r + j]!;
      dot += gv[r + j]! * wv[j]! * xv[r + j]!;
    }
    const inv = 1 / Math.sqrt(ss / n + eps);
    const c = inv * inv * inv * (dot / n);
    for (let j = 0; j < n; j++) {
      dx[r + j] = inv * gv[r + j]! * wv[j]! - xv[r + j]! * c;
      dw[j]! += gv[r + j]! * xv[r + j]! * inv;
    }
  }
  return { dx, dw };
}

describe('RMSNorm on resident operands as engine jobs', () => {
  // [rows, width]: odd widths, one row, rows fewer than tasks, a wide row past the staged kernel's 16384
  const SHAPES: [number, number][] = [
    [1024, 128],
    [301, 129],
    [1, 64],
    [3, 33],
    [7, 1],
    [2, 16385],
    [65, 96],
  ];
  it('forward, dx and dw equal the row loops bitwise; resident and host operands alike; 1 and 2 threads, split or not', () => {
    eachSetting(
      () => {
        Object.assign(RMSNORM_SPLIT, { taskFloats: 64, wakeFloats: 0 });
      },
      () => {
        for (const [rows, n] of SHAPES) {
          // rows of mixed scales (tiny ones make eps matter)
          const hx = rand(rows * n).map((v, i) => v * 10 ** ((Math.floor(i / n) % 5) - 3));
          const hg = rand(rows * n);
          const hw = rand(n).map((v) => 1 + 0.1 * v);
          for (const eps of [1e-6, 1e-5]) {
            const want = forwardLoop(hx, hw, n, eps);
            const { dx: wantDx, dw: wantDw } = backwardLoop(hx, hw, hg, eps);
            for (const wResident of [true, false]) {
              const [x, g, w] = [resident(hx), resident(hg), wResident ? resident(hw) : hw];
              const out = resident(new Float32Array(rows * n));
              expect(rmsnormSimd(x, w, eps, out)).toBe(true);
              expectSameBits(out, want, 'out', { nan: 'bits' });
              const dx = resident(new Float32Array(rows * n));
              const dw = new Float64Array(n);
              expect(rmsnormBackwardSimd(x, w, g, eps, dx, dw)).toBe(true);
              expectSameBits(dx, wantDx, 'dx', { nan: 'bits' });
              expectSameBits(dw, wantDw, 'dw', { nan: 'bits' });
            }
            if (n <= 16384) {
              // host operands: the staged fallback, the same bits
              const out = new Float32Array(rows * n);
              expect(rmsnormSimd(hx, hw, eps, out)).toBe(true);
              expectSameBits(out, want, 'out', { nan: 'bits' });
              const dx = new Float32Array(rows * n);
              const dw = new Float64Array(n);
              expect(rmsnormBackwardSimd(hx, hw, hg, eps, dx, dw)).toBe(true);
              expectSameBits(dx, wantDx, 'dx', { nan: 'bits' });
              expectSameBits(dw, wantDw, 'dw', { nan: 'bits' });
            }
          }
        }
      },
    );
  });

  it('with some operands on the host (copied into the engine, the output copied back), the same bits', () => {
    setGemmThreads(2);
    Object.assign(RMSNORM_SPLIT, { taskFloats: 64, wakeFloats: 0 });
    const [rows, n] = [67, 48];
    const [hx, hg, hw] = [rand(rows * n), rand(rows * n), rand(n)];
    const want = forwardLoop(hx, hw, n, 1e-6);
    const { dx: wantDx, dw: wantDw } = backwardLoop(hx, hw, hg, 1e-6);
    for (let mask = 1; mask < 16; mask++) {
      const place = (h: Float32Array, bit: number) => (mask & bit ? resident(h) : Float32Array.from(h));
      const [x, g, w] = [place(hx, 1), place(hg, 2), place(hw, 4)];
      const out = place(new Float32Array(rows * n), 8);
      expect(rmsnormSimd(x, w, 1e-6, out)).toBe(true);
      expectSameBits(out, want, 'out', { nan: 'bits' });
      const dx = place(new Float32Array(rows * n), 8);
      const dw = new Float64Array(n);
      expect(rmsnormBackwardSimd(x, w, g, 1e-6, dx, dw)).toBe(true);
      expectSameBits(dx, wantDx, 'dx', { nan: 'bits' });
      expectSameBits(dw, wantDw, 'dw', { nan: 'bits' });
    }
  });

  it('the forward in place (out = x) equals the loop', () => {
    setGemmThreads(2);
    Object.assign(RMSNORM_SPLIT, { taskFloats: 64, wakeFloats: 0 });
    const [rows, n] = [257, 40];
    const hx = rand(rows * n);
    const hw = rand(n);
    const x = resident(hx);
    expect(rmsnormSimd(x, resident(hw), 1e-6, x)).toBe(true);
    expectSameBits(x, forwardLoop(hx, hw, n, 1e-6), 'x', { nan: 'bits' });
  });
});
