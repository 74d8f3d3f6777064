// What collectives accept: @dsv3/core tensors of any backend (staged through host memory; the result
// is a new tensor on the same backend, since tensors are immutable) or host typed arrays (updated in
// place). Reductions run in a working array: f32 for f32/bf16/f16 (so bf16 accumulates in f32),
// f64, i32, u32. Byte dtypes (u8, bool, fp8) move but do not reduce.
import {
  Tensor,
  bytesPerElement,
  decodeBf16,
  decodeF16,
  encodeBf16,
  encodeF16,
  fromRaw,
  type DType,
  type StorageArray,
} from '@dsv3/core';
import type { ReduceOp, WorkArray } from './reduce.js';

export type CommBuffer = Tensor | StorageArray;

export interface Staged {
  dtype: DType;
  /** Host storage: the caller's array itself, or a fresh copy of a tensor's storage. */
  raw: StorageArray;
  tensor: Tensor | null;
}

/** The dtype a host array carries; Uint16Array is ambiguous (bf16 or f16), so it needs `dtype`. */
export function hostDType(a: StorageArray, hint: DType | undefined, what: string): DType {
  if (hint) {
    const ok =
      (a instanceof Float32Array && hint === 'f32') ||
      (a instanceof Float64Array && hint === 'f64') ||
      (a instanceof Uint16Array && (hint === 'bf16' || hint === 'f16')) ||
      (a instanceof Int32Array && hint === 'i32') ||
      (a instanceof Uint32Array && hint === 'u32') ||
      (a instanceof Uint8Array && (hint === 'u8' || hint === 'bool' || hint === 'fp8-e4m3' || hint === 'fp8-e5m2'));
    if (!ok) throw new TypeError(`${what}: a ${a.constructor.name} cannot hold ${hint} data`);
    return hint;
  }
  if (a instanceof Float32Array) return 'f32';
  if (a instanceof Float64Array) return 'f64';
  if (a instanceof Int32Array) return 'i32';
  if (a instanceof Uint32Array) return 'u32';
  if (a instanceof Uint8Array) return 'u8';
  if (a instanceof Uint16Array)
    throw new TypeError(`${what}: a Uint16Array holds bf16 or f16 bits; pass { dtype: 'bf16' } or { dtype: 'f16' }`);
  throw new TypeError(
    `${what}: expected a Tensor or a typed array (Float32Array, Float64Array, Uint16Array, Int32Array, Uint32Array, Uint8Array), got ${describe(a)}`,
  );
}

function describe(x: unknown): string {
  if (x === null || x === undefined) return String(x);
  return (x as object).constructor?.name ?? typeof x;
}

export function isTensor(x: unknown): x is Tensor {
  return x instanceof Tensor;
}

/** Checks the argument synchronously (so a bad call throws at the call site) and returns its dtype. */
export function checkBuffer(buf: CommBuffer, hint: DType | undefined, what: string): DType {
  if (isTensor(buf)) {
    if (buf.disposed) throw new Error(`${what}: the tensor was disposed`);
    if (hint && hint !== buf.dtype) throw new TypeError(`${what}: dtype ${hint} given for a ${buf.dtype} tensor`);
    return buf.dtype;
  }
  if (!ArrayBuffer.isView(buf))
    throw new TypeError(`${what}: expected a Tensor or a typed array, got ${describe(buf)}`);
  return hostDType(buf as StorageArray, hint, what);
}

export async function stage(buf: CommBuffer, dtype: DType): Promise<Staged> {
  if (isTensor(buf)) return { dtype, raw: await buf.raw(), tensor: buf };
  return { dtype, raw: buf, tensor: null };
}

/** The result in the caller's kind: a new tensor (of `shape`) on the input's backend, or the host array. */
export function deliver<T extends CommBuffer>(s: Staged, raw: StorageArray, shape?: readonly number[]): T {
  if (!s.tensor) return raw as T;
  return fromRaw(s.dtype, shape ?? s.tensor.shape, raw, s.tensor.backend) as T;
}

export function u8(a: ArrayBufferView): Uint8Array {
  return new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
}

export function elementBytes(dtype: DType): number {
  return bytesPerElement(dtype);
}

export function checkReducible(dtype: DType, op: ReduceOp, what: string): void {
  if (dtype === 'u8' || dtype === 'bool' || dtype === 'fp8-e4m3' || dtype === 'fp8-e5m2')
    throw new TypeError(
      `${what}: ${dtype} data cannot be reduced (${op}); dequantize FP8 payloads first, or move raw bytes with allGather / allToAll / broadcast`,
    );
  if (op === 'avg' && (dtype === 'i32' || dtype === 'u32'))
    throw new TypeError(`${what}: avg of ${dtype} data is not defined; use sum`);
}

/** The array reductions run in. For f32/f64/i32/u32 it is `raw` itself (reduced in place). */
export function toWork(dtype: DType, raw: StorageArray): WorkArray {
  if (dtype === 'bf16') return decodeBf16(raw as Uint16Array);
  if (dtype === 'f16') return decodeF16(raw as Uint16Array);
  return raw as WorkArray;
}

/** Writes the reduced working array back into `raw` (a no-op where they are the same array). */
export function fromWork(dtype: DType, work: WorkArray, raw: StorageArray): void {
  if (dtype === 'bf16') encodeBf16(work, raw as Uint16Array<ArrayBuffer>);
  else if (dtype === 'f16') (raw as Uint16Array).set(encodeF16(work));
}

/** Scratch memory kept for reuse between operations: a fresh large array costs a page fault per 4 KiB
 *  on its first touch, every operation; a reused one does not. At most this much is kept. */
const SCRATCH_KEEP_BYTES = 256 << 20;
const scratchFree: ArrayBuffer[] = [];

/** Host memory of at least `bytes` for one operation's staging (contents undefined): the smallest kept
 *  buffer that fits and holds at most `atMost` bytes (so a small message does not take a large staging
 *  area), else a fresh one of exactly `bytes`. */
export function takeScratch(bytes: number, atMost = Number.POSITIVE_INFINITY): ArrayBuffer {
  let best = -1;
  for (let i = 0; i < scratchFree.length; i++) {
    const n = scratchFree[i]!.byteLength;
    if (n >= bytes && n <= atMost && (best < 0 || n < scratchFree[best]!.byteLength)) best = i;
  }
  return best >= 0 ? scratchFree.splice(best, 1)[0]! : new ArrayBuffer(bytes);
}

/** Returns scratch memory once nothing can write to it any more (not after a failed operation,
 *  whose receives may still be landing). */
export function giveScratch(buf: ArrayBuffer): void {
  scratchFree.push(buf);
  scratchFree.sort((a, b) => b.byteLength - a.byteLength);
  let kept = 0;
  for (let i = 0; i < scratchFree.length; i++) {
    kept += scratchFree[i]!.byteLength;
    if (kept > SCRATCH_KEEP_BYTES) scratchFree.length = i; // drop this and the smaller ones
  }
}
