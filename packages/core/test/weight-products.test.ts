// weightProducts: several weight products in one GEMV job (a decode step's expert projections). Each
// product must equal what weightProduct gives on its own, bit for bit (same kernel, same staging; the
// job only shares the hand-out), for f32 / bf16 / FP8 weights, resident and host, an x shared by
// several products, rows above gemvMaxM mixed in, 1 and 2 threads; and float64 within 1e-6.
import { afterAll, afterEach, describe, expect, it, vi } from 'vitest';
import { cpu, decodeBf16, encodeBf16, Linear, MLP_WORK_BYTES, noGrad, SwiGLU, Tensor, tensor } from '../src/index.js';
import { swigluParts } from '../src/nn/layers.js';
import { expectSameBits, randomUniform, relativeError } from '../src/testing.js';
import { linearReference64 as reference } from './helpers.js';
import { gemmConfig } from '../src/cpu/gemm/config.js';
import { WasmGemm } from '../src/cpu/gemm/wasm-engine.js';
import {
  allocResident,
  dequantizeFp8Weight,
  freeResident,
  setGemmThreads,
  sgemm,
  weightProduct,
  weightProducts,
  type WeightProductArgs,
} from '../src/cpu/gemm/index.js';

const saved = { ...gemmConfig };
afterEach(() => Object.assign(gemmConfig, saved));
afterAll(() => Object.assign(gemmConfig, saved));

type Kind = 'f32' | 'bf16' | 'fp8';

/** A weight [n, k] of `kind` (host or resident) with its exact f32 values. */
function makeWeight(kind: Kind, n: number, k: number, seed: number, resident: boolean) {
  const wf = Float32Array.from(randomUniform(n * k, seed));
  let host: Float32Array | Uint16Array | Uint8Array = wf;
  let scales: Float32Array | undefined;
  let exact: Float32Array = wf;
  if (kind === 'bf16') {
    host = encodeBf16(wf);
    exact = decodeBf16(host as Uint16Array);
  } else if (kind === 'fp8') {
    host = Uint8Array.from(randomUniform(n * k, seed, 0, 254), (v) => {
      const b = Math.floor(v);
      return (b & 0x7f) === 0x7f ? b - 1 : b;
    });
    scales = Float32Array.from(randomUniform(Math.ceil(n / 128) * Math.ceil(k / 128), seed + 1, 0.01, 0.1));
    exact = dequantizeFp8Weight(host as Uint8Array, scales, n, k);
  }
  if (!resident) return { w: host, scales, exact, free: () => {} };
  const res = allocResident(kind === 'fp8' ? 'fp8-e4m3' : kind, n * k)!;
  res.set(host);
  return { w: res as Float32Array | Uint16Array | Uint8Array, scales, exact, free: () => freeResident(res) };
}

