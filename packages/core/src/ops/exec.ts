// Runs a registered kernel on Tensors: checks they share a backend, then wraps the outputs as Tensors.
// This is how every package (core's ops, fp8, mla, moe) calls its kernels.
import { runKernel, type Backend } from '../backend.js';
import { isComputableDType, type DType } from '../dtype.js';
import { defaultBackend } from '../backends.js';
import { Tensor } from '../tensor.js';
import { addOpTime, opClock, opProfiling } from './profile.js';
import { anyDeferred, finishDeferred, isDeferred } from '../deferred.js';
import { readRowsFor } from '../io/rows-on-lookup.js';

/**
 * Runs the kernel registered for `op` on the backend the inputs live on (or `backend`, for ops
 * without inputs) and returns its outputs as Tensors. No autograd history is recorded.
 */
export function exec(op: string, inputs: readonly Tensor[], attrs: unknown, backend?: Backend): Tensor[] {
  const be = backendOf(op, inputs, backend);
  const outs: Tensor[] = [];
  for (const o of run(op, be, inputs, attrs)) outs.push(new Tensor(be, o.storage, o.shape, o.dtype));
  return outs;
}

/** `exec` of a kernel with one output (without the list of outputs: one op's garbage less). */
export function exec1(op: string, inputs: readonly Tensor[], attrs: unknown, backend?: Backend): Tensor {
  const be = backendOf(op, inputs, backend);
  const o = run(op, be, inputs, attrs)[0]!;
  return new Tensor(be, o.storage, o.shape, o.dtype);
}

/** The backend `op` runs on: its inputs' (all on one), else `backend` or the default. */
function backendOf(op: string, inputs: readonly Tensor[], backend: Backend | undefined): Backend {
  const be = backend ?? inputs[0]?.backend ?? defaultBackend();
  for (const t of inputs) {
    if (t.backend !== be) {
      throw new Error(
        `${op}: tensors live on different backends (${be.name} and ${t.backend.name}); move one with toBackend()`,
      );
    }
  }
  return be;
}

/** The kernel's raw outputs (timed when ops are profiled). */
function run(op: string, be: Backend, inputs: readonly Tensor[], attrs: unknown): ReturnType<typeof runKernel> {
  // An input a background product is still writing: complete those first.
  if (anyDeferred() && inputs.some((t) => isDeferred((t.storage as { data?: object }).data))) finishDeferred();
  // A table read on lookup: a lookup reads its rows, any other kernel the whole table.
  readRowsFor(op, inputs, attrs);
  if (!opProfiling()) return runKernel(op, be, inputs as Tensor[], attrs);
  const t0 = opClock();
  const outs = runKernel(op, be, inputs as Tensor[], attrs);
  const sub = (attrs as { op?: unknown } | null)?.op;
  addOpTime(typeof sub === 'string' ? `${op}:${sub}` : op, opClock() - t0);
  return outs;
}

export function requireComputable(op: string, ...ts: Tensor[]): void {
  for (const t of ts) {
    if (!isComputableDType(t.dtype))
      throw new TypeError(
        `${op}: ${t.dtype} is a storage-only dtype; cast or decode it first (fp8 codecs live in @dsv3/fp8)`,
      );
  }
}

export function requireFloat(op: string, ...ts: Tensor[]): void {
  for (const t of ts) {
    if (!['f32', 'f64', 'f16', 'bf16'].includes(t.dtype))
      throw new TypeError(`${op} needs a float tensor (f32, f64, f16, bf16), got ${t.dtype}`);
  }
}

export function requireDType(op: string, t: Tensor, ...allowed: DType[]): void {
  if (!allowed.includes(t.dtype)) throw new TypeError(`${op} needs ${allowed.join(' or ')}, got ${t.dtype}`);
}
