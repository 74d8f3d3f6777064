// CPU f32 GEMM against a float64 reference: every path (wasm single-thread, wasm on worker
// threads, pure JS), ragged shapes, transposes, offsets, batching with broadcast, bad arguments.
import { Rng } from '../src/rng.js';
import { expectSameBits, relativeError } from '../src/testing.js';
import { afterAll, beforeEach, describe, expect, it, vi } from 'vitest';
import {
  allocResident,
  freeResident,
  gemmInfo,
  isResident,
  setGemmThreads,
  sgemm,
  type GemmArgs,
} from '../src/cpu/gemm/index.js';
import { normalizeGemm } from '../src/cpu/gemm/args.js';
import { gemmConfig } from '../src/cpu/gemm/config.js';
import { getEngine } from '../src/cpu/gemm/runtime.js';
import { WasmGemm } from '../src/cpu/gemm/wasm-engine.js';

const saved = { ...gemmConfig };

// Deterministic uniform(-1, 1) values from one seeded stream (core's Rng), never all zero.
const rng = new Rng(12345);
function rand(len: number): Float32Array {
  const out = rng.fillUniform(new Float32Array(len), -1, 1) as Float32Array;
  if (len > 0) out[0] = 0.5;
  return out;
}

/** float64 reference for one matrix, honouring layouts and offsets. */
function reference(
  m: number,
  n: number,
  k: number,
  a: Float32Array,
  aOff: number,
  transA: boolean,
  b: Float32Array,
  bOff: number,
  transB: boolean,
): Float64Array {
  const out = new Float64Array(m * n);
  for (let i = 0; i < m; i++) {
    for (let j = 0; j < n; j++) {
      let s = 0;
      for (let p = 0; p < k; p++) {
        const av = a[aOff + (transA ? p * m + i : i * k + p)] as number;
        const bv = b[bOff + (transB ? j * k + p : p * n + j)] as number;
        s += av * bv;
      }
      out[i * n + j] = s;
    }
  }
  return out;
}

function relErr(c: Float32Array, cOff: number, ref: Float64Array): number {
  return relativeError(c.subarray(cOff, cOff + ref.length), ref);
}

/** Runs one (optionally offset) GEMM and checks it, plus that C outside its window is untouched. */
function check(m: number, n: number, k: number, transA: boolean, transB: boolean, off = 0): void {
  const a = rand(off + m * k),
    b = rand(off + 2 + k * n);
  const c = new Float32Array(off + 3 + m * n + 5).fill(7);
  sgemm({ m, n, k, a, aOffset: off, transA, b, bOffset: off + 2, transB, c, cOffset: off + 3 });
  const ref = reference(m, n, k, a, off, transA, b, off + 2, transB);
  expect(relErr(c, off + 3, ref)).toBeLessThan(1e-6);
  for (let i = 0; i < off + 3; i++) expect(c[i]).toBe(7);
  for (let i = off + 3 + m * n; i < c.length; i++) expect(c[i]).toBe(7);
}

const SHAPES: [number, number, number][] = [
  [1, 1, 1],
  [3, 5, 7],
  [17, 33, 65],
  [127, 129, 131],
  [64, 64, 64],
  [300, 200, 100],
  [5, 9, 257], // one K block plus a 1-deep remainder
];
const TRANS: [boolean, boolean][] = [
  [false, false],
  [true, false],
  [false, true],
  [true, true],
];

const PATHS = {
  'wasm, 1 thread': () => setGemmThreads(1),
  // threadMinWork = 0 sends even tiny products through the worker pool.
  'wasm, 2 threads': () => {
    setGemmThreads(2);
    gemmConfig.threadMinWork = 0;
  },
  'pure JS': () => {
    gemmConfig.forceJs = true;
  },
} as const;

afterAll(() => Object.assign(gemmConfig, saved));

