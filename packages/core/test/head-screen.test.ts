// The screened greedy head (cpu/gemm/head-screen.ts, native/head-screen.cc): argmaxProduct's index equals
// the first largest of weightProduct's row (the full bf16 product, same kernel) for random heads of ragged
// widths, activations with outliers and all-zero blocks, rows built to tie or nearly tie the best, with
// the VNNI and the widening kernel, on one thread and two; heads or activations that are not finite and
// shapes it does not take fall back to the full product. The screen must actually decide where it runs
// (few rows left for the exact pass), or these tests would only test the fallback.
import { afterEach, describe, expect, it } from 'vitest';
import { argmaxProduct, setGemmThreads, weightProduct } from '../src/index.js';
import { gemmConfig } from '../src/cpu/gemm/config.js';
import { allocResident, freeResident } from '../src/cpu/gemm/index.js';
import { nativeKernels } from '../src/cpu/gemm/native-kernels.js';
import { HeadScreen } from '../src/cpu/gemm/head-screen.js';
import { getEngine } from '../src/cpu/gemm/runtime.js';
import { Rng } from '../src/rng.js';

const saved = { ...gemmConfig };
afterEach(() => {
  Object.assign(gemmConfig, saved);
});

const rng = new Rng(4099);
const f32 = new Float32Array(1),
  u32 = new Uint32Array(f32.buffer);
const bf16Bits = (v: number): number => {
  f32[0] = v;
  const u = u32[0]!;
  return (u + 0x7fff + ((u >>> 16) & 1)) >>> 16; // round to nearest even
};

/** A resident bf16 head [n, k] of normal(0, std) values (where the screen can read it in place). */
function residentHead(n: number, k: number, std = 0.03): Uint16Array {
  const w = allocResident('bf16', n * k, false) as Uint16Array | null;
  if (!w) throw new Error('no engine memory for the head');
  for (let i = 0; i < n * k; i++) w[i] = bf16Bits(rng.normal() * std);
  return w;
}

/** The full product's index: weightProduct's row (the screen off) scanned for its first largest value. */
function fullArgmax(w: Uint16Array, n: number, k: number, x: Float32Array): number {
  const y = new Float32Array(n);
  weightProduct({ m: 1, n, k, x, w, y });
  let best = -1,
    top = Number.NEGATIVE_INFINITY;
  for (let i = 0; i < n; i++)
    if (y[i]! > top) {
      top = y[i]!;
      best = i;
    }
  return best;
}

function activations(k: number, kind: 'normal' | 'outliers' | 'zero-block'): Float32Array {
  const x = rng.fillNormal(new Float32Array(k), 0, 1) as Float32Array;
  if (kind === 'outliers') for (let i = 0; i < k; i += 97) x[i] = x[i]! * 40;
  if (kind === 'zero-block') x.fill(0, 0, 128);
  return x;
}

/** The screen argmaxProduct made for `w` (through a call), to read how many rows it left. */
function screenOf(w: Uint16Array, n: number, k: number): HeadScreen | null {
  // the module keeps its screens private; a fresh one over the same head answers the same
  return HeadScreen.create(getEngine()!, w, n, k, 1);
}

const native = nativeKernels();