describe.each([
  ['1 thread', 1],
  ['2 threads', 2],
])('weightProducts (%s)', (_, threads) => {
  it('mixed kinds, shared x, host and resident, m above gemvMaxM: each equals weightProduct exactly', () => {
    setGemmThreads(threads);
    gemmConfig.threadMinWork = 0;
    gemmConfig.wakeMinWork = 0; // wake sleeping workers even for tiny products
    const k = 300;
    const shared = Float32Array.from(randomUniform(2 * k, 3)); // two rows read by several products
    // FP8 stages x times 2^(120 - e), e from max|x| (0 for shared, 7 here): products sharing a staged x share its e
    const large = Float32Array.from(randomUniform(k, 4), (v) => v * 1000);
    const specs: { kind: Kind; n: number; m: number; resident: boolean; x?: Float32Array }[] = [
      { kind: 'bf16', n: 257, m: 2, resident: true, x: shared },
      { kind: 'bf16', n: 33, m: 2, resident: true, x: shared },
      { kind: 'f32', n: 130, m: 2, resident: false, x: shared },
      { kind: 'fp8', n: 260, m: 2, resident: true, x: shared },
      { kind: 'fp8', n: 5, m: 1, resident: false },
      { kind: 'fp8', n: 140, m: 1, resident: true, x: large },
      { kind: 'fp8', n: 3, m: 1, resident: false, x: large },
      { kind: 'bf16', n: 9, m: 1, resident: true, x: large },
      { kind: 'f32', n: 17, m: 7, resident: true }, // above gemvMaxM: the GEMM
      { kind: 'bf16', n: 1, m: 4, resident: true },
    ];
    let seed = 10;
    const parts = specs.map((s) => {
      const w = makeWeight(s.kind, s.n, k, seed++, s.resident);
      const x = s.x ?? Float32Array.from(randomUniform(s.m * k, seed++));
      return { s, w, x, y: new Float32Array(s.m * s.n).fill(Number.NaN) };
    });
    const args = (p: (typeof parts)[number], y: Float32Array): WeightProductArgs => ({
      m: p.s.m,
      n: p.s.n,
      k,
      x: p.x,
      w: p.w.w,
      ...(p.w.scales && { scales: p.w.scales }),
      y,
    });
    weightProducts(parts.map((p) => args(p, p.y)));
    for (const p of parts) {
      const alone = new Float32Array(p.s.m * p.s.n);
      weightProduct(args(p, alone));
      const tag = `${p.s.kind} ${p.s.m}x${p.s.n}`;
      expectSameBits(p.y, alone, tag);
      expect(relativeError(p.y, reference(p.s.m, p.s.n, k, p.x, p.w.exact)), tag).toBeLessThan(1e-6);
      p.w.free();
    }
  });

  it('more products than one task table holds run in several jobs', () => {
    setGemmThreads(threads);
    gemmConfig.threadMinWork = 0;
    gemmConfig.wakeMinWork = 0; // wake sleeping workers even for tiny products
    const [n, k] = [6, 20];
    const x = Float32Array.from(randomUniform(k, 1));
    const ws = Array.from({ length: 300 }, (_, i) => makeWeight(i % 2 ? 'bf16' : 'f32', n, k, 100 + i, true));
    const ys = ws.map(() => new Float32Array(n).fill(Number.NaN));
    weightProducts(ws.map((w, i) => ({ m: 1, n, k, x, w: w.w, y: ys[i]! })));
    ws.forEach((w, i) => {
      expect(relativeError(ys[i]!, reference(1, n, k, x, w.exact)), `product ${i}`).toBeLessThan(1e-6);
      w.free();
    });
  });
});

