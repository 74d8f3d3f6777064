// A GEMV job's bookkeeping (wasm-engine.ts's gemvMany, gemv-plans.ts): the engine's plans reused from
// job to job without stale state, a y in the engine's memory written in place at its pitch (bitwise the
// staged route), a y overlapping a weight the job reads in place staged instead, FP8 scales read in place.
import { afterAll, afterEach, describe, expect, it, vi } from 'vitest';
import { decodeBf16, encodeBf16 } from '../src/index.js';
import { randomUniform } from '../src/testing.js';
import { linearReference64 as reference } from './helpers.js';
import { gemmConfig } from '../src/cpu/gemm/config.js';
import { dequantizeFp8Weight } from '../src/cpu/gemm/fp8-weight.js';
import { GemvRecord, NO_GEMV } from '../src/cpu/gemm/gemv-plans.js';
import {
  allocResident,
  freeResident,
  setGemmThreads,
  sgemm,
  weightProduct,
  type WeightProductArgs,
  weightProducts,
} from '../src/cpu/gemm/index.js';
import { engineOwning } from '../src/cpu/gemm/runtime.js';
import { WasmGemm } from '../src/cpu/gemm/wasm-engine.js';

const saved = { ...gemmConfig };
afterEach(() => Object.assign(gemmConfig, saved));
afterAll(() => Object.assign(gemmConfig, saved));

type Kind = 'f32' | 'bf16' | 'fp8';
const resident: Float32Array[] = [];
afterEach(() => {
  for (const a of resident.splice(0)) freeResident(a);
});

/** A resident copy of `a` (freed after the test). */
function residentCopy<T extends Float32Array | Uint16Array | Uint8Array>(a: T, dtype: 'f32' | 'bf16' | 'fp8-e4m3'): T {
  const r = allocResident(dtype, a.length)! as T;
  r.set(a);
  resident.push(r as unknown as Float32Array);
  return r;
}

/** A resident weight W [n, k] of `kind` (FP8 with resident block scales when `residentScales`) and its exact values. */
function weight(kind: Kind, n: number, k: number, seed: number, residentScales = false) {
  const wf = Float32Array.from(randomUniform(n * k, seed));
  if (kind === 'f32') return { w: residentCopy(wf, 'f32'), exact: wf, scales: undefined };
  if (kind === 'bf16') {
    const bits = encodeBf16(wf);
    return { w: residentCopy(bits, 'bf16'), exact: decodeBf16(bits), scales: undefined };
  }
  const bytes = Uint8Array.from(randomUniform(n * k, seed, 0, 254), (v) => {
    const b = Math.floor(v);
    return (b & 0x7f) === 0x7f ? b - 1 : b; // no NaN codes
  });
  const hostScales = Float32Array.from(randomUniform(Math.ceil(n / 128) * Math.ceil(k / 128), seed + 1, 0.01, 0.1));
  const scales = residentScales ? residentCopy(hostScales, 'f32') : hostScales;
  return { w: residentCopy(bytes, 'fp8-e4m3'), exact: dequantizeFp8Weight(bytes, hostScales, n, k), scales };
}

/** y of [m, n] at pitch ldy in the engine's memory, every element NaN (so untouched ones show). */
function residentY(m: number, n: number, ldy: number): Float32Array {
  const y = residentCopy(new Float32Array((m - 1) * ldy + n).fill(Number.NaN), 'f32');
  return y;
}

