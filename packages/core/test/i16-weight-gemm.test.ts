// The integer weight GEMM (i16-gemm-kernel.ts, i16-pack.ts, i16-weight-gemm.ts) on one thread, its
// module instantiated alone:
// - the packings bitwise against a JS model of the stated quantization (layouts, scales, rounding);
// - the product against a float64 sum of the quantized operands, within the f32 rounding of its flushes
//   ((flushes + 3) · 2^-24 of the sum of |terms|), for ragged m / n / k (k odd, not a multiple of 128),
//   column ranges (a product's tasks) reading one quantized x, bf16 and FP8;
// - against float64 of the unquantized operands within the stated quantization bounds;
// - the worst-case magnitudes (every |a| = A_MAX, |w| at its largest) without i32 overflow;
// - NaN / Inf in x make that row NaN (other rows unchanged), a NaN bf16 weight its column NaN.
import { afterEach, describe, expect, it, vi } from 'vitest';
import { decodeBf16, encodeBf16 } from '../src/index.js';
import { expectSameBits, randomUniform } from '../src/testing.js';
import { gemmConfig } from '../src/cpu/gemm/config.js';
import { dequantizeFp8Weight, stageFp8Scales } from '../src/cpu/gemm/fp8-weight.js';
import {
  allocResident,
  freeResident,
  setGemmThreads,
  weightProduct,
  weightProducts,
  type WeightProductArgs,
} from '../src/cpu/gemm/index.js';
import {
  A_MAX,
  A_ROW_BYTES,
  FLUSH_DEPTHS,
  FP8_Q_MUL,
  i16APanelBytes,
  i16PanelBytes,
  W_BITS,
  W_MAX,
} from '../src/cpu/gemm/i16-gemm-kernel.js';
import { packI16XTask } from '../src/cpu/gemm/i16-pack-x-task.js';
import { genI16WeightGemm, i16PackedXBytes, packI16X, packI16XFields } from '../src/cpu/gemm/i16-weight-gemm.js';
import { DEFAULT_KERNEL, workspaceBytes } from '../src/cpu/gemm/sgemm-kernel.js';
import { ModuleBuilder } from '../src/cpu/gemm/wasm-emitter.js';
import { getEngine } from '../src/cpu/gemm/runtime.js';
import { TABLE, TASK_INTS, TASK_PACK_I16X, TASK_WEIGHT_GEMM, WorkerPool } from '../src/cpu/gemm/worker-pool.js';

type Kind = 'bf16' | 'fp8';
type Fn = (...args: number[]) => void;
const cfg = DEFAULT_KERNEL;
const { mr: MR, nr: NR, kc: KC } = cfg;
const PAGES = 1024;
const memory = new WebAssembly.Memory({ initial: PAGES, maximum: PAGES });
const mb = new ModuleBuilder({ module: 'env', name: 'memory', initialPages: 1, maximumPages: PAGES, shared: false });
genI16WeightGemm(mb, cfg);
const ex = new WebAssembly.Instance(new WebAssembly.Module(mb.emit()), { env: { memory } }).exports as Record<
  string,
  Fn
>;
const fr = Math.fround;
const startJob = WorkerPool.prototype.start;