describe.each([
  ['1 thread', 1],
  ['2 threads', 2],
])('many rows against f32 / bf16 / FP8 weights: the weight GEMM, widening as it packs (%s)', (_, threads) => {
  // m > mc (128) and k > kc (256) cross the kernel's blocks; n > nc (2048) its column blocks; ragged
  // m, n and k (k not a multiple of 128: a partial scale block) exercise the packing's edges; both loop
  // orders of gemmW (panel by panel, and blocked when A~ for all of k does not fit the workspace) run.
  const shapes: [number, number, number][] = [
    [5, 7, 3],
    [12, 256, 1024],
    [13, 130, 300],
    [33, 257, 129],
    [130, 9, 700],
    [6, 2100, 130],
    [300, 20, 2000], // A~ for all of k past the workspace: the blocked loop order instead of panel by panel
  ];
  it.each(['f32', 'bf16', 'fp8'] as const)(
    '%s: bitwise the f32 GEMM on the dequantized weight and the widen-first path; float64 within 1e-6',
    (kind) => {
      setGemmThreads(threads);
      gemmConfig.threadMinWork = 0;
      let seed = 700;
      for (const [m, n, k] of shapes)
        for (const resident of [true, false]) {
          const w = makeWeight(kind, n, k, seed++, resident);
          const x = Float32Array.from(randomUniform(m * k, seed++));
          const product = (y: Float32Array): WeightProductArgs => ({
            m,
            n,
            k,
            x,
            w: w.w,
            ...(w.scales && { scales: w.scales }),
            y,
          });
          const y = new Float32Array(m * n).fill(Number.NaN);
          weightProduct(product(y));
          const tag = `${kind} ${m}x${n}x${k} ${resident ? 'resident' : 'host'}`;
          const f32 = new Float32Array(m * n);
          sgemm({ m, n, k, a: x, b: w.exact, transB: true, c: f32 });
          expectSameBits(y, f32, tag);
          expect(relativeError(y, reference(m, n, k, x, w.exact)), tag).toBeLessThan(1e-6);
          w.free();
        }
    },
  );

  it.each(['f32', 'bf16', 'fp8'] as const)(
    '%s: rows of a partial row panel (m not a multiple of 4) get the bits they get inside a whole panel',
    (kind) => {
      setGemmThreads(threads);
      gemmConfig.threadMinWork = 0;
      const [n, k] = [40, 300];
      const w = makeWeight(kind, n, k, 77, true);
      for (const m of [5, 6, 7, 13, 131]) {
        const padded = Math.ceil(m / 4) * 4 + 4;
        const x = Float32Array.from(randomUniform(padded * k, m));
        const run = (rows: number): Float32Array => {
          const y = new Float32Array(rows * n);
          weightProduct({ m: rows, n, k, x, w: w.w, ...(w.scales && { scales: w.scales }), y });
          return y;
        };
        expectSameBits(run(m), run(padded).subarray(0, m * n), `${kind} m=${m}`);
      }
      w.free();
    },
  );

  it('fp8: block scales at the ends of the f32 range (tiny, below 2^8, 2^8 and past it) give the bits of the f32 GEMM', () => {
    // The packing multiplies by scales staged times 2^120; one of 2^8 or more would overflow there, so
    // that product runs on its dequantized f32 weight instead. Results in the subnormal range are included.
    setGemmThreads(threads);
    gemmConfig.threadMinWork = 0;
    const [m, n, k] = [13, 260, 300]; // 3 x 3 scale blocks
    for (const big of [255.99, 256, 3e5]) {
      const w = makeWeight('fp8', n, k, 31, true);
      w.scales!.set([1e-42, 3e-41, 1e-40, 0.5, 1e-3, big, 7, 1e-20, 0.01]); // row 0 subnormal: subnormal outputs
      const exact = dequantizeFp8Weight(w.w as Uint8Array, w.scales!, n, k);
      const x = Float32Array.from(randomUniform(m * k, 32));
      const y = new Float32Array(m * n).fill(Number.NaN);
      weightProduct({ m, n, k, x, w: w.w, scales: w.scales!, y });
      const f32 = new Float32Array(m * n);
      sgemm({ m, n, k, a: x, b: exact, transB: true, c: f32 });
      expectSameBits(y, f32, `largest scale ${big}`);
      expect(f32.some((v) => v !== 0 && Math.abs(v) < 2 ** -126)).toBe(true); // subnormal outputs were checked
      w.free();
    }
  });

  it('weightProducts runs them as one job (shared x, mixed kinds, host and resident), each as weightProduct', () => {
    setGemmThreads(threads);
    gemmConfig.threadMinWork = 0;
    const [m, k] = [12, 260];
    const shared = Float32Array.from(randomUniform(m * k, 5));
    let seed = 900;
    const parts = (
      [
        ['bf16', 256, true],
        ['bf16', 256, true],
        ['f32', 130, true],
        ['f32', 19, false],
        ['fp8', 131, true],
        ['fp8', 256, false],
        ['bf16', 9, false],
      ] as const
    ).map(([kind, n, resident]) => ({ n, w: makeWeight(kind, n, k, seed++, resident), y: new Float32Array(m * n) }));
    const product = (p: (typeof parts)[number], y: Float32Array): WeightProductArgs => ({
      m,
      n: p.n,
      k,
      x: shared,
      w: p.w.w,
      ...(p.w.scales && { scales: p.w.scales }),
      y,
    });
    weightProducts(parts.map((p) => product(p, p.y)));
    for (const p of parts) {
      const alone = new Float32Array(m * p.n);
      weightProduct(product(p, alone));
      expectSameBits(p.y, alone, 'p.y');
      expect(relativeError(p.y, reference(m, p.n, k, shared, p.w.exact))).toBeLessThan(1e-6);
      p.w.free();
    }
  });
});