describe.skipIf(native === null)('screened greedy head', () => {
  const shapes: [number, number][] = [
    [1, 128],
    [15, 128],
    [17, 256],
    [1000, 384],
    [5003, 1024],
    [20_000, 256],
  ];
  for (const [n, k] of shapes)
    for (const threads of [1, 2])
      it(`[${n}, ${k}] on ${threads} thread(s): the full product's index`, () => {
        setGemmThreads(threads);
        const w = residentHead(n, k);
        try {
          for (const kind of ['normal', 'outliers', 'zero-block'] as const)
            for (let t = 0; t < 4; t++) {
              const x = activations(k, kind);
              const want = fullArgmax(w, n, k, x);
              expect(argmaxProduct({ m: 1, n, k, x, w }, true)[0]).toBe(want);
              gemmConfig.headScreenWiden = true;
              expect(argmaxProduct({ m: 1, n, k, x, w }, true)[0]).toBe(want);
              gemmConfig.headScreenWiden = false;
            }
        } finally {
          freeResident(w);
        }
      });

  it('decides from a few rows: most of a large head is never read at two bytes a weight', () => {
    setGemmThreads(2);
    const [n, k] = [16_000, 1024];
    const w = residentHead(n, k);
    try {
      const screen = screenOf(w, n, k)!;
      expect(screen).not.toBeNull();
      for (let t = 0; t < 4; t++) {
        const x = activations(k, 'normal');
        const want = fullArgmax(w, n, k, x);
        const got = screen.argmax(x, 0, 2, (rows, count, y) => weightProduct({ m: 1, n: count, k, x, w: rows, y }));
        expect(got).toBe(want);
        expect(screen.lastCandidates).toBeGreaterThanOrEqual(1);
        expect(screen.lastCandidates).toBeLessThan(n / 100);
      }
      screen.dispose();
    } finally {
      freeResident(w);
    }
  });

  /** x · w_r in f64 for every row of the bf16 head w [n, k]. */
  const exactLogits = (w: Uint16Array, n: number, k: number, x: Float32Array): Float64Array =>
    Float64Array.from({ length: n }, (_, r) => {
      let sum = 0;
      for (let i = 0; i < k; i++) {
        u32[0] = w[r * k + i]! << 16;
        sum += x[i]! * f32[0]!;
      }
      return sum;
    });

  /**
   * Checks |x · w_r - approx_r| <= bound_r on every row, with both kernels, and returns the errors and the
   * bound's terms of the rows `marked` (those built so that one rounding lines up with x).
   */
  function boundsHold(w: Uint16Array, n: number, k: number, x: Float32Array, marked: (r: number) => boolean) {
    const screen = HeadScreen.create(getEngine()!, w, n, k, 1)!;
    const exact = exactLogits(w, n, k, x);
    const seen: { err: number; weightTerm: number; xTerm: number }[] = [];
    for (const widen of [false, true]) {
      gemmConfig.headScreenWiden = widen;
      const { approx, bound, weightTerm, xTerm } = screen.approximations(x, 1)!;
      for (let r = 0; r < n; r++) {
        const err = Math.abs(exact[r]! - approx[r]!);
        expect(err).toBeLessThanOrEqual(bound[r]!);
        if (marked(r)) seen.push({ err, weightTerm: weightTerm[r]!, xTerm: xTerm[r]! });
      }
    }
    screen.dispose();
    return seen;
  }

  it("the bound holds on every row, where the weights' rounding lines up with x: its weight term is needed", () => {
    const [n, k] = [2000, 512];
    const x = activations(k, 'normal');
    const w = residentHead(n, k);
    // every 10th row: 2.5 / 1024 at x's sign, one weight 127 / 1024 (scale 1 / 1024): each of the others
    // rounds to 2 (ties to even), 0.5 / 1024 short along x: the quantized logit ~0.5 / 1024 ||x||_1 low
    const half = bf16Bits(2.5 / 1024);
    for (let r = 0; r < n; r += 10) {
      for (let i = 0; i < k; i++) w[r * k + i] = x[i]! < 0 ? half | 0x8000 : half;
      w[r * k + 1] = bf16Bits(127 / 1024);
    }
    try {
      const seen = boundsHold(w, n, k, x, (r) => r % 10 === 0);
      expect(seen.length).toBe(n / 5);
      for (const s of seen) expect(s.err).toBeGreaterThan(s.xTerm);
    } finally {
      freeResident(w);
    }
  });

  it("the bound holds on every row, where x's rounding lines up with a row: its x term is needed", () => {
    const [n, k] = [2000, 512];
    // x: 64.5 / 16 but one 127 / 16 a block (scale 1 / 16): each rounds up by 0.5 / 16 (Math.round)
    const x = new Float32Array(k).fill(64.5 / 16);
    for (let b = 0; b < k; b += 128) x[b + 1] = 127 / 16;
    const w = residentHead(n, k);
    // every 10th row: exactly on its grid (64 / 1024, one 127 / 1024), all positive: the quantized x's
    // rounding adds up along it
    for (let r = 0; r < n; r += 10) {
      w.fill(bf16Bits(64 / 1024), r * k, (r + 1) * k);
      w[r * k + 1] = bf16Bits(127 / 1024);
    }
    try {
      const seen = boundsHold(w, n, k, x, (r) => r % 10 === 0);
      expect(seen.length).toBe(n / 5);
      for (const s of seen) expect(s.err).toBeGreaterThan(s.weightTerm);
    } finally {
      freeResident(w);
    }
  });

  it('ties and near-ties with the best row: the first of equals, the larger of near-equals', () => {
    const [n, k] = [3000, 512];
    for (let t = 0; t < 6; t++) {
      // a head per case: a screen is packed once for its array, whose weights must not change after
      const w = residentHead(n, k);
      try {
        const x = activations(k, t % 2 ? 'outliers' : 'normal');
        const best = fullArgmax(w, n, k, x);
        const a = Math.floor(rng.uniform() * n),
          b = Math.floor(rng.uniform() * n);
        // row a: the best row exactly (a tie: the lower index wins); row b: the best row with one weight
        // moved by one bf16 step (a logit a hair above or below, far inside the screen's error)
        w.copyWithin(a * k, best * k, (best + 1) * k);
        w.copyWithin(b * k, best * k, (best + 1) * k);
        const j = Math.floor(rng.uniform() * k);
        w[b * k + j] = w[b * k + j]! + (t % 3 === 0 ? -1 : 1);
        expect(argmaxProduct({ m: 1, n, k, x, w }, true)[0]).toBe(fullArgmax(w, n, k, x));
      } finally {
        freeResident(w);
      }
    }
  });

  it('falls back to the full product: x not finite, a head row not finite, k not a multiple of 128, m > 1', () => {
    const [n, k] = [500, 256];
    const w = residentHead(n, k);
    try {
      const x = activations(k, 'normal');
      x[3] = Number.NaN;
      expect(argmaxProduct({ m: 1, n, k, x, w }, true)[0]).toBe(fullArgmax(w, n, k, x));
      x[3] = Number.POSITIVE_INFINITY;
      expect(argmaxProduct({ m: 1, n, k, x, w }, true)[0]).toBe(fullArgmax(w, n, k, x));
      const two = activations(2 * k, 'normal');
      const both = argmaxProduct({ m: 2, n, k, x: two, w }, true);
      expect([...both]).toEqual([fullArgmax(w, n, k, two.subarray(0, k)), fullArgmax(w, n, k, two.subarray(k))]);
    } finally {
      freeResident(w);
    }
    const bad = residentHead(300, 128);
    try {
      bad[77 * 128 + 5] = 0x7f80; // +inf
      expect(screenOf(bad, 300, 128)).toBeNull();
      const x = activations(128, 'normal');
      expect(argmaxProduct({ m: 1, n: 300, k: 128, x, w: bad }, true)[0]).toBe(fullArgmax(bad, 300, 128, x));
    } finally {
      freeResident(bad);
    }
    const odd = residentHead(200, 200);
    try {
      expect(screenOf(odd, 200, 200)).toBeNull();
      const x = activations(200, 'normal');
      expect(argmaxProduct({ m: 1, n: 200, k: 200, x, w: odd }, true)[0]).toBe(fullArgmax(odd, 200, 200, x));
    } finally {
      freeResident(odd);
    }
  });

  it("a screen's memory goes back to the engine once its head's array is collected (child, --expose-gc)", async () => {
    const { execFileSync } = await import('node:child_process');
    const { join } = await import('node:path');
    const child = join(import.meta.dirname, 'child/head-screen-gc.ts');
    const out = execFileSync(process.execPath, ['--expose-gc', '--conditions=@dsv3/source', '--import', 'tsx', child], {
      encoding: 'utf8',
      timeout: 60_000,
    });
    const r = JSON.parse(out.trim().split('\n').at(-1)!);
    expect(r.heads).toBe(1);
    expect(r.decided).toBe(1);
    // the copy (4,096 x 256 bytes and its per-row arrays) went back once the head was collected
    expect(r.freed - r.after).toBeGreaterThan(4096 * 256);
  }, 90_000);

  it('a head outside the engine memory takes the full product', () => {
    const [n, k] = [100, 128];
    const w = Uint16Array.from({ length: n * k }, () => bf16Bits(rng.normal() * 0.03));
    const x = activations(k, 'normal');
    expect(argmaxProduct({ m: 1, n, k, x, w }, true)[0]).toBe(fullArgmax(w, n, k, x));
  });
});