describe.each(Object.entries(PATHS))('sgemm (%s)', (_name, setup) => {
  beforeEach(() => {
    Object.assign(gemmConfig, saved);
    setup();
  });

  it.each(SHAPES)('%i x %i x %i, all transpose combinations', (m, n, k) => {
    for (const [ta, tb] of TRANS) check(m, n, k, ta, tb);
  });

  it('honours offsets', () => {
    for (const [ta, tb] of TRANS) check(37, 45, 29, ta, tb, 11);
  });

  it('crosses every cache block boundary (MC, KC, NC)', () => {
    check(130, 2060, 270, false, false);
    check(130, 2060, 270, true, true);
  });

  it('rows of a partial row panel (m not a multiple of MR) get the bits they get inside a whole panel', () => {
    // The macro-kernel runs the last, partial panel on a tile of just its rows; appending rows to A
    // (so every row sits in a whole 4-row panel) must not change a bit of the rows already there.
    const [n, k] = [37, 300]; // k over one KC block: C is accumulated across depth blocks
    for (const m of [1, 2, 3, 5, 6, 7, 13, 129, 130, 131]) {
      const padded = Math.ceil(m / 4) * 4 + 4;
      const a = rand(padded * k),
        b = rand(k * n);
      const c = new Float32Array(m * n),
        whole = new Float32Array(padded * n);
      sgemm({ m, n, k, a, b, c });
      sgemm({ m: padded, n, k, a, b, c: whole });
      expectSameBits(c, whole.subarray(0, m * n), 'c');
    }
  });

  it('batches with broadcast (stride 0) and gappy strides', () => {
    const [m, n, k, batch] = [19, 23, 31, 5];
    for (const [ta, tb] of TRANS) {
      const a = rand(m * k); // broadcast A
      const strideB = k * n + 3; // gaps between B matrices
      const b = rand(1 + batch * strideB);
      const strideC = m * n + 4;
      const c = new Float32Array(2 + batch * strideC).fill(7);
      sgemm({ m, n, k, a, transA: ta, strideA: 0, b, bOffset: 1, transB: tb, strideB, c, cOffset: 2, strideC, batch });
      for (let t = 0; t < batch; t++) {
        const ref = reference(m, n, k, a, 0, ta, b, 1 + t * strideB, tb);
        expect(relErr(c, 2 + t * strideC, ref)).toBeLessThan(1e-6);
        for (let g = 0; g < 4; g++) expect(c[2 + t * strideC + m * n + g]).toBe(7);
      }
    }
  });

  it('batches with broadcast B and many small matrices', () => {
    const [m, n, k, batch] = [9, 10, 11, 40];
    const a = rand(batch * m * k),
      b = rand(k * n),
      c = new Float32Array(batch * m * n);
    sgemm({ m, n, k, a, b, strideB: 0, c, batch });
    for (let t = 0; t < batch; t++) {
      expect(relErr(c, t * m * n, reference(m, n, k, a, t * m * k, false, b, 0, false))).toBeLessThan(1e-6);
    }
  });

  it('short-and-wide and tall-and-thin products', () => {
    check(2, 3000, 50, false, false);
    check(3000, 3, 50, false, true);
  });

  it('k = 0 gives zeros; m = 0 or n = 0 is a no-op', () => {
    const c = new Float32Array(12).fill(3);
    sgemm({ m: 3, n: 4, k: 0, a: new Float32Array(0), b: new Float32Array(0), c });
    expect(Array.from(c)).toEqual(new Array(12).fill(0));
    const d = new Float32Array(4).fill(3);
    sgemm({ m: 0, n: 4, k: 5, a: new Float32Array(0), b: rand(20), c: d });
    expect(Array.from(d)).toEqual([3, 3, 3, 3]);
  });

  it('C may alias an input buffer', () => {
    const [m, n, k] = [8, 8, 8];
    const buf = rand(m * k + k * n + m * n);
    const a = buf.subarray(0, m * k),
      b = buf.subarray(m * k, m * k + k * n);
    const ref = reference(m, n, k, a.slice(), 0, false, b.slice(), 0, false);
    sgemm({ m, n, k, a: buf, b: buf, bOffset: m * k, c: buf, cOffset: 0 }); // C overwrites A
    expect(relErr(buf, 0, ref)).toBeLessThan(1e-6);
  });
});