describe.each([
  ['1 thread', 1],
  ['2 threads', 2],
])('the weight GEMM with x and y in the engine memory (%s)', (_, threads) => {
  // A resident x is read where it lies and a resident y of whole NR-column tiles is written where it
  // lies (no staging copy, no copy out): the same bits as host x and y, nothing written past y's m x n
  // values (guards around it), and a y that overlaps an operand read in place is staged as before.
  it.each(['f32', 'bf16', 'fp8'] as const)('%s: bitwise the host-memory product; guards untouched', (kind) => {
    setGemmThreads(threads);
    gemmConfig.threadMinWork = 0;
    let seed = 1300;
    for (const [m, n, k] of [
      [5, 8, 3],
      [13, 256, 300],
      [48, 1024, 256],
      [131, 40, 1024],
      [7, 33, 130], // n not whole NR tiles: y staged, x still read in place
    ] as const) {
      const w = makeWeight(kind, n, k, seed++, true);
      const xHost = Float32Array.from(randomUniform(m * k, seed++));
      const host = new Float32Array(m * n);
      const product = (x: Float32Array, y: Float32Array, xOffset = 0, yOffset = 0): WeightProductArgs => ({
        m,
        n,
        k,
        x: xOffset ? x.subarray(xOffset) : x,
        w: w.w,
        ...(w.scales && { scales: w.scales }),
        y: yOffset ? y.subarray(yOffset) : y,
      });
      weightProduct(product(xHost, host));
      const guard = 16;
      const x = allocResident('f32', m * k + 3) as Float32Array;
      x.set(xHost, 3);
      const y = allocResident('f32', m * n + 2 * guard) as Float32Array;
      y.fill(Number.NaN);
      const ySpan = y.subarray(guard, guard + m * n);
      weightProducts([product(x, y.subarray(0, guard + m * n), 3, guard)]);
      const tag = `${kind} ${m}x${n}x${k}`;
      expectSameBits(ySpan, host, tag);
      expect(Array.from(y.subarray(0, guard)).every(Number.isNaN), `${tag}: before y`).toBe(true);
      expect(Array.from(y.subarray(guard + m * n)).every(Number.isNaN), `${tag}: after y`).toBe(true);
      freeResident(x);
      freeResident(y);
      w.free();
    }
  });

  it('a resident y overlapping a resident x read in place is staged (the result equals the host product)', () => {
    setGemmThreads(threads);
    gemmConfig.threadMinWork = 0;
    const [m, n, k] = [12, 256, 256]; // y (m x n) the same size as x (m x k)
    const w = makeWeight('bf16', n, k, 1400, true);
    const xHost = Float32Array.from(randomUniform(m * k, 1401));
    const host = new Float32Array(m * n);
    weightProduct({ m, n, k, x: xHost, w: w.w, y: host });
    const buf = allocResident('f32', m * k) as Float32Array;
    buf.set(xHost);
    weightProducts([{ m, n, k, x: buf, w: w.w, y: buf }]); // in place: y over x
    expectSameBits(buf, host, 'buf');
    freeResident(buf);
    w.free();
  });
});

