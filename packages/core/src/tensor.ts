// Tensor: shape + dtype + a handle to backend storage, immutable from the user's side.
// Reading values back is async (`await t.data()`) because the GPU is; the CPU also offers dataSync().
import { dropGrad, backward as runBackward, type GradNode } from './autograd.js';
import type { Backend, KernelTensor, Storage } from './backend.js';
import { toNumeric, type DType, type NumericArray, type StorageArray } from './dtype.js';
import * as ops from './ops/index.js';
import { sizeOf } from './shape.js';

export class Tensor implements KernelTensor {
  readonly shape: readonly number[];
  readonly dtype: DType;
  readonly backend: Backend;
  private _storage: Storage | null;
  requiresGrad = false;
  /** Accumulated gradient of a leaf (or of a tensor marked with retainGrad()). */
  grad: Tensor | null = null;
  /** The autograd node that produced this tensor, if it was recorded. */
  gradFn: GradNode | null = null;
  retainsGrad = false;

  constructor(backend: Backend, storage: Storage, shape: readonly number[], dtype: DType) {
    this.backend = backend;
    this._storage = storage;
    this.shape = Object.freeze([...shape]);
    this.dtype = dtype;
    // reshapes share storage: its count lets dispose() free it only once nobody uses it (a field, not a
    // WeakMap: ~1 µs less per tensor, a decode step makes ~370; docs/benchmarks.md, issue 13)
    storage.tensors++;
  }

  get storage(): Storage {
    if (!this._storage) throw new Error(`tensor [${this.shape.join(', ')}] ${this.dtype} was disposed`);
    return this._storage;
  }
  get size(): number {
    return sizeOf(this.shape);
  }
  get ndim(): number {
    return this.shape.length;
  }
  get disposed(): boolean {
    return this._storage === null;
  }
  /** Whether another live tensor (a view, a detached copy) may use this one's storage. */
  get sharesStorage(): boolean {
    return this._storage !== null && this._storage.tensors > 1;
  }

  /** Frees device memory now (GPU memory is otherwise only reclaimed when the tensor is collected). */
  dispose(): void {
    const s = this._storage;
    if (!s) return;
    this._storage = null;
    s.tensors = Math.max(0, s.tensors - 1);
    if (s.tensors === 0) this.backend.free(s);
  }

  /** Values as numbers: f16/bf16 decode to Float32Array; fp8 stays raw bytes (decode with @dsv3/fp8). */
  async data(): Promise<NumericArray> {
    return toNumeric(this.dtype, await this.raw());
  }
  /** The raw storage representation (bf16/f16 bits, fp8 bytes). */
  raw(): Promise<StorageArray> {
    return this.backend.read(this.storage, this.dtype, this.size);
  }
  /** Synchronous read, on backends that can (the CPU). */
  dataSync(): NumericArray {
    if (!this.backend.readSync)
      throw new Error(`dataSync() is not available on the ${this.backend.name} backend; use await tensor.data()`);
    return toNumeric(this.dtype, this.backend.readSync(this.storage, this.dtype, this.size));
  }
  rawSync(): StorageArray {
    if (!this.backend.readSync)
      throw new Error(`rawSync() is not available on the ${this.backend.name} backend; use await tensor.raw()`);
    return this.backend.readSync(this.storage, this.dtype, this.size);
  }
  /** The single value of a one-element tensor. */
  async item(): Promise<number> {
    if (this.size !== 1) throw new Error(`item() needs a one-element tensor, got shape [${this.shape.join(', ')}]`);
    return (await this.data())[0]!;
  }
  /** Nested arrays, for printing and tests. */
  async toArray(): Promise<unknown> {
    return nest(Array.from(await this.data()), this.shape);
  }

  // ---- autograd ----
  /** Marks a leaf as needing gradients (returns this, for chaining). */
  requireGrad(on = true): this {
    if (this.gradFn) throw new Error('requireGrad() is for leaf tensors; this one was computed by an op');
    this.requiresGrad = on;
    return this;
  }
  retainGrad(): this {
    this.retainsGrad = true;
    return this;
  }
  backward(gradient?: Tensor): void {
    runBackward(this, gradient);
  }
  /** The same storage, cut from the autograd graph. */
  detach(): Tensor {
    return new Tensor(this.backend, this.storage, this.shape, this.dtype);
  }
  /** Drops the gradient (one the backward made and this tensor alone holds is reused by the next pass). */
  zeroGrad(): void {
    dropGrad(this);
  }

  toString(): string {
    return `Tensor(shape=[${this.shape.join(', ')}], dtype=${this.dtype}, backend=${this.backend.name}${this.requiresGrad ? ', requiresGrad' : ''})`;
  }