describe.each([
  ['1 thread', 1],
  ['2 threads', 2],
])('GEMV jobs (%s)', (_, threads) => {
  it('y in the engine memory is written in place at its pitch: bitwise a host y, the gaps untouched; resident FP8 scales read in place', () => {
    setGemmThreads(threads);
    gemmConfig.threadMinWork = 0;
    gemmConfig.wakeMinWork = 0;
    const views = vi.spyOn(Float32Array.prototype, 'subarray');
    const copies = vi.spyOn(Float32Array.prototype, 'set');
    let seed = 1;
    for (const kind of ['f32', 'bf16', 'fp8'] as const)
      for (const [m, n, k, ldy] of [
        [1, 37, 300, 37],
        [3, 130, 257, 141],
        [4, 8, 1000, 9],
      ] as const) {
        const x = Float32Array.from(randomUniform(m * k, seed++));
        const W = weight(kind, n, k, seed++, true);
        const host = new Float32Array((m - 1) * ldy + n).fill(Number.NaN);
        weightProduct({ m, n, k, x, w: W.w, scales: W.scales, y: host, ldy });
        const y = residentY(m, n, ldy);
        views.mockClear();
        copies.mockClear();
        weightProduct({ m, n, k, x, w: W.w, scales: W.scales, y, ldy });
        // in place: no view of the engine's memory taken to copy a staged y out, the scales not copied in
        expect(
          views.mock.contexts.filter((a) => (a as Float32Array).buffer === y.buffer),
          `${kind} ${m}x${n}x${k}`,
        ).toEqual([]);
        expect(copies.mock.calls.filter(([a]) => W.scales && a === W.scales)).toEqual([]);
        expect(y, `${kind} ${m}x${n}x${k} ldy ${ldy}`).toEqual(host);
        const want = reference(m, n, k, x, W.exact);
        for (let i = 0; i < m; i++)
          for (let j = 0; j < ldy && i * ldy + j < y.length; j++) {
            if (j >= n) expect(y[i * ldy + j], 'between rows').toBeNaN();
            else
              expect(Math.abs(y[i * ldy + j]! - want[i * n + j]!)).toBeLessThan(
                1e-4 * (1 + Math.abs(want[i * n + j]!)),
              );
          }
      }
    views.mockRestore();
    copies.mockRestore();
  });

  it('a y overlapping a weight the job reads in place is staged: the product reads the weight as it was', () => {
    setGemmThreads(threads);
    gemmConfig.threadMinWork = 0;
    gemmConfig.wakeMinWork = 0;
    const [m, n, k] = [1, 64, 96];
    const x = Float32Array.from(randomUniform(m * k, 5));
    const W = weight('f32', n, k, 6);
    const want = new Float32Array(n);
    weightProduct({ m, n, k, x, w: Float32Array.from(W.exact), y: want });
    // y over the weight's last row: written in place, the later rows' outputs would read their own writes
    const w = W.w as Float32Array;
    const y = w.subarray((n - 1) * k, (n - 1) * k + n);
    weightProduct({ m, n, k, x, w, y });
    expect(y).toEqual(want);
  });

  it("reuses the engine's plans from job to job, holds no product after a job, and leaves no stale state", () => {
    setGemmThreads(threads);
    gemmConfig.threadMinWork = 0;
    gemmConfig.wakeMinWork = 0;
    const k = 300;
    const x = Float32Array.from(randomUniform(2 * k, 11));
    const products = (kinds: readonly Kind[], m: number, seed: number): WeightProductArgs[] =>
      kinds.map((kind, i) => {
        const W = weight(kind, 40 + 17 * i, k, seed + i);
        return { m, n: 40 + 17 * i, k, x, w: W.w, scales: W.scales, y: new Float32Array(m * (40 + 17 * i)) };
      });
    // one weightProduct call per product: the bits each job must give
    const alone = (list: WeightProductArgs[]): Float32Array[] =>
      list.map((p) => {
        const y = new Float32Array(p.y.length);
        weightProduct({ ...p, y });
        return y;
      });
    const a = products(['fp8', 'fp8', 'bf16', 'f32', 'fp8'], 2, 20); // shared x, three layouts
    const b = products(['bf16', 'f32'], 1, 40);
    const [wantA, wantB] = [alone(a), alone(b)];
    const engine = engineOwning(a[0]!.w) as WasmGemm;
    const plans = (engine as unknown as { gemvPlans: { at(i: number): { v: unknown } } }).gemvPlans;
    const many = vi.spyOn(WasmGemm.prototype, 'gemvMany');
    for (const [list, want] of [
      [a, wantA],
      [b, wantB],
      [a, wantA],
    ] as const) {
      const first = plans.at(0);
      for (const p of list) p.y.fill(Number.NaN);
      weightProducts(list);
      expect(many).toHaveBeenCalledTimes(1); // one job
      many.mockClear();
      list.forEach((p, i) => expect(p.y, `product ${i}`).toEqual(want[i]));
      expect(plans.at(0)).toBe(first);
      for (let i = 0; i < list.length; i++) expect(plans.at(i).v).toBe(NO_GEMV);
    }
    many.mockRestore();
  });

  it('hands every product to the job as a GemvRecord (one object shape), holding no caller array after it', () => {
    setGemmThreads(threads);
    const k = 130,
      n = 24;
    const x = Float32Array.from(randomUniform(2 * k, 51));
    const W = weight('fp8', n, k, 52);
    const f32W = Float32Array.from(randomUniform(n * k, 53));
    const seen: unknown[] = [];
    const original = WasmGemm.prototype.gemvMany;
    const many = vi.spyOn(WasmGemm.prototype, 'gemvMany').mockImplementation(function (this: WasmGemm, list, t) {
      seen.push(...list);
      original.call(this, list, t);
    });
    const y = new Float32Array(2 * n);
    weightProducts([
      { m: 2, n, k, x, w: W.w, scales: W.scales, y },
      { m: 2, n, k, x, w: residentCopy(f32W, 'f32'), y: new Float32Array(2 * n) },
    ]);
    weightProduct({ m: 1, n, k, x, w: W.w, scales: W.scales, y });
    sgemm({ m: 2, n, k, a: x, b: f32W, transB: true, c: y }); // run()'s small-m product
    many.mockRestore();
    expect(seen.length).toBe(4);
    for (const v of seen) {
      expect(v).toBeInstanceOf(GemvRecord);
      const r = v as GemvRecord;
      for (const held of [r.x, r.w, r.y, r.scales]) expect(held.length).toBe(0);
    }
  });
});