describe.each([
  ['1 thread', 1],
  ['2 threads', 2],
])('row pitches: one head of [m, H, k] x into its columns of [m, H, n] y (%s)', (_, threads) => {
  // Head h reads x's columns [h·k, (h+1)·k) and writes y's [h·n, (h+1)·n) at pitches H·k / H·n: the
  // same bits as the dense product of the gathered rows (GEMV for m <= gemvMaxM, else the weight GEMM),
  // x and y in host memory or the engine's; the other heads' columns stay untouched. Head 1 (not
  // computed) holds an infinity and the rest is scaled by 2^-100: FP8's staging exponent must come from
  // a product's own rows (scaled up by 2^120), or those products underflow.
  it.each(['f32', 'bf16', 'fp8'] as const)('%s: bitwise the gathered product; the other columns untouched', (kind) => {
    setGemmThreads(threads);
    gemmConfig.threadMinWork = 0;
    gemmConfig.wakeMinWork = 0;
    const H = 3;
    let seed = 1500;
    for (const [m, n, k] of [
      [1, 8, 130],
      [3, 33, 300],
      [5, 256, 128],
      [48, 40, 256],
      [131, 33, 130],
    ] as const)
      for (const resident of [false, true]) {
        const xAll = Float32Array.from(randomUniform(m * H * k, seed++));
        for (let i = 0; i < xAll.length; i++) xAll[i]! *= 2 ** -100;
        xAll[k + 1] = Number.POSITIVE_INFINITY;
        let x: Float32Array = xAll,
          y: Float32Array = new Float32Array(m * H * n);
        if (resident) {
          x = allocResident('f32', m * H * k) as Float32Array;
          x.set(xAll);
          y = allocResident('f32', m * H * n) as Float32Array;
        }
        y.fill(Number.NaN);
        const ws = [0, 2].map((h) => makeWeight(kind, n, k, seed + h, true));
        seed += 3;
        weightProducts(
          [0, 2].map((h, i) => ({
            m,
            n,
            k,
            x: x.subarray(h * k),
            ldx: H * k,
            w: ws[i]!.w,
            ...(ws[i]!.scales && { scales: ws[i]!.scales }),
            y: y.subarray(h * n),
            ldy: H * n,
          })),
        );
        const tag = `${kind} ${m}x${n}x${k} ${resident ? 'resident' : 'host'}`;
        [0, 2].forEach((h, i) => {
          const xh = new Float32Array(m * k);
          for (let r = 0; r < m; r++) xh.set(xAll.subarray((r * H + h) * k, (r * H + h + 1) * k), r * k);
          const dense = new Float32Array(m * n);
          weightProduct({ m, n, k, x: xh, w: ws[i]!.w, ...(ws[i]!.scales && { scales: ws[i]!.scales }), y: dense });
          const got = new Float32Array(m * n);
          for (let r = 0; r < m; r++) got.set(y.subarray((r * H + h) * n, (r * H + h + 1) * n), r * n);
          expectSameBits(got, dense, `${tag} head ${h}`);
          expect(relativeError(got, reference(m, n, k, xh, ws[i]!.exact)), `${tag} head ${h}`).toBeLessThan(1e-6);
        });
        for (let r = 0; r < m; r++)
          expect(Array.from(y.subarray((r * H + 1) * n, (r * H + 2) * n)).every(Number.isNaN), `${tag} row ${r}`).toBe(
            true,
          );
        if (resident) {
          freeResident(x);
          freeResident(y);
        }
        for (const w of ws) w.free();
      }
  });

  it('pitches below k / n, fractional, or past the arrays are rejected', () => {
    const w = new Float32Array(4 * 3);
    const ok = { m: 2, n: 4, k: 3, w };
    expect(() => weightProducts([{ ...ok, x: new Float32Array(8), ldx: 2, y: new Float32Array(8) }])).toThrow(
      /row pitches/,
    );
    expect(() => weightProducts([{ ...ok, x: new Float32Array(8), ldx: 3.5, y: new Float32Array(8) }])).toThrow(
      /row pitches/,
    );
    expect(() => weightProducts([{ ...ok, x: new Float32Array(8), y: new Float32Array(12), ldy: 3 }])).toThrow(
      /row pitches/,
    );
    // rows 5 apart: x needs 5 + 3 elements, y 9 + 4
    expect(() => weightProducts([{ ...ok, x: new Float32Array(7), ldx: 5, y: new Float32Array(8) }])).toThrow(
      /too short/,
    );
    expect(() => weightProducts([{ ...ok, x: new Float32Array(8), ldx: 5, y: new Float32Array(12), ldy: 9 }])).toThrow(
      /too short/,
    );
  });
});

