// Neural-network functions: softmax / log-softmax, RMSNorm, cross-entropy, causal mask.
import { record } from '../autograd.js';
import { hasKernel } from '../backend.js';
import { fmt, normAxis, ShapeError } from '../shape.js';
import type { Tensor } from '../tensor.js';
import { full, iota } from './creation.js';
import { add, cast, div, exp, gt, mul, ne, neg, rsqrt, sub, where } from './elementwise.js';
import { exec, exec1, requireDType, requireFloat } from './exec.js';
import { takeAlong } from './indexing.js';
import { mean, sum } from './reduce.js';
import { reshape, transpose, unsqueeze } from './shape-ops.js';

/** The backend has the fused kernel `op` and `t` is a dtype it takes (f32/f64). */
export function hasFusedKernel(op: string, t: Tensor): boolean {
  return (t.dtype === 'f32' || t.dtype === 'f64') && hasKernel(op, t.backend.name);
}

/** Runs a last-axis op on any axis by swapping that axis to the end and back. */
function onAxis(x: Tensor, axis: number, f: (t: Tensor) => Tensor): Tensor {
  const a = normAxis(axis, x.ndim);
  if (a === x.ndim - 1) return f(x);
  return transpose(f(transpose(x, a, -1)), a, -1);
}

export function softmax(x: Tensor, axis = -1): Tensor {
  requireFloat('softmax', x);
  return onAxis(x, axis, (t) => {
    const y = exec1('softmax', [t], { log: false });
    return record(y, 'softmax', [t], (g) => [
      hasFusedKernel('softmaxBackward', y)
        ? exec1('softmaxBackward', [y, g], { log: false })
        : mul(y, sub(g, sum(mul(g, y), -1, true))),
    ]);
  });
}

export function logSoftmax(x: Tensor, axis = -1): Tensor {
  requireFloat('logSoftmax', x);
  return onAxis(x, axis, (t) => {
    const y = exec1('softmax', [t], { log: true });
    return record(y, 'logSoftmax', [t], (g) => [
      hasFusedKernel('softmaxBackward', y)
        ? exec1('softmaxBackward', [y, g], { log: true })
        : sub(g, mul(exp(y), sum(g, -1, true))),
    ]);
  });
}

/** RMSNorm over the last axis: x / sqrt(mean(x²) + eps) * weight. */
export function rmsNorm(x: Tensor, weight: Tensor, eps = 1e-6): Tensor {
  requireFloat('rmsNorm', x, weight);
  const d = x.shape[x.ndim - 1];
  if (weight.ndim !== 1 || weight.shape[0] !== d)
    throw new ShapeError(`rmsNorm weight must be [${d}] for input ${fmt(x.shape)}, got ${fmt(weight.shape)}`);
  if (weight.dtype !== x.dtype) throw new TypeError(`rmsNorm: input is ${x.dtype} but weight is ${weight.dtype}`);
  const y = exec1('rmsnorm', [x, weight], { eps });
  return record(y, 'rmsNorm', [x, weight], (g) => {
    if (hasFusedKernel('rmsnormBackward', x)) {
      const [dx, dw] = exec('rmsnormBackward', [x, weight, g], { eps }) as [Tensor, Tensor];
      return [x.requiresGrad ? dx : null, weight.requiresGrad ? dw : null];
    }
    // r = (mean(x²)+eps)^-1/2;  dx = r·(g·w) − x·r³·mean(g·w·x);  dw = Σ_rows g·x·r
    const r = rsqrt(add(mean(mul(x, x), -1, true), eps));
    const gw = mul(g, weight);
    const dx = x.requiresGrad ? sub(mul(gw, r), mul(x, mul(mul(r, mul(r, r)), mean(mul(gw, x), -1, true)))) : null;
    const dw = weight.requiresGrad ? reshape(sum(reshape(mul(g, mul(x, r)), [-1, d!]), 0), [d!]) : null;
    return [dx, dw];
  });
}

export interface CrossEntropyOptions {
  /** Targets equal to this are skipped (default -100, as in PyTorch). */
  ignoreIndex?: number;
  reduction?: 'mean' | 'sum' | 'none';
}

/**
 * Cross-entropy of `logits` [..., V] against i32 `targets` [...]. With 'mean', the average over the
 * targets that are not ignored (0 when all are).
 */