  // ---- op methods (the functions in ./ops hold the logic and the autograd rules) ----
  add(b: Tensor | number): Tensor {
    return ops.add(this, b);
  }
  sub(b: Tensor | number): Tensor {
    return ops.sub(this, b);
  }
  mul(b: Tensor | number): Tensor {
    return ops.mul(this, b);
  }
  div(b: Tensor | number): Tensor {
    return ops.div(this, b);
  }
  pow(b: Tensor | number): Tensor {
    return ops.pow(this, b);
  }
  maximum(b: Tensor | number): Tensor {
    return ops.maximum(this, b);
  }
  minimum(b: Tensor | number): Tensor {
    return ops.minimum(this, b);
  }
  lt(b: Tensor | number): Tensor {
    return ops.lt(this, b);
  }
  le(b: Tensor | number): Tensor {
    return ops.le(this, b);
  }
  gt(b: Tensor | number): Tensor {
    return ops.gt(this, b);
  }
  ge(b: Tensor | number): Tensor {
    return ops.ge(this, b);
  }
  eq(b: Tensor | number): Tensor {
    return ops.eq(this, b);
  }
  ne(b: Tensor | number): Tensor {
    return ops.ne(this, b);
  }
  neg(): Tensor {
    return ops.neg(this);
  }
  exp(): Tensor {
    return ops.exp(this);
  }
  log(): Tensor {
    return ops.log(this);
  }
  sqrt(): Tensor {
    return ops.sqrt(this);
  }
  rsqrt(): Tensor {
    return ops.rsqrt(this);
  }
  sigmoid(): Tensor {
    return ops.sigmoid(this);
  }
  silu(): Tensor {
    return ops.silu(this);
  }
  tanh(): Tensor {
    return ops.tanh(this);
  }
  abs(): Tensor {
    return ops.abs(this);
  }
  square(): Tensor {
    return ops.square(this);
  }
  recip(): Tensor {
    return ops.recip(this);
  }
  cast(dtype: DType): Tensor {
    return ops.cast(this, dtype);
  }

  sum(axis?: number | number[], keepdims = false): Tensor {
    return ops.sum(this, axis, keepdims);
  }
  mean(axis?: number | number[], keepdims = false): Tensor {
    return ops.mean(this, axis, keepdims);
  }
  max(axis?: number, keepdims = false): Tensor {
    return ops.max(this, axis, keepdims);
  }
  min(axis?: number, keepdims = false): Tensor {
    return ops.min(this, axis, keepdims);
  }
  argmax(axis = -1, keepdims = false): Tensor {
    return ops.argmax(this, axis, keepdims);
  }

  matmul(b: Tensor, opts?: ops.MatmulOptions): Tensor {
    return ops.matmul(this, b, opts);
  }
  softmax(axis = -1): Tensor {
    return ops.softmax(this, axis);
  }
  logSoftmax(axis = -1): Tensor {
    return ops.logSoftmax(this, axis);
  }

  reshape(shape: readonly number[]): Tensor {
    return ops.reshape(this, shape);
  }
  flatten(): Tensor {
    return ops.reshape(this, [-1]);
  }
  permute(axes: readonly number[]): Tensor {
    return ops.permute(this, axes);
  }
  transpose(a = -2, b = -1): Tensor {
    return ops.transpose(this, a, b);
  }
  get T(): Tensor {
    return ops.transpose(this, -2, -1);
  }
  expand(shape: readonly number[]): Tensor {
    return ops.expand(this, shape);
  }
  squeeze(axis?: number): Tensor {
    return ops.squeeze(this, axis);
  }
  unsqueeze(axis: number): Tensor {
    return ops.unsqueeze(this, axis);
  }
  slice(starts: readonly number[], ends?: readonly (number | undefined)[]): Tensor {
    return ops.slice(this, starts, ends);
  }
  narrow(axis: number, start: number, length: number): Tensor {
    return ops.narrow(this, axis, start, length);
  }
  split(sizes: number | readonly number[], axis = 0): Tensor[] {
    return ops.split(this, sizes, axis);
  }
  gather(indices: Tensor, axis = 0): Tensor {
    return ops.indexSelect(this, indices, axis);
  }
  takeAlong(indices: Tensor, axis = -1): Tensor {
    return ops.takeAlong(this, indices, axis);
  }
  topk(k: number): [Tensor, Tensor] {
    return ops.topk(this, k);
  }
  cumsum(axis = -1): Tensor {
    return ops.cumsum(this, axis);
  }
  onesLike(): Tensor {
    return ops.full(this.shape, 1, { dtype: this.dtype, backend: this.backend });
  }
  zerosLike(): Tensor {
    return ops.full(this.shape, 0, { dtype: this.dtype, backend: this.backend });
  }
}

function nest(flat: number[], shape: readonly number[]): unknown {
  if (shape.length === 0) return flat[0];
  const [d, ...rest] = shape;
  const step = sizeOf(rest);
  return Array.from({ length: d! }, (_, i) => nest(flat.slice(i * step, (i + 1) * step), rest));
}