describe('f32 weights: the weight GEMM or the f32 GEMM', () => {
  it('products of up to f32WeightGemmMaxRows rows run as one weight-GEMM job (panel or blocked order); more rows take the f32 GEMM, whatever k', () => {
    setGemmThreads(2);
    // weightProducts reuses its job list, so the job's rows are read when it is handed over
    const jobRows: number[][] = [];
    const weightGemmMany = WasmGemm.prototype.weightGemmMany;
    const batched = vi.spyOn(WasmGemm.prototype, 'weightGemmMany').mockImplementation(function (
      this: WasmGemm,
      list,
      threads,
    ) {
      jobRows.push(list.map((v) => v.m));
      weightGemmMany.call(this, list, threads);
    });
    const general = vi.spyOn(WasmGemm.prototype, 'run');
    try {
      const k = 2000;
      const maxRows = gemmConfig.f32WeightGemmMaxRows;
      // A~ of 276 rows x 2000 depths fits the default 4x8 kernel's workspace (beside one panel); 280 rows
      // do not (the weight GEMM's blocked order), nor do rows past f32WeightGemmMaxRows (the f32 GEMM).
      const parts = [12, 276, 280, maxRows, maxRows + 1].map((m, i) => {
        const w = makeWeight('f32', 24, k, 60 + i, i !== 1);
        const x = Float32Array.from(randomUniform(m * k, 70 + i));
        return { m, w, x, y: new Float32Array(m * 24).fill(Number.NaN) };
      });
      weightProducts(parts.map(({ m, w, x, y }) => ({ m, n: 24, k, x, w: w.w, y })));
      expect(batched).toHaveBeenCalledTimes(1);
      expect(jobRows).toEqual([[12, 276, 280, maxRows]]);
      expect(general).toHaveBeenCalledTimes(1);
      expect(general.mock.calls[0]![0].m).toBe(maxRows + 1);
      for (const p of parts) {
        expect(relativeError(p.y, reference(p.m, 24, k, p.x, p.w.exact)), `m ${p.m}`).toBeLessThan(1e-6);
        // either route: the bits of the f32 GEMM
        const c = new Float32Array(p.m * 24);
        sgemm({ m: p.m, n: 24, k, a: p.x, b: p.w.w as Float32Array, transB: true, c });
        expectSameBits(p.y, c, `m ${p.m} bitwise`);
        p.w.free();
      }
      // Past f32WeightGemmMaxRows rows even an A~ that fits a workspace (training's 1,024 x 128) takes
      // the f32 GEMM: its row stripes share one packed B.
      const [m, small] = [maxRows + 3, 128];
      const w = makeWeight('f32', 24, small, 80, true);
      const x = Float32Array.from(randomUniform(m * small, 81));
      const y = new Float32Array(m * 24);
      batched.mockClear();
      general.mockClear();
      weightProduct({ m, n: 24, k: small, x, w: w.w, y });
      expect(batched).not.toHaveBeenCalled();
      expect(general).toHaveBeenCalledTimes(1);
      expect(general.mock.calls[0]![0].m).toBe(m);
      expect(relativeError(y, reference(m, 24, small, x, w.exact))).toBeLessThan(1e-6);
      w.free();
    } finally {
      batched.mockRestore();
      general.mockRestore();
    }
  });
});