describe('sgemm on the worker pool', () => {
  beforeEach(() => Object.assign(gemmConfig, saved));

  it('a large product that is threaded by default matches the reference', () => {
    setGemmThreads(2);
    check(257, 263, 251, false, false);
    check(257, 263, 251, true, true);
  });

  it('worker threads really take tasks', async () => {
    setGemmThreads(2);
    const engine = getEngine();
    expect(engine?.canThread()).toBe(true);
    const before = engine?.workerTasks() ?? 0;
    const deadline = Date.now() + 30_000;
    while ((engine?.workerTasks() ?? 0) === before && Date.now() < deadline) {
      check(160, 160, 160, false, false);
      await new Promise((r) => setTimeout(r, 20)); // a freshly spawned worker needs a moment to boot
    }
    expect(engine?.workerTasks()).toBeGreaterThan(before);
  });

  it('without worker_threads (browser) runs single-threaded on unshared memory', () => {
    const engine = new WasmGemm(null);
    expect(engine.canThread()).toBe(false);
    const [m, n, k] = [70, 90, 300];
    const a = rand(k * m),
      b = rand(n * k),
      c = new Float32Array(m * n);
    engine.run(normalizeGemm({ m, n, k, a, transA: true, b, transB: true, c }), 4);
    expect(relErr(c, 0, reference(m, n, k, a, 0, true, b, 0, true))).toBeLessThan(1e-6);
  });

  it('a large threaded batch (more items than one job takes) matches the reference', () => {
    setGemmThreads(2);
    gemmConfig.threadMinWork = 0;
    const [m, n, k, batch] = [5, 6, 7, 300];
    const a = rand(batch * m * k),
      b = rand(batch * k * n),
      c = new Float32Array(batch * m * n);
    sgemm({ m, n, k, a, b, c, batch, transB: true });
    for (let t = 0; t < batch; t++) {
      expect(relErr(c, t * m * n, reference(m, n, k, a, t * m * k, false, b, t * k * n, true))).toBeLessThan(1e-6);
    }
  });

  it('splits a batch that does not fit the heap, and rejects one matrix that cannot', () => {
    gemmConfig.maxPages = 200; // 12.5 MiB heap for this engine
    const engine = new WasmGemm(null);
    const [m, n, k, batch] = [100, 100, 100, 200]; // ~16 MB of A and C in all
    const a = rand(batch * m * k),
      b = rand(k * n),
      c = new Float32Array(batch * m * n);
    engine.run(normalizeGemm({ m, n, k, a, b, strideB: 0, c, batch }), 1);
    for (const t of [0, 77, 199]) {
      expect(relErr(c, t * m * n, reference(m, n, k, a, t * m * k, false, b, 0, false))).toBeLessThan(1e-6);
    }
    const big = 1200; // 3 x 5.8 MB
    expect(() =>
      engine.run(
        normalizeGemm({
          m: big,
          n: big,
          k: big,
          a: rand(big * big),
          b: rand(big * big),
          c: new Float32Array(big * big),
        }),
        1,
      ),
    ).toThrow(/over the .*-byte limit/);
  });

  it('raising then lowering the thread count keeps results right (extra workers sit out)', () => {
    gemmConfig.threadMinWork = 0;
    for (const t of [3, 2, 1, 3]) {
      setGemmThreads(t);
      check(96, 80, 70, false, true);
    }
  });

  it('reports SIMD and the thread count', () => {
    setGemmThreads(2);
    expect(gemmInfo()).toMatchObject({ simd: true, threads: 2 });
    setGemmThreads(1);
    expect(gemmInfo().threads).toBe(1);
  });
});

