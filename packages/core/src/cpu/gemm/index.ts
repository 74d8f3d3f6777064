// CPU f32 GEMM for @dsv3/core: WebAssembly SIMD128 kernel generated at run time, spread over Node
// worker threads when available; pure-JS blocked kernel where SIMD128 is missing. Small-M products
// against Linear weights take a GEMV kernel that reads f32 or bf16 weights where they are resident.
import type { DType, StorageArray } from '../../dtype.js';
import { decodeBf16 } from '../../dtype.js';
import { normalizeGemm, type GemmArgs } from './args.js';
import { gemmConfig } from './config.js';
import { sgemmJs } from './js-kernel.js';
import { effectiveThreads, getEngine } from './runtime.js';

export type { GemmArgs } from './args.js';

/** C = op(A) @ op(B) (optionally batched), synchronously. */
export function sgemm(args: GemmArgs): void {
  const g = normalizeGemm(args);
  const e = gemmConfig.forceJs ? null : getEngine();
  if (e) e.run(g, effectiveThreads(e));
  else sgemmJs(g);
}

export interface WeightProductArgs {
  m: number; n: number; k: number;
  /** x [m, k] row-major f32 */
  x: Float32Array;
  /** W [n, k] row-major: f32 values or bf16 bits */
  w: Float32Array | Uint16Array;
  /** y [m, n], overwritten with x · Wᵀ */
  y: Float32Array;
}

/**
 * y = x · Wᵀ against a Linear weight stored f32 or bf16 (decoded in registers). Small m streams W
 * once (GEMV, threaded over n); larger m runs the GEMM (bf16 widened into a temporary first).
 */
export function weightProduct({ m, n, k, x, w, y }: WeightProductArgs): void {
  const bf16 = w instanceof Uint16Array;
  if (x.length < m * k || w.length < n * k || y.length < m * n) {
    throw new RangeError(`weightProduct: arrays too short for [${m}, ${k}] · [${n}, ${k}]ᵀ (x ${x.length}, w ${w.length}, y ${y.length})`);
  }
  const e = gemmConfig.forceJs ? null : getEngine();
  if (e && m <= gemmConfig.gemvMaxM) {
    e.gemv({ m, n, k, x, xOffset: 0, w, wOffset: 0, kind: bf16 ? 'bf16' : 'f32', y, yOffset: 0 }, effectiveThreads(e));
    return;
  }
  const wf = bf16 ? decodeBf16((w as Uint16Array).subarray(0, n * k)) : (w as Float32Array);
  sgemm({ m, n, k, a: x, b: wf, transB: true, c: y });
}

/**
 * Storage of `size` elements of `dtype` inside the GEMM engine's memory, where the kernels read it in
 * place (zero-filled); null when there is no engine or no room. Release it with freeResident.
 */
export function allocResident(dtype: DType, size: number): StorageArray | null {
  const e = gemmConfig.forceJs ? null : getEngine();
  if (!e) return null;
  const bytes = size * (dtype === 'f32' || dtype === 'i32' || dtype === 'u32' ? 4 : dtype === 'bf16' || dtype === 'f16' ? 2 : dtype === 'f64' ? 8 : 1);
  if (dtype === 'f64') return null;
  const at = e.arena.alloc(bytes);
  return at === null ? null : e.arena.view(dtype, at, size);
}

/** Returns resident storage to the engine (the array must be one allocResident returned). */
export function freeResident(a: StorageArray): void {
  const e = getEngine();
  if (!e || !e.arena.owns(a)) throw new Error('freeResident: not resident storage');
  e.arena.release(a.byteOffset);
}

/** Whether `a` lives in the GEMM engine's memory. */
export function isResident(a: ArrayBufferView): boolean {
  const e = gemmConfig.forceJs ? null : getEngine();
  return !!e && e.arena.owns(a);
}

/** Threads for large GEMMs (the calling thread counts as one). Default: available parallelism in Node, 1 elsewhere. */
export function setGemmThreads(n: number): void {
  if (!Number.isInteger(n) || n < 1) throw new RangeError(`setGemmThreads: expected an integer >= 1, got ${n}`);
  gemmConfig.threads = Math.min(n, 64);
}

export function gemmInfo(): { simd: boolean; threads: number; relaxedSimd: boolean; residentBytes: number } {
  const e = gemmConfig.forceJs ? null : getEngine();
  return { simd: e !== null, threads: effectiveThreads(e), relaxedSimd: e?.relaxed ?? false, residentBytes: e?.arena.usedBytes ?? 0 };
}