describe('bf16 / FP8 weights past gemvLargeBytes: the GEMV up to gemvMaxMLarge rows', () => {
  it.each([1, 2])(
    '%i threads: m = 5 .. 16 through the GEMV match float64; f32 and m past the limit take the GEMM',
    (threads) => {
      setGemmThreads(threads);
      gemmConfig.threadMinWork = 0;
      gemmConfig.wakeMinWork = 0; // wake sleeping workers even for tiny products
      gemmConfig.gemvLargeBytes = 1024; // every weight below counts as large
      const [n, k] = [37, 300];
      let seed = 400;
      for (const kind of ['bf16', 'fp8', 'f32'] as const)
        for (const m of [5, 9, 16, 17]) {
          const w = makeWeight(kind, n, k, seed++, true);
          const x = Float32Array.from(randomUniform(m * k, seed++));
          const y = new Float32Array(m * n).fill(Number.NaN);
          weightProducts([{ m, n, k, x, w: w.w, ...(w.scales && { scales: w.scales }), y }]);
          expect(relativeError(y, reference(m, n, k, x, w.exact)), `${kind} m ${m}`).toBeLessThan(1e-6);
          w.free();
        }
    },
  );
});

describe('weightProducts edges', () => {
  it('empty list, k = 0 and m = 0 products; a bad product is rejected before any runs', () => {
    weightProducts([]);
    const y0 = new Float32Array(3).fill(5);
    const y1 = new Float32Array(4).fill(5);
    weightProducts([
      { m: 1, n: 3, k: 0, x: new Float32Array(0), w: new Float32Array(0), y: y0 },
      { m: 0, n: 4, k: 2, x: new Float32Array(0), w: new Float32Array(8), y: y1 },
    ]);
    expect([...y0]).toEqual([0, 0, 0]);
    expect([...y1]).toEqual([5, 5, 5, 5]);
    const y = new Float32Array(2).fill(7);
    expect(() =>
      weightProducts([
        { m: 1, n: 2, k: 2, x: new Float32Array(2), w: new Float32Array(4), y },
        { m: 1, n: 2, k: 3, x: new Float32Array(3), w: new Uint8Array(6), y: new Float32Array(2) },
      ]),
    ).toThrow(/block scales/);
    expect([...y]).toEqual([7, 7]);
  });
});

/** The MLP's three weights stored as resident bf16 (as the model loader places a BF16 checkpoint's). */
function storeBf16(mlp: SwiGLU): void {
  for (const l of [mlp.gateProj, mlp.upProj, mlp.downProj]) {
    const [n, k] = l.weight.value.shape as [number, number];
    const s = cpu.allocResident('bf16', n * k);
    (s.data as Uint16Array).set(encodeBf16(l.weight.value.dataSync() as Float32Array));
    l.weight.value = new Tensor(cpu, s, [n, k], 'bf16');
  }
}