describe('sgemm writing into a resident C (no copy out of the wasm memory)', () => {
  beforeEach(() => Object.assign(gemmConfig, saved));
  const resident = (n: number, fill?: Float32Array): Float32Array => {
    const r = allocResident('f32', n) as Float32Array;
    if (fill) r.set(fill);
    return r;
  };

  // Rows of whole NR-column tiles (n % 8 = 0) are written in place, ragged m included; other n go
  // through the padded copy.
  it.each([
    [1, 128, 128, 48, 1],
    [2, 128, 48, 128, 1],
    [1, 64, 32, 100, 3],
    [2, 20, 24, 33, 4],
    [1, 17, 33, 65, 2],
    [2, 21, 40, 9, 2],
  ])('%i thread(s): %i x %i x %i, batch %i, A and B host or resident, gaps kept', (threads, m, n, k, batch) => {
    setGemmThreads(threads);
    gemmConfig.threadMinWork = 0;
    for (const [aRes, bRes] of [
      [false, false],
      [true, true],
    ]) {
      const a0 = rand(batch * m * k),
        b0 = rand(batch * k * n);
      const a = aRes ? resident(a0.length, a0) : a0;
      const b = bRes ? resident(b0.length, b0) : b0;
      const gap = 8; // strideC leaves 8 untouched elements between the outputs
      const c = resident(batch * (m * n + gap) + 3);
      c.fill(7);
      sgemm({ m, n, k, a, b, transB: true, c, cOffset: 3, batch, strideC: m * n + gap });
      for (let t = 0; t < batch; t++) {
        const ref = reference(m, n, k, a0, t * m * k, false, b0, t * k * n, true);
        expect(relErr(c, 3 + t * (m * n + gap), ref)).toBeLessThan(1e-6);
        for (let i = 0; i < gap; i++) expect(c[3 + t * (m * n + gap) + m * n + i]).toBe(7);
      }
      expect(Array.from(c.subarray(0, 3))).toEqual([7, 7, 7]);
      for (const x of [a, b, c]) if (isResident(x)) freeResident(x);
    }
  });

  // The macro-kernel's last row panel stores only its rows, so a ragged m needs no padded copy: the
  // kernel writes C where it lives (no copy out through c.set), the rows after it stay as they were,
  // and the bits are those of the padded copy into a host C.
  it.each([
    [1, 1021, 64, 128, false],
    [2, 1022, 128, 96, false],
    [2, 1023, 80, 128, true],
    [1, 258, 128, 1024, true],
    [2, 13, 16, 300, false],
  ])(
    '%i thread(s): %i x %i x %i (ragged m), transA %s: written in place, bitwise the host copy',
    (threads, m, n, k, transA) => {
      setGemmThreads(threads);
      const a = resident(m * k, rand(m * k));
      const b = resident(k * n, rand(k * n));
      const host = new Float32Array(m * n);
      sgemm({ m, n, k, a, b, transA, c: host });
      const after = 3 * n + 5; // three rows and some past C: a padded tile would write them
      const c = resident(m * n + after);
      c.fill(7);
      const copies = vi.spyOn(c, 'set');
      sgemm({ m, n, k, a, b, transA, c });
      expect(copies).not.toHaveBeenCalled();
      expectSameBits(c.subarray(0, m * n), host, 'c');
      expect(c.subarray(m * n).every((v) => v === 7)).toBe(true);
      const ref = reference(m, n, k, a, 0, transA, b, 0, false);
      expect(relErr(c, 0, ref)).toBeLessThan(1e-6);
      for (const x of [a, b, c]) freeResident(x);
    },
  );

  // A ragged n (an LM head's 258 columns): the whole NR-column tiles are written in place, the last
  // partial tile through an m x NR scratch whose n mod NR columns alone are copied out, so no copy moves
  // more than those; the columns past n in a pitched row and the rows after C stay as they were, and the
  // bits are the host copy's (each element's sum does not depend on which columns share a call).
  it.each([
    [2, 1024, 258, 128, false, true],
    [1, 1024, 258, 128, false, true],
    [2, 37, 13, 64, false, false],
    [1, 9, 17, 33, true, false],
    [2, 100, 250, 70, true, true],
    [2, 20, 5, 40, false, true], // n < NR: no whole tile, the padded copy as before
  ])(
    '%i thread(s): %i x %i x %i (ragged n), transA %s, transB %s: whole tiles in place, the tail copied',
    (threads, m, n, k, transA, transB) => {
      setGemmThreads(threads);
      if (threads > 1) gemmConfig.threadMinWork = 0;
      const a = resident(m * k, rand(m * k));
      const b = resident(k * n, rand(k * n));
      const host = new Float32Array(m * n);
      sgemm({ m, n, k, a, b, transA, transB, c: host });
      const ldc = n + 5; // a pitched C: the 5 columns after each row must stay as they were
      const after = 3 * ldc + 5;
      const c = resident(m * ldc + after);
      c.fill(7);
      const copies = vi.spyOn(c, 'set');
      sgemm({ m, n, k, a, b, transA, transB, c, ldc });
      const tail = n % 8;
      if (n > 8)
        for (const [src] of copies.mock.calls) expect((src as ArrayLike<number>).length).toBeLessThanOrEqual(tail);
      copies.mockRestore();
      for (let i = 0; i < m; i++) {
        expect(c.subarray(i * ldc, i * ldc + n)).toEqual(host.subarray(i * n, (i + 1) * n));
        expect(c.subarray(i * ldc + n, (i + 1) * ldc).every((v) => v === 7)).toBe(true);
      }
      expect(c.subarray(m * ldc).every((v) => v === 7)).toBe(true);
      const ref = reference(m, n, k, a, 0, transA, b, 0, transB);
      const packed = new Float32Array(m * n);
      for (let i = 0; i < m; i++) packed.set(c.subarray(i * ldc, i * ldc + n), i * n);
      expect(relErr(packed, 0, ref)).toBeLessThan(1e-6);
      for (const x of [a, b, c]) freeResident(x);
    },
  );

  it('a resident C overlapping a resident A is computed before it is overwritten', () => {
    setGemmThreads(1);
    const [m, n, k] = [8, 8, 8];
    const init = rand(m * k + k * n);
    const buf = resident(m * k + k * n, init);
    const ref = reference(m, n, k, init, 0, false, init, m * k, false);
    sgemm({ m, n, k, a: buf, b: buf, bOffset: m * k, c: buf, cOffset: 0 }); // C overwrites A
    expect(relErr(buf, 0, ref)).toBeLessThan(1e-6);
    freeResident(buf);
  });
});