export function crossEntropy(logits: Tensor, targets: Tensor, opts: CrossEntropyOptions = {}): Tensor {
  requireFloat('crossEntropy', logits);
  requireDType('crossEntropy targets', targets, 'i32');
  const ignore = opts.ignoreIndex ?? -100;
  const v = logits.shape[logits.ndim - 1]!;
  if (targets.ndim !== logits.ndim - 1 || targets.shape.some((d, i) => d !== logits.shape[i])) {
    throw new ShapeError(
      `crossEntropy: targets ${fmt(targets.shape)} must be logits ${fmt(logits.shape)} without the last axis`,
    );
  }
  if (targets.backend.readSync) {
    const t = targets.dataSync();
    for (let i = 0; i < t.length; i++) {
      if (t[i] !== ignore && !(t[i]! >= 0 && t[i]! < v))
        throw new RangeError(
          `crossEntropy: target ${t[i]} at position ${i} is outside [0, ${v}) (ignoreIndex ${ignore})`,
        );
    }
  }
  const keep = ne(targets, ignore);
  let losses: Tensor;
  if (hasFusedKernel('crossEntropy', logits) && hasKernel('crossEntropyBackward', logits.backend.name)) {
    // One pass over the vocabulary each way: no log-softmax tensor, no scatter of the picked values.
    const rows = reshape(logits, [-1, v]);
    const flat = reshape(targets, [-1]);
    const attrs = { ignoreIndex: ignore };
    const [perRow, lse] = exec('crossEntropy', [rows, flat], attrs) as [Tensor, Tensor];
    const recorded = record(perRow, 'crossEntropy', [rows], (g) => [
      exec1('crossEntropyBackward', [rows, flat, lse, g], attrs),
    ]);
    losses = reshape(recorded, targets.shape);
  } else {
    const safe = where(keep, targets, 0);
    const picked = reshape(takeAlong(logSoftmax(logits), unsqueeze(safe, -1), -1), targets.shape);
    losses = where(keep, neg(picked), 0);
  }
  const reduction = opts.reduction ?? 'mean';
  if (reduction === 'none') return losses;
  const total = sum(losses);
  if (reduction === 'sum') return total;
  const count = sum(cast(keep, logits.dtype));
  return div(
    total,
    exec1('binary', [count, full([], 1, { dtype: logits.dtype, backend: logits.backend })], { op: 'max' }),
  );
}

/**
 * An additive causal mask [q, k]: 0 where key j may be seen by query i (j <= i + offset), -inf after.
 * `offset` = k - q lines the last query up with the last key (cached decoding).
 */
export function causalMask(
  q: number,
  k = q,
  opts: { offset?: number; dtype?: Tensor['dtype']; backend?: Tensor['backend'] } = {},
): Tensor {
  const offset = opts.offset ?? k - q;
  const rows = iota([q, k], 0, { backend: opts.backend });
  const cols = iota([q, k], 1, { backend: opts.backend });
  const future = gt(
    cols,
    exec1('binary', [rows, full([], offset, { dtype: 'i32', backend: rows.backend })], { op: 'add' }),
  );
  const dtype = opts.dtype ?? 'f32';
  return where(
    future,
    full([], -Infinity, { dtype, backend: rows.backend }),
    full([], 0, { dtype, backend: rows.backend }),
  );
}

/**
 * softmax(scale·scores + causal mask) over the last axis: query i of the q queries (second-to-last
 * axis) sees keys j ≤ i + (k − q). One fused pass where the backend has it; masked weights are 0.
 */
export function causalSoftmax(scores: Tensor, scale: number): Tensor {
  requireFloat('causalSoftmax', scores);
  if (scores.ndim < 2) throw new ShapeError(`causalSoftmax needs [..., q, k] scores, got ${fmt(scores.shape)}`);
  const [q, k] = scores.shape.slice(-2) as [number, number];
  if (!hasFusedKernel('causalSoftmax', scores))
    return softmax(add(mul(scores, scale), causalMask(q, k, { dtype: scores.dtype, backend: scores.backend })), -1);
  const p = exec1('causalSoftmax', [scores], { scale });
  return record(p, 'causalSoftmax', [scores], (g) => [mul(exec1('softmaxBackward', [p, g], { log: false }), scale)]);
}