/** Nearest integer, ties to even (the packings' rounding). */
function roundEven(v: number): number {
  const r = Math.round(v);
  return Math.abs(v % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/** Per 128-depth block of a row: [scale, quantized values] as packAI16 computes them. */
function quantizeRow(x: Float32Array, at: number, len: number): [number, Int32Array] {
  let mx = 0;
  for (let p = 0; p < len; p++) mx = Math.max(mx, Math.abs(x[at + p]!));
  const finite = Number.isFinite(mx);
  const scale = finite ? fr(mx / A_MAX) : Number.NaN;
  const inv = mx > 0 ? fr(A_MAX / mx) : 0;
  const q = new Int32Array(len);
  if (finite) for (let p = 0; p < len; p++) q[p] = roundEven(fr(x[at + p]! * inv));
  return [scale, q];
}

/** Per 128-depth block of a weight row (B's column): [column scale, quantized values] as packWI16 computes them. */
function quantizeWeightRow(
  kind: Kind,
  exact: Float32Array,
  bits: Uint16Array | null,
  at: number,
  len: number,
  s: number,
): [number, Int32Array] {
  const q = new Int32Array(len);
  if (kind === 'fp8') {
    // exact = the E4M3 values (scale 1); column scale s / FP8_Q_MUL
    for (let p = 0; p < len; p++) q[p] = roundEven(exact[at + p]! * FP8_Q_MUL);
    return [fr(fr(s * 2 ** 120) * (2 ** -120 / FP8_Q_MUL)), q];
  }
  let maxBits = 0;
  for (let p = 0; p < len; p++) maxBits = Math.max(maxBits, bits![at + p]! & 0x7fff);
  const eb = Math.max(maxBits >> 7, 14);
  // grid 2^(E − (W_BITS − 1)), E = eb − 127
  for (let p = 0; p < len; p++) q[p] = roundEven(exact[at + p]! * 2 ** (W_BITS - 1 + 127 - eb));
  return [maxBits >> 7 === 255 ? Number.NaN : 2 ** (eb - 127 - (W_BITS - 1)), q];
}

interface Problem {
  kind: Kind;
  m: number;
  n: number;
  k: number;
  x: Float32Array;
  /** stored weight: bf16 bits or E4M3 bytes */
  w: Uint16Array | Uint8Array;
  /** FP8 block scales [ceil(n/128), ceil(k/128)] */
  scales: Float32Array;
  /** the weight's f32 values (FP8: code values times the scale) */
  wf: Float32Array;
}

function makeProblem(kind: Kind, m: number, n: number, k: number, seed: number): Problem {
  const x = Float32Array.from(randomUniform(m * k, seed, -3, 3));
  // a few rows with a much larger block max, some exact zeros
  for (let i = 0; i < m; i += 3) x[i * k] = 40;
  for (let p = 0; p < Math.min(k, 5); p++) x[p] = 0;
  const scales = Float32Array.from(randomUniform(Math.ceil(n / 128) * Math.ceil(k / 128), seed + 1, 0.001, 0.01));
  if (kind === 'bf16') {
    const w = encodeBf16(Float32Array.from(randomUniform(n * k, seed + 2, -0.2, 0.2)));
    for (let j = 0; j < n; j += 4) w[j * k] = encodeBf16([1e-6])[0]!; // tiny values round on the grid
    return { kind, m, n, k, x, w, scales, wf: decodeBf16(w) };
  }
  const w = Uint8Array.from(randomUniform(n * k, seed + 2, 0, 254), (v) => {
    const b = Math.floor(v);
    return (b & 0x7f) === 0x7f ? b - 1 : b;
  });
  return { kind, m, n, k, x, w, scales, wf: dequantizeFp8Weight(w, scales, n, k) };
}

/**
 * Runs gemmWI16_<kind> on the problem (x quantized by packI16X first); returns y [m, n]. `cuts`: the
 * columns split at these NR multiples, one driver call per range (as a product's tasks run).
 */
function run(pr: Problem, cuts: number[] = []): Float32Array {
  const { kind, m, n, k } = pr;
  const eb = kind === 'bf16' ? 2 : 1;
  const nPad = Math.ceil(n / NR) * NR;
  const ws = 1 << 16;
  const aqAt = ws + workspaceBytes(cfg);
  const xAt = aqAt + i16PackedXBytes(cfg, m, k);
  const wAt = xAt + m * k * 4;
  const sAt = (wAt + n * k * eb + 15) & ~15;
  const sCols = Math.ceil(k / 128);
  const cAt = sAt + Math.ceil(n / 128) * sCols * 4 + 64;
  const end = cAt + Math.ceil(m / MR) * MR * nPad * 4;
  if (end > memory.buffer.byteLength) throw new Error('test problem too large');
  const f32 = new Float32Array(memory.buffer);
  f32.set(pr.x, xAt / 4);
  new Uint8Array(memory.buffer).set(new Uint8Array(pr.w.buffer, pr.w.byteOffset, pr.w.byteLength), wAt);
  stageFp8Scales(pr.scales, pr.scales.length, f32, sAt / 4);
  f32.fill(Number.NaN, cAt / 4, end / 4);
  packI16X(ex.packAI16!, cfg, xAt, k * 4, m, k, aqAt);
  const ends = [0, ...cuts, n];
  for (let i = 0; i + 1 < ends.length; i++)
    ex[`gemmWI16_${kind}`]!(m, ends[i]!, ends[i + 1]!, k, aqAt, wAt, k * eb, cAt, nPad * 4, ws, sAt, sCols * 4);
  const y = new Float32Array(m * n);
  for (let i = 0; i < m; i++) y.set(f32.subarray(cAt / 4 + i * nPad, cAt / 4 + i * nPad + n), i * n);
  return y;
}

/** The float64 sum of the quantized operands, and the sum of |terms| per flush, for each y element. */
function quantizedReference(pr: Problem): { y: Float64Array; bound: Float64Array } {
  const { kind, m, n, k, x, w, wf } = pr;
  const blocks = Math.ceil(k / 128);
  const exactCodes =
    kind === 'fp8' ? dequantizeFp8Weight(w as Uint8Array, new Float32Array(pr.scales.length).fill(1), n, k) : wf;
  const qa = Array.from({ length: m }, (_, i) =>
    Array.from({ length: blocks }, (_, b) => quantizeRow(x, i * k + b * 128, Math.min(128, k - b * 128))),
  );
  const qw = Array.from({ length: n }, (_, j) =>
    Array.from({ length: blocks }, (_, b) =>
      quantizeWeightRow(
        kind,
        exactCodes,
        kind === 'bf16' ? (w as Uint16Array) : null,
        j * k + b * 128,
        Math.min(128, k - b * 128),
        pr.scales[(j >> 7) * blocks + b]!,
      ),
    ),
  );
  const y = new Float64Array(m * n);
  const bound = new Float64Array(m * n);
  const flushes = Math.ceil(k / FLUSH_DEPTHS) + Math.ceil(k / KC);
  for (let i = 0; i < m; i++)
    for (let j = 0; j < n; j++) {
      let sum = 0;
      let abs = 0;
      for (let b = 0; b < blocks; b++) {
        const [sa, a] = qa[i]![b]!;
        const [sw, q] = qw[j]![b]!;
        const ss = fr(sa * sw);
        for (let c0 = 0; c0 < a.length; c0 += FLUSH_DEPTHS) {
          let dot = 0;
          for (let p = c0; p < Math.min(a.length, c0 + FLUSH_DEPTHS); p++) {
            if (!(Math.abs(a[p]!) <= A_MAX && Math.abs(q[p]!) <= W_MAX)) throw new Error(`|a| or |w| past its bound`);
            dot += a[p]! * q[p]!;
          }
          if (!(Math.abs(dot) < 2 ** 31)) throw new Error(`an i32 sum would overflow: ${dot}`);
          sum += ss * dot;
          abs += Math.abs(ss * dot);
        }
      }
      y[i * n + j] = sum;
      bound[i * n + j] = (flushes + 3) * 2 ** -24 * abs;
    }
  return { y, bound };
}

function expectWithin(y: Float32Array, ref: Float64Array, bound: Float64Array): void {
  let worst = 0;
  for (let i = 0; i < y.length; i++) {
    const err = Math.abs(y[i]! - ref[i]!);
    if (!(err <= bound[i]!)) throw new Error(`y[${i}] = ${y[i]} vs ${ref[i]} (error ${err}, bound ${bound[i]})`);
    worst = Math.max(worst, err / (bound[i]! || 1));
  }
  expect(worst).toBeLessThanOrEqual(1);
}

describe('i16 weight GEMM', () => {
  it('packAI16: the stated quantization and layout, bit for bit (ragged rows, odd k)', () => {
    for (const [m, k] of [
      [5, 300],
      [4, 128],
      [1, 7],
      [3, 257],
    ] as const) {
      const x = Float32Array.from(randomUniform(m * k, m + k, -2, 2));
      x[0] = Number.NaN;
      if (m > 1) x[k + 1] = Number.POSITIVE_INFINITY;
      for (let p = 0; p < Math.min(k, 128); p++) if (m > 2) x[2 * k + p] = 0; // a zero block
      const src = 1 << 16;
      const dst = src + m * k * 4 + 64;
      new Float32Array(memory.buffer).set(x, src / 4);
      const bytes = Math.ceil(m / MR) * i16APanelBytes(MR, k);
      new Uint8Array(memory.buffer).fill(0xab, dst, dst + bytes);
      ex.packAI16!(src, k * 4, m, k, dst);
      const want = new DataView(new ArrayBuffer(bytes));
      const blocks = Math.ceil(k / 128);
      for (let r0 = 0; r0 < m; r0 += MR) {
        let at = (r0 / MR) * i16APanelBytes(MR, k);
        for (let b = 0; b < blocks; b++) {
          const len = Math.min(128, k - b * 128);
          for (let r = 0; r < MR; r++) {
            const [scale, q] = r0 + r < m ? quantizeRow(x, (r0 + r) * k + b * 128, len) : [0, new Int32Array(len)];
            want.setFloat32(at + 4 * r, scale, true);
            // NaN rows: the packed integers are not specified (the NaN scale decides the row), copy them
            // row r's i16s in depth order, A_ROW_BYTES apart; past the (even) length not written
            for (let p = 0; p < A_ROW_BYTES / 2; p++) {
              const o = at + MR * 4 + r * A_ROW_BYTES + 2 * p;
              want.setInt16(o, p < len ? q[p]! : p === len && (len & 1) === 1 ? 0 : -21589, true); // 0xabab: untouched
              if (Number.isNaN(scale) && p < len)
                want.setInt16(o, new DataView(memory.buffer).getInt16(dst + o, true), true);
            }
          }
          at += MR * (4 + A_ROW_BYTES);
        }
      }
      const got = new Uint8Array(memory.buffer, dst, bytes);
      const wantBytes = new Uint8Array(want.buffer);
      // NaN scales compare as bytes too (one NaN pattern: 0x7fc00000)
      expectSameBits(got, wantBytes, 'A~ bytes');
    }
  });

  it("x quantized by row-range tasks (a job's first tasks) is packI16X's A~, byte for byte", () => {
    // ragged rows, depths past KC with a short last block; ranges cut at MR multiples, as the engine cuts
    for (const [m, k, cuts] of [
      [37, 2 * KC + 77, [MR, 3 * MR, 8 * MR]],
      [MR * 4, KC, [2 * MR]],
      [5, 300, [MR]],
      [130, 1030, [32, 64, 96, 128]],
    ] as const) {
      const x = Float32Array.from(randomUniform(m * k, m * 3 + k, -3, 3));
      const rsX = (k + 5) * 4; // a pitched x
      const src = 1 << 16;
      const bytes = i16PackedXBytes(cfg, m, k);
      const want = src + m * (rsX + 64);
      const got = want + bytes + 64;
      const f32 = new Float32Array(memory.buffer);
      for (let r = 0; r < m; r++) f32.set(x.subarray(r * k, (r + 1) * k), (src + r * rsX) / 4);
      new Uint8Array(memory.buffer).fill(0xab, want, got + bytes);
      packI16X(ex.packAI16!, cfg, src, rsX, m, k, want);
      const ends = [0, ...cuts.filter((c) => c < m), m];
      for (let i = 0; i + 1 < ends.length; i++)
        packI16XTask(ex.packAI16!, packI16XFields(cfg, src, rsX, m, k, got, ends[i]!, ends[i + 1]!));
      expectSameBits(new Uint8Array(memory.buffer, got, bytes), new Uint8Array(memory.buffer, want, bytes), 'A~ bytes');
    }
  });

  it.each([['bf16'], ['fp8']] as const)('packWI16_%s: the stated quantization and layout, bit for bit', (kind) => {
    for (const [n, k] of [
      [8, 256],
      [13, 300],
      [3, 5],
    ] as const) {
      const pr = makeProblem(kind, 1, n, k, 40 + n);
      if (kind === 'bf16') pr.w[k + 3] = 0x7fc0; // a NaN: column 1's first block scale is NaN
      const eb = kind === 'bf16' ? 2 : 1;
      const src = 1 << 16;
      const sAt = (src + n * k * eb + 64) & ~15;
      const dst = sAt + pr.scales.length * 4 + 64;
      new Uint8Array(memory.buffer).set(new Uint8Array(pr.w.buffer, pr.w.byteOffset, pr.w.byteLength), src);
      stageFp8Scales(pr.scales, pr.scales.length, new Float32Array(memory.buffer), sAt / 4);
      const bytes = Math.ceil(n / NR) * i16PanelBytes(NR, k);
      new Uint8Array(memory.buffer).fill(0xab, dst, dst + bytes);
      const blocks = Math.ceil(k / 128);
      ex[`packWI16_${kind}`]!(src, k * eb, n, k, dst, sAt, blocks * 4, 0, 0);
      const codes =
        kind === 'fp8'
          ? dequantizeFp8Weight(pr.w as Uint8Array, new Float32Array(pr.scales.length).fill(1), n, k)
          : pr.wf;
      const want = new DataView(new ArrayBuffer(bytes));
      for (let c0 = 0; c0 < n; c0 += NR) {
        let at = (c0 / NR) * i16PanelBytes(NR, k);
        for (let b = 0; b < blocks; b++) {
          const len = Math.min(128, k - b * 128);
          for (let c = 0; c < NR; c++) {
            const j = c0 + c;
            const [scale, q] =
              j < n
                ? quantizeWeightRow(
                    kind,
                    codes,
                    kind === 'bf16' ? (pr.w as Uint16Array) : null,
                    j * k + b * 128,
                    len,
                    pr.scales[(j >> 7) * blocks + b]!,
                  )
                : [0, new Int32Array(len)];
            want.setFloat32(at + 4 * c, scale, true);
            for (let p = 0; p < len + (len & 1); p++) {
              const o = at + NR * 4 + (p >> 1) * NR * 4 + c * 4 + (p & 1) * 2;
              want.setInt16(o, p < len ? q[p]! : 0, true);
              if (Number.isNaN(scale)) want.setInt16(o, new DataView(memory.buffer).getInt16(dst + o, true), true);
            }
          }
          at += NR * 4 + Math.ceil(len / 2) * NR * 4;
        }
      }
      expectSameBits(new Uint8Array(memory.buffer, dst, bytes), new Uint8Array(want.buffer), 'A~ bytes');
    }
  });

  describe.each([['bf16'], ['fp8']] as const)('%s weights', (kind) => {
    it.each([
      [1, 1, 1],
      [3, 7, 2],
      [5, 8, 7],
      [13, 20, 130],
      [4, 9, 255],
      [17, 33, 300],
      [64, 16, 513],
      [9, 130, 1024],
    ])('m %i, n %i, k %i: the float64 sum of the quantized operands within its flushes’ rounding', (m, n, k) => {
      const pr = makeProblem(kind, m, n, k, m * 31 + n * 7 + k);
      const { y: ref, bound } = quantizedReference(pr);
      expectWithin(run(pr), ref, bound);
      // the columns in ranges of NR and 2 NR (tasks reading the one quantized x): the same bits
      const cuts = [NR, 2 * NR, 4 * NR].filter((c) => c < n);
      expectSameBits(run(pr, cuts), run(pr), 'run(pr, cuts)');
    });

    it('against float64 of the unquantized operands, within the stated quantization bounds', () => {
      const [m, n, k] = [12, 24, 300];
      const pr = makeProblem(kind, m, n, k, 77);
      const y = run(pr);
      const blocks = Math.ceil(k / 128);
      for (let i = 0; i < m; i++)
        for (let j = 0; j < n; j++) {
          let exact = 0;
          let bound = 0;
          let abs = 0;
          for (let b = 0; b < blocks; b++) {
            const p0 = b * 128;
            const p1 = Math.min(k, p0 + 128);
            let xMax = 0;
            let wMax = 0;
            for (let p = p0; p < p1; p++) {
              xMax = Math.max(xMax, Math.abs(pr.x[i * k + p]!));
              wMax = Math.max(wMax, Math.abs(pr.wf[j * k + p]!));
            }
            // |x − a·sa| ≤ max|x| / (2·A_MAX) (plus the f32 rounding of x/scale); bf16: |w − q·sw| ≤
            // max|w|·2^-W_BITS; FP8: ≤ s / (2·FP8_Q_MUL)
            const ea = (xMax / (2 * A_MAX)) * (1 + 2 ** -20);
            const ew = kind === 'bf16' ? wMax * 2 ** -W_BITS : pr.scales[(j >> 7) * blocks + b]! / (2 * FP8_Q_MUL);
            for (let p = p0; p < p1; p++) {
              const xv = pr.x[i * k + p]!;
              const wv = pr.wf[j * k + p]!;
              exact += xv * wv;
              bound += ea * Math.abs(wv) + Math.abs(xv) * ew + ea * ew;
              abs += Math.abs(xv * wv);
            }
          }
          const err = Math.abs(y[i * n + j]! - exact);
          expect(err).toBeLessThanOrEqual(bound + (abs + bound) * 2 ** -18);
        }
    });

    it('worst-case magnitudes (|a| = A_MAX and the largest |w| at every depth) do not overflow', () => {
      const [m, n, k] = [4, 8, 256];
      const pr = makeProblem(kind, m, n, k, 5);
      for (let i = 0; i < m; i++) for (let p = 0; p < k; p++) pr.x[i * k + p] = i % 2 === 0 ? 1 : -1;
      if (kind === 'bf16') {
        pr.w.fill(encodeBf16([-1.9921875])[0]!); // -4080 on its grid
        pr.wf = decodeBf16(pr.w as Uint16Array);
      } else {
        pr.w.fill(0xfe); // -448: -3584
        pr.wf = dequantizeFp8Weight(pr.w as Uint8Array, pr.scales, n, k);
      }
      const { y: ref, bound } = quantizedReference(pr);
      const y = run(pr);
      expectWithin(y, ref, bound);
      // and the sign is right: row 0 (x = 1) negative, row 1 (x = -1) positive
      expect(y[0]!).toBeLessThan(0);
      expect(y[n]!).toBeGreaterThan(0);
    });

    it('NaN or Inf in x: that row of y is NaN, the other rows as without it', () => {
      const [m, n, k] = [6, 10, 200];
      const pr = makeProblem(kind, m, n, k, 9);
      const clean = run(pr);
      pr.x[1 * k + 150] = Number.NaN;
      pr.x[4 * k + 3] = Number.NEGATIVE_INFINITY;
      const y = run(pr);
      for (let i = 0; i < m; i++)
        for (let j = 0; j < n; j++)
          if (i === 1 || i === 4) expect(y[i * n + j]).toBeNaN();
          else expect(y[i * n + j]).toBe(clean[i * n + j]);
    });
  });

  it('a NaN bf16 weight makes its column NaN', () => {
    const [m, n, k] = [5, 9, 140];
    const pr = makeProblem('bf16', m, n, k, 12);
    pr.w[3 * k + 135] = 0x7fc0;
    const y = run(pr);
    for (let i = 0; i < m; i++)
      for (let j = 0; j < n; j++)
        if (j === 3) expect(y[i * n + j]).toBeNaN();
        else expect(Number.isFinite(y[i * n + j])).toBe(true);
  });
});

describe.each([
  ['1 thread', 1],
  ['2 threads', 2],
])('prefillActivations i16 through weightProduct (%s)', (_, threads) => {
  const saved = { ...gemmConfig };
  afterEach(() => Object.assign(gemmConfig, saved));

  it.each([['bf16'], ['fp8']] as const)(
    '%s: the kernel’s bits (host and resident weights, products of a job, two sharing x); f32 below i16MinRows and when off',
    (kind) => {
      setGemmThreads(threads);
      gemmConfig.threadMinWork = 0;
      gemmConfig.prefillActivations = 'i16';
      const specs = [
        { m: 40, n: 100, k: 300, resident: true },
        { m: 17, n: 64, k: 130, resident: false },
        { m: 300, n: 24, k: 1024, resident: true },
        // x shared with the first (an expert's gate and up): quantized once for both
        { m: 40, n: 72, k: 300, resident: true },
        // the first's shape, an x of its own: not shared
        { m: 40, n: 16, k: 300, resident: false },
      ];
      const probs = specs.map((s, i) => ({ s, pr: makeProblem(kind, s.m, s.n, s.k, 90 + i) }));
      probs[3]!.pr.x = probs[0]!.pr.x;
      const weights = probs.map(({ s, pr }) => {
        if (!s.resident) return { w: pr.w, free: () => {} };
        const res = allocResident(kind === 'fp8' ? 'fp8-e4m3' : 'bf16', s.n * s.k)!;
        res.set(pr.w);
        return { w: res as Uint16Array | Uint8Array, free: () => freeResident(res) };
      });
      const args = (j: number, y: Float32Array): WeightProductArgs => {
        const { pr } = probs[j]!;
        return {
          m: pr.m,
          n: pr.n,
          k: pr.k,
          x: pr.x,
          w: weights[j]!.w,
          y,
          ...(kind === 'fp8' && { scales: pr.scales }),
        };
      };
      const outs = probs.map(({ pr }) => new Float32Array(pr.m * pr.n).fill(Number.NaN));
      weightProducts(probs.map((_, j) => args(j, outs[j]!)));
      probs.forEach(({ pr }, j) => {
        expectSameBits(outs[j]!, run(pr), 'outs[j]');
        const one = new Float32Array(pr.m * pr.n);
        weightProduct(args(j, one));
        expectSameBits(one, run(pr), 'one');
      });
      // below i16MinRows, and with the option off: the f32 route (its own bits, not the i16 ones)
      const f32Route = (j: number): Float32Array => {
        gemmConfig.prefillActivations = 'f32';
        const y = new Float32Array(probs[j]!.pr.m * probs[j]!.pr.n);
        weightProduct(args(j, y));
        gemmConfig.prefillActivations = 'i16';
        return y;
      };
      // a depth whose A~ (past 600 KB a row) no thread's workspace holds: still the i16 route, x's A~
      // in the job's scratch — the kernel's bits, not the f32 route's
      const deep = makeProblem(kind, 16, 8, 300_000, 5);
      const deepArgs = (y: Float32Array): WeightProductArgs => ({
        m: deep.m,
        n: deep.n,
        k: deep.k,
        x: deep.x,
        w: deep.w,
        y,
        ...(kind === 'fp8' && { scales: deep.scales }),
      });
      const [yi, yf] = [new Float32Array(128), new Float32Array(128)];
      weightProduct(deepArgs(yi));
      gemmConfig.prefillActivations = 'f32';
      weightProduct(deepArgs(yf));
      gemmConfig.prefillActivations = 'i16';
      expectSameBits(yi, run(deep), 'yi');
      expect(Array.from(yi)).not.toEqual(Array.from(yf));
      gemmConfig.i16MinRows = 41;
      const below = new Float32Array(40 * 100);
      weightProduct(args(0, below));
      expectSameBits(below, f32Route(0), 'below');
      expect(Array.from(below)).not.toEqual(Array.from(outs[0]!));
      for (const w of weights) w.free();
    },
  );

  it("x is quantized by the job's first tasks (row ranges on 2 threads), the products gated on them", () => {
    setGemmThreads(threads);
    gemmConfig.threadMinWork = 0;
    gemmConfig.prefillActivations = 'i16';
    const big = makeProblem('bf16', 300, 64, 1024, 41);
    const small = makeProblem('bf16', 40, 32, 300, 42);
    const starts: number[][] = [];
    const spy = vi.spyOn(WorkerPool.prototype, 'start').mockImplementation(function (this: WorkerPool, ...a) {
      starts.push([a[1], a[2], a[3]]);
      return startJob.apply(this, a);
    });
    const y = [new Float32Array(300 * 64), new Float32Array(300 * 64), new Float32Array(40 * 32)];
    try {
      // big's x read by two products: quantized once; small's x by one
      const ctl = getEngine()!.taskTable();
      ctl.fill(0, TABLE, TABLE + 64 * TASK_INTS);
      weightProducts([
        { m: 300, n: 64, k: 1024, x: big.x, w: big.w as Uint16Array, y: y[0]! },
        { m: 300, n: 64, k: 1024, x: big.x, w: big.w as Uint16Array, y: y[1]! },
        { m: 40, n: 32, k: 300, x: small.x, w: small.w as Uint16Array, y: y[2]! },
      ]);
    } finally {
      spy.mockRestore();
    }
    const ctl = getEngine()!.taskTable();
    const kinds: number[] = [];
    for (let i = 0; i < 64 && ctl[TABLE + i * TASK_INTS] !== 0; i++) kinds.push(ctl[TABLE + i * TASK_INTS]!);
    const packs = kinds.filter((k) => k === TASK_PACK_I16X).length;
    // big's 75 MR panels in 8 ranges (its share of 2 x 4 tasks), small's in one; on 1 thread one an x
    expect(packs).toBe(threads === 2 ? 9 : 2);
    expect(kinds.slice(0, packs).every((k) => k === TASK_PACK_I16X)).toBe(true);
    expect(kinds.slice(packs).every((k) => k === TASK_WEIGHT_GEMM)).toBe(true);
    if (threads === 2) expect(starts).toEqual([[kinds.length, packs, packs]]);
    expectSameBits(y[0]!, run(big), 'y[0]');
    expectSameBits(y[1]!, run(big), 'y[1]');
    expectSameBits(y[2]!, run(small), 'y[2]');
  });

  it("the products' tasks: cut finer than the f32 route's, the largest first, the kernel's bits", () => {
    setGemmThreads(threads);
    gemmConfig.threadMinWork = 0;
    gemmConfig.prefillActivations = 'i16';
    // two x's of different sizes (expert rows), one read by two products (gate and up)
    const big = makeProblem('bf16', 300, 512, 1024, 43);
    const small = makeProblem('bf16', 40, 256, 300, 44);
    const y = [new Float32Array(300 * 512), new Float32Array(300 * 512), new Float32Array(40 * 256)];
    const ctl = getEngine()!.taskTable();
    ctl.fill(0, TABLE, TABLE + 128 * TASK_INTS);
    weightProducts([
      { m: 40, n: 256, k: 300, x: small.x, w: small.w as Uint16Array, y: y[2]! },
      { m: 300, n: 512, k: 1024, x: big.x, w: big.w as Uint16Array, y: y[0]! },
      { m: 300, n: 512, k: 1024, x: big.x, w: big.w as Uint16Array, y: y[1]! },
    ]);
    const entries: Int32Array[] = [];
    for (let i = 0; i < 128 && ctl[TABLE + i * TASK_INTS] !== 0; i++)
      entries.push(ctl.slice(TABLE + i * TASK_INTS, TABLE + (i + 1) * TASK_INTS));
    const packs = entries.filter((f) => f[0] === TASK_PACK_I16X).length;
    const products = entries.slice(packs);
    expect(products.every((f) => f[0] === TASK_WEIGHT_GEMM)).toBe(true);
    // fields: kind code m n0 n1 k aq ... c (word 10); a product is its C
    const work = (f: Int32Array) => f[2]! * (f[4]! - f[3]!) * f[5]!;
    const byC = new Map<number, [number, number][]>();
    for (const f of products) byC.set(f[10]!, [...(byC.get(f[10]!) ?? []), [f[3]!, f[4]!]]);
    expect(byC.size).toBe(3);
    // each product's column ranges tile [0, n) once
    for (const [c, ranges] of byC) {
      const n = products.find((f) => f[10] === c)![2] === 300 ? 512 : 256;
      const sorted = [...ranges].sort((a, b) => a[0] - b[0]);
      expect(sorted[0]![0]).toBe(0);
      for (let i = 1; i < sorted.length; i++) expect(sorted[i]![0]).toBe(sorted[i - 1]![1]);
      expect(sorted.at(-1)![1]).toBe(n);
    }
    if (threads === 2) {
      // 64 NR tiles a big product: the f32 route's cap is 2 tasks; the i16 route's ~16 (its share of 2 x 16)
      const bigCuts = products.filter((f) => f[2] === 300).length;
      expect(bigCuts).toBeGreaterThanOrEqual(2 * 8);
      // the largest first: the job ends on its smallest tasks (the small x's product, listed first)
      for (let i = 1; i < products.length; i++) expect(work(products[i]!)).toBeLessThanOrEqual(work(products[i - 1]!));
      expect(products.at(-1)![2]).toBe(40);
    } else expect(products.map((f) => f[2])).toEqual([40, 300, 300]); // one thread: one a product, in order
    expectSameBits(y[0]!, run(big), 'y[0]');
    expectSameBits(y[1]!, run(big), 'y[1]');
    expectSameBits(y[2]!, run(small), 'y[2]');
  });

  it('roundPrefillActivations (the accuracy-study hook) rounds a staged copy of x for the products the i16 route would take', () => {
    setGemmThreads(threads);
    gemmConfig.threadMinWork = 0;
    const [m, n, k] = [20, 16, 200];
    const pr = makeProblem('bf16', m, n, k, 31);
    // x resident in the engine's memory (otherwise read in place): the hook must see a copy
    const x = allocResident('f32', m * k) as Float32Array;
    x.set(pr.x);
    const product = (rows: number, w: Uint16Array | Float32Array = pr.w as Uint16Array): Float32Array => {
      const y = new Float32Array(rows * n);
      weightProduct({ m: rows, n, k, x, w, y });
      return y;
    };
    const plain = product(m);
    const halved: [number, number][] = [];
    gemmConfig.roundPrefillActivations = (rows, rm, rk) => {
      halved.push([rm, rk]);
      for (let i = 0; i < rows.length; i++) rows[i] = rows[i]! / 2;
    };
    // halving x halves y exactly (a power of two): the hook ran on this product, once
    expectSameBits(
      product(m),
      Array.from(plain, (v) => v / 2),
      'product(m)',
    );
    expect(halved).toEqual([[m, k]]);
    expectSameBits(x, pr.x, 'x');
    // not below i16MinRows, not on f32 weights, not under prefillActivations 'i16'
    const few = gemmConfig.i16MinRows - 1;
    gemmConfig.roundPrefillActivations = null;
    const fewPlain = product(few);
    const f32Plain = product(m, pr.wf);
    gemmConfig.roundPrefillActivations = (rows) => rows.fill(0);
    expectSameBits(product(few), fewPlain, 'product(few)');
    expectSameBits(product(m, pr.wf), f32Plain, 'product(m, pr.wf)');
    gemmConfig.prefillActivations = 'i16';
    expect(product(m).some((v) => v !== 0)).toBe(true);
    freeResident(x);
  });
});