describe('sgemm argument errors', () => {
  const ok = (): GemmArgs => ({ m: 2, n: 3, k: 4, a: rand(8), b: rand(12), c: new Float32Array(6) });

  it('rejects too-short arrays', () => {
    expect(() => sgemm({ ...ok(), a: rand(7) })).toThrow(/a is too short/);
    expect(() => sgemm({ ...ok(), b: rand(11) })).toThrow(/b is too short/);
    expect(() => sgemm({ ...ok(), c: new Float32Array(5) })).toThrow(/c is too short/);
    expect(() => sgemm({ ...ok(), aOffset: 1 })).toThrow(/a is too short/);
    expect(() => sgemm({ ...ok(), batch: 2, strideB: 0 })).toThrow(/a is too short/);
  });

  it('rejects negative or fractional sizes and bad strides', () => {
    expect(() => sgemm({ ...ok(), m: -1 })).toThrow(/m must be a non-negative integer/);
    expect(() => sgemm({ ...ok(), k: 1.5 })).toThrow(/k must be a non-negative integer/);
    expect(() => sgemm({ ...ok(), batch: -2 })).toThrow(/batch/);
    expect(() => sgemm({ ...ok(), strideA: -1 })).toThrow(/strideA/);
    expect(() => sgemm({ ...ok(), c: new Float32Array(12), batch: 2, strideA: 0, strideB: 0, strideC: 3 })).toThrow(
      /strideC/,
    );
    expect(() => sgemm({ ...ok(), a: [1, 2] as unknown as Float32Array })).toThrow(/a must be a Float32Array/);
  });

  it('rejects a bad thread count', () => {
    expect(() => setGemmThreads(0)).toThrow(RangeError);
    expect(() => setGemmThreads(1.5)).toThrow(RangeError);
  });
});