describe('SwiGLU inference on the CPU (gate and up in one job)', () => {
  it.each([1, 2])('%i threads: bitwise equal to the op composition, f32 and resident bf16 weights', (threads) => {
    setGemmThreads(threads);
    gemmConfig.threadMinWork = 0;
    gemmConfig.wakeMinWork = 0; // wake sleeping workers even for tiny products
    // hidden 72: the gate / up outputs are whole NR tiles, written in place into the kept work arrays
    for (const hidden of [70, 72]) {
      const mlp = new SwiGLU(40, hidden, { seed: 3 });
      for (const storage of ['f32', 'bf16'] as const) {
        if (storage === 'bf16') storeBf16(mlp);
        for (const rows of [1, 3, 9, 130]) {
          const x = tensor(Float32Array.from(randomUniform(rows * 40, rows)), { shape: [1, rows, 40] });
          const composed = mlp.forward(x).dataSync(); // gradient recording on: the op composition
          const inference = noGrad(() => mlp.forward(x));
          expect(inference.shape).toEqual([1, rows, 40]);
          expectSameBits(inference.dataSync(), composed, `${storage}, hidden ${hidden}, ${rows} rows`);
        }
      }
    }
  });

  it.each([
    ['f32', 'f32'],
    ['bf16', 'i16'],
  ] as const)('a long prefill in parts of rows: bitwise the whole (%s weights, %s activations)', (storage, acts) => {
    // f32 weights past 512 rows: the whole's products take the f32 GEMM, the parts' the weight GEMM
    setGemmThreads(2);
    gemmConfig.prefillActivations = acts;
    const mlp = new SwiGLU(40, 4096, { seed: 4 });
    if (storage === 'bf16') storeBf16(mlp);
    for (const rows of [300, 600]) {
      expect(swigluParts(rows, 4096), `${rows} rows run in parts`).toBeGreaterThan(1);
      const x = tensor(Float32Array.from(randomUniform(rows * 40, rows)), { shape: [rows, 40] });
      const composed = mlp.forward(x).dataSync();
      expectSameBits(noGrad(() => mlp.forward(x)).dataSync(), composed, `${rows} rows`);
    }
  });

  it('swigluParts: parts of at least 64 rows, gate and up rows within MLP_WORK_BYTES where that allows', () => {
    for (const [m, hidden] of <[number, number][]>[
      [1, 2816],
      [63, 18432],
      [512, 2816],
      [512, 18432],
      [4096, 18432],
      [129, 100000],
    ]) {
      const parts = swigluParts(m, hidden);
      const rows = Math.floor(m / parts); // the smallest part
      if (parts > 1) expect(rows, `${m} x ${hidden}`).toBeGreaterThanOrEqual(64);
      if (8 * Math.ceil(m / parts) * hidden > MLP_WORK_BYTES)
        expect(rows, `${m} x ${hidden}: cut to 64 rows`).toBeLessThan(128);
    }
    expect(swigluParts(512, 2816)).toBe(Math.ceil((8 * 512 * 2816) / MLP_WORK_BYTES));
    expect(swigluParts(100, 2816)).toBe(1);
  });
});

describe('an FP8 Linear (weights set by a loader)', () => {
  it.each([1, 2])(
    '%i threads: forward equals weightProduct into a zeroed array bit for bit, and float64 within 1e-6',
    (threads) => {
      setGemmThreads(threads);
      // n, k ragged against the 128x128 scale blocks; rows across the GEMV and the weight GEMM
      const [n, k] = [200, 300];
      const lin = new Linear(k, n, { seed: 1 });
      const wt = makeWeight('fp8', n, k, 5, false);
      const s = cpu.allocResident('fp8-e4m3', n * k);
      (s.data as Uint8Array).set(wt.w);
      lin.fp8 = { w: new Tensor(cpu, s, [n, k], 'fp8-e4m3'), scales: wt.scales! };
      try {
        for (const rows of [1, 3, 130, 600]) {
          const xs = Float32Array.from(randomUniform(rows * k, rows));
          const fresh = new Float32Array(rows * n);
          weightProduct({ m: rows, n, k, x: xs, w: wt.w, scales: wt.scales, y: fresh });
          // twice: the second output may be a recycled block with stale values, which every row overwrites
          for (let pass = 0; pass < 2; pass++) {
            const y = noGrad(() => lin.forward(tensor(xs, { shape: [1, rows, k] })));
            expect(y.shape).toEqual([1, rows, n]);
            const got = y.dataSync() as Float32Array;
            expectSameBits(got, fresh, `${rows} rows, pass ${pass}`);
            expect(relativeError(got, reference(rows, n, k, xs, wt.exact))).toBeLessThan(1e-6);
            y.dispose();
          }
        }
      } finally {
        cpu.free(s); // through the storage: its finalizer must not release the block a second time
      }
    },
  );
});
