// Creating tensors: from JS data, constants, ranges and seeded random numbers.
import type { Backend } from '../backend.js';
import { defaultBackend } from '../backends.js';
import {
  assertDType,
  fromNumeric,
  isFloatDType,
  storageArrayMatches,
  type DType,
  type StorageArray,
} from '../dtype.js';
import { Rng } from '../rng.js';
import { assertShape, fmt, ShapeError, sizeOf } from '../shape.js';
import { Tensor } from '../tensor.js';
import { exec1 } from './exec.js';

export interface CreateOptions {
  dtype?: DType;
  backend?: Backend;
}

type Nested = number | boolean | Nested[];

function inferShape(x: Nested): number[] {
  const shape: number[] = [];
  let cur: Nested = x;
  while (Array.isArray(cur)) {
    shape.push(cur.length);
    cur = cur[0] as Nested;
  }
  return shape;
}

function flattenNested(x: Nested, shape: number[], depth: number, out: number[]): void {
  if (depth === shape.length) {
    if (Array.isArray(x)) throw new ShapeError(`ragged nested array: expected a number at depth ${depth}`);
    const v = typeof x === 'boolean' ? +x : x;
    if (typeof v !== 'number') throw new TypeError(`tensor data must hold numbers, got ${typeof v}`);
    out.push(v);
    return;
  }
  if (!Array.isArray(x) || x.length !== shape[depth])
    throw new ShapeError(`ragged nested array: expected ${shape[depth]} elements at depth ${depth}`);
  for (const e of x) flattenNested(e, shape, depth + 1, out);
}

/**
 * A tensor from JS data: a number, nested arrays, or a flat array/TypedArray with `shape`.
 * A TypedArray that matches the dtype's storage (e.g. Uint16Array bits for bf16) is taken as raw bits.
 */
export function tensor(
  data: Nested | ArrayLike<number>,
  opts: CreateOptions & { shape?: readonly number[] } = {},
): Tensor {
  const backend = opts.backend ?? defaultBackend();
  let flat: ArrayLike<number>;
  let shape: number[];
  if (ArrayBuffer.isView(data)) {
    flat = data as unknown as ArrayLike<number>;
    shape = opts.shape ? assertShape([...opts.shape]) : [flat.length];
  } else if (typeof data === 'number' || typeof data === 'boolean') {
    flat = [+data];
    shape = opts.shape ? assertShape([...opts.shape]) : [];
  } else {
    const inferred = inferShape(data as Nested);
    const values: number[] = [];
    flattenNested(data as Nested, inferred, 0, values);
    flat = values;
    shape = opts.shape ? assertShape([...opts.shape]) : inferred;
  }
  if (sizeOf(shape) !== flat.length)
    throw new ShapeError(`${flat.length} values do not fill shape ${fmt(shape)} (${sizeOf(shape)} elements)`);
  const dtype = opts.dtype ? assertDType(opts.dtype) : defaultDType(data);
  if (!backend.supportsDType(dtype)) throw new TypeError(`the ${backend.name} backend cannot hold ${dtype} tensors`);
  const raw: StorageArray =
    ArrayBuffer.isView(flat) && storageArrayMatches(dtype, flat as ArrayBufferView) && !(dtype === 'bool')
      ? (flat as StorageArray)
      : fromNumeric(dtype, flat);
  return new Tensor(backend, backend.upload(dtype, raw), shape, dtype);
}

function defaultDType(data: unknown): DType {
  if (data instanceof Float64Array) return 'f64';
  if (data instanceof Int32Array) return 'i32';
  if (data instanceof Uint32Array) return 'u32';
  if (data instanceof Uint8Array) return 'u8';
  return 'f32';
}

/** Wraps raw storage bits of `dtype` (e.g. fp8 bytes from a checkpoint) without conversion. */
export function fromRaw(
  dtype: DType,
  shape: readonly number[],
  data: StorageArray,
  backend: Backend = defaultBackend(),
): Tensor {
  assertShape([...shape]);
  if (!storageArrayMatches(dtype, data))
    throw new TypeError(
      `raw ${dtype} data must be a ${dtype === 'f16' || dtype === 'bf16' ? 'Uint16Array' : 'matching TypedArray'}, got ${data.constructor.name}`,
    );
  if (data.length !== sizeOf(shape)) throw new ShapeError(`${data.length} raw values do not fill shape ${fmt(shape)}`);
  if (!backend.supportsDType(dtype)) throw new TypeError(`the ${backend.name} backend cannot hold ${dtype} tensors`);
  return new Tensor(backend, backend.upload(dtype, data), shape, dtype);
}

export function full(shape: readonly number[], value: number, opts: CreateOptions = {}): Tensor {
  const dtype = opts.dtype ?? 'f32';
  return exec1('full', [], { shape: assertShape([...shape]), dtype, value }, opts.backend ?? defaultBackend());
}

export const zeros = (shape: readonly number[], opts: CreateOptions = {}): Tensor => full(shape, 0, opts);
export const ones = (shape: readonly number[], opts: CreateOptions = {}): Tensor => full(shape, 1, opts);

/** Each element's index along `axis` (default: a 1-d range 0..n-1). */
export function iota(shape: readonly number[], axis = 0, opts: CreateOptions = {}): Tensor {
  return exec1(
    'iota',
    [],
    { shape: assertShape([...shape]), axis, dtype: opts.dtype ?? 'i32' },
    opts.backend ?? defaultBackend(),
  );
}

export function arange(n: number, opts: CreateOptions = {}): Tensor {
  return iota([n], 0, opts);
}

export interface RandomOptions extends CreateOptions {
  rng?: Rng;
  seed?: number;
}

function rngOf(opts: RandomOptions): Rng {
  return opts.rng ?? new Rng(opts.seed ?? 0);
}

function floatOut(opts: RandomOptions): DType {
  const d = opts.dtype ?? 'f32';
  if (!isFloatDType(d)) throw new TypeError(`random floats need a float dtype, got ${d}`);
  return d;
}

export function randn(shape: readonly number[], opts: RandomOptions & { mean?: number; std?: number } = {}): Tensor {
  const v = rngOf(opts).fillNormal(new Float64Array(sizeOf(assertShape([...shape]))), opts.mean ?? 0, opts.std ?? 1);
  return tensor(v, { shape, dtype: floatOut(opts), backend: opts.backend });
}

export function rand(shape: readonly number[], opts: RandomOptions & { low?: number; high?: number } = {}): Tensor {
  const v = rngOf(opts).fillUniform(new Float64Array(sizeOf(assertShape([...shape]))), opts.low ?? 0, opts.high ?? 1);
  return tensor(v, { shape, dtype: floatOut(opts), backend: opts.backend });
}

export function randint(shape: readonly number[], low: number, high: number, opts: RandomOptions = {}): Tensor {
  const rng = rngOf(opts);
  const v = new Int32Array(sizeOf(assertShape([...shape])));
  for (let i = 0; i < v.length; i++) v[i] = rng.integer(low, high);
  return tensor(v, { shape, dtype: opts.dtype ?? 'i32', backend: opts.backend });
}

/** A tensor on another backend (async: reading from a GPU is). */
export async function toBackend(t: Tensor, backend: Backend): Promise<Tensor> {
  if (t.backend === backend) return t;
  return fromRaw(t.dtype, t.shape, await t.raw(), backend);
}
