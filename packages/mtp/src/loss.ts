// The MTP training objective (DeepSeek-V3 eq. 24–25):
//   L_MTP = (λ / D) Σ_{k=1..D} CE(P^k, t_{i+k+1})
// Depth k at position i predicts token t_{i+k+1}. A (depth, position) pair counts only when the hidden
// state at i, the input token t_{i+k} and the target t_{i+k+1} all lie inside the sequence and are real
// tokens (per-sequence lengths or a padding mask), and the target is not `ignoreIndex`.
import {
  cast,
  concat,
  crossEntropy,
  div,
  full,
  maximum,
  mul,
  narrow,
  ne,
  sum,
  tensor,
  where,
  type Tensor,
} from '@dsv3/core';

/** λ as a function of the (0-based) optimizer step. */
export type LambdaSchedule = (step: number) => number;

export function constantLambda(value: number): LambdaSchedule {
  checkLambda(value);
  return () => value;
}

/** values[j] while step < boundaries[j] (boundaries ascending), values[boundaries.length] after. */
export function piecewiseLambda(boundaries: readonly number[], values: readonly number[]): LambdaSchedule {
  if (values.length !== boundaries.length + 1)
    throw new RangeError(
      `piecewiseLambda: need ${boundaries.length + 1} values for ${boundaries.length} boundaries, got ${values.length}`,
    );
  for (let j = 1; j < boundaries.length; j++)
    if (!(boundaries[j]! > boundaries[j - 1]!)) throw new RangeError('piecewiseLambda: boundaries must ascend');
  values.forEach(checkLambda);
  return (step) => {
    for (let j = 0; j < boundaries.length; j++) if (step < boundaries[j]!) return values[j]!;
    return values[boundaries.length]!;
  };
}

/**
 * DeepSeek-V3's schedule: λ = 0.3 for the first 10T training tokens, then 0.1. `tokensSeen` gives the
 * number of tokens trained on before a step (the batch size ramps up in V3, so it is a function), or is a
 * constant number of tokens per step.
 */
export function deepseekV3Lambda(
  tokensSeen: number | ((step: number) => number),
  opts: { switchAt?: number; before?: number; after?: number } = {},
): LambdaSchedule {
  const at = opts.switchAt ?? 10e12;
  const before = opts.before ?? 0.3;
  const after = opts.after ?? 0.1;
  checkLambda(before);
  checkLambda(after);
  const seen = typeof tokensSeen === 'number' ? (s: number) => s * tokensSeen : tokensSeen;
  return (step) => (seen(step) < at ? before : after);
}

function checkLambda(v: number): void {
  if (!(Number.isFinite(v) && v >= 0))
    throw new RangeError(`MTP loss weight λ must be a finite non-negative number, got ${v}`);
}

export interface MTPLossOptions {
  /** λ, or a schedule evaluated at `step`. */
  lambda: number | LambdaSchedule;
  step?: number;
  /** D, the divisor (default: the number of logits tensors given; pass it when short sequences dropped depths). */
  depth?: number;
  /** Real length of each sequence (right padding beyond). */
  lengths?: readonly number[];
  /** [B, S], true (non-zero) where the token is real; combined with `lengths` when both are given. */
  mask?: Tensor;
  /**
   * i32 [B, S]: labels[b, j] is the token that should follow position j. Default: tokens[b, j + 1]
   * (nothing after the last position). Give the main model's own greedy predictions to distil an MTP head.
   */
  labels?: Tensor;
  /** Labels equal to this are skipped (default -100). */
  ignoreIndex?: number;
  /**
   * 'valid' (default): each depth's CE is the mean over its counted positions. 'tokens': each depth's
   * summed CE is divided by the number of main-model targets (the paper's 1/T), so depths with fewer
   * positions weigh a little less.
   */
  normalize?: 'valid' | 'tokens';
}

export interface MTPLossResult {
  /** (λ / D) Σ_k CE_k, a scalar that back-propagates into the MTP modules, the shared weights and the trunk. */
  loss: Tensor;
  /** CE_k per depth (before λ / D). */
  perDepth: Tensor[];
  /** Number of positions counted per depth (scalars, the logits' dtype). */
  counts: Tensor[];
  /** The λ used. */
  lambda: number;
}

/**
 * The MTP loss from per-depth logits: logits[k-1] is [B, L_k, V] with row i predicting t_{i+k+1}
 * (L_k ≤ S, normally S - k as MultiTokenPredictor.forward gives), tokens i32 [B, S].
 */
export function mtpLoss(logits: readonly Tensor[], tokens: Tensor, opts: MTPLossOptions): MTPLossResult {
  if (tokens.ndim !== 2 || tokens.dtype !== 'i32')
    throw new Error(`mtpLoss: tokens must be i32 [B, S], got ${tokens.dtype} [${tokens.shape.join(', ')}]`);
  const [b, s] = tokens.shape as [number, number];
  const lambda = typeof opts.lambda === 'number' ? opts.lambda : opts.lambda(opts.step ?? 0);
  checkLambda(lambda);
  const depth = opts.depth ?? logits.length;
  if (!(Number.isInteger(depth) && depth >= 1 && depth >= logits.length))
    throw new RangeError(`mtpLoss: depth ${depth} must be a positive integer >= the ${logits.length} logits given`);
  const ignore = opts.ignoreIndex ?? -100;
  const backend = tokens.backend;
  const first = logits[0];
  const dtype = first?.dtype ?? 'f32';

  // valid[b, j]: token j is real.
  let valid: Tensor | null = null;
  if (opts.lengths) {
    if (opts.lengths.length !== b) throw new Error(`mtpLoss: ${opts.lengths.length} lengths for ${b} sequences`);
    const m = new Uint8Array(b * s);
    opts.lengths.forEach((len, r) => {
      if (!(Number.isInteger(len) && len >= 0 && len <= s))
        throw new RangeError(`mtpLoss: length ${len} of sequence ${r} is outside [0, ${s}]`);
      m.fill(1, r * s, r * s + len);
    });
    valid = tensor(m, { shape: [b, s], dtype: 'bool', backend });
  }
  if (opts.mask) {
    if (opts.mask.ndim !== 2 || opts.mask.shape[0] !== b || opts.mask.shape[1] !== s)
      throw new Error(`mtpLoss: mask must be [${b}, ${s}], got [${opts.mask.shape.join(', ')}]`);
    const m = opts.mask.dtype === 'bool' ? opts.mask : ne(opts.mask, 0);
    valid = valid ? where(valid, m, 0) : m;
  }

  // labels[b, j]: the target after position j, ignoreIndex where there is none.
  let labels: Tensor;
  if (opts.labels) {
    if (
      opts.labels.dtype !== 'i32' ||
      opts.labels.ndim !== 2 ||
      opts.labels.shape[0] !== b ||
      opts.labels.shape[1] !== s
    ) {
      throw new Error(
        `mtpLoss: labels must be i32 [${b}, ${s}], got ${opts.labels.dtype} [${opts.labels.shape.join(', ')}]`,
      );
    }
    labels = opts.labels;
  } else {
    const pad = full([b, 1], ignore, { dtype: 'i32', backend });
    labels = s > 1 ? concat([narrow(tokens, 1, 1, s - 1), pad], 1) : pad;
    if (valid) {
      const next =
        s > 1
          ? concat([narrow(valid, 1, 1, s - 1), full([b, 1], 0, { dtype: 'bool', backend })], 1)
          : full([b, 1], 0, { dtype: 'bool', backend });
      labels = where(next, labels, ignore);
    }
  }

  const perDepth: Tensor[] = [];
  const counts: Tensor[] = [];
  const byTokens = (opts.normalize ?? 'valid') === 'tokens';
  // The main model's target count (positions j with a label), the paper's T.
  const mainTargets = !byTokens
    ? null
    : valid
      ? sum(cast(where(valid, ne(labels, ignore), 0), dtype))
      : sum(cast(ne(labels, ignore), dtype));
  let total: Tensor | null = null;
  logits.forEach((lg, d) => {
    const k = d + 1;
    const len = lg.shape[1]!;
    if (lg.ndim !== 3 || lg.shape[0] !== b || len > s) {
      throw new Error(`mtpLoss: logits of depth ${k} must be [${b}, L <= ${s}, V], got [${lg.shape.join(', ')}]`);
    }
    // Depth k at position i reads token i + k and predicts labels[i + k]; positions with i + k >= S have none.
    const n = Math.max(0, Math.min(len, s - k));
    let ce: Tensor;
    let count: Tensor;
    if (n === 0) {
      ce = full([], 0, { dtype, backend });
      count = full([], 0, { dtype, backend });
    } else {
      let target = narrow(labels, 1, k, n);
      if (valid) target = where(where(narrow(valid, 1, 0, n), narrow(valid, 1, k, n), 0), target, ignore);
      const rows = n === len ? lg : narrow(lg, 1, 0, n);
      const summed = crossEntropy(rows, target, { ignoreIndex: ignore, reduction: 'sum' });
      count = sum(cast(ne(target, ignore), dtype));
      const denom = mainTargets ?? count;
      ce = div(summed, maximum(denom, 1));
    }
    perDepth.push(ce);
    counts.push(count);
    total = total ? total.add(ce) : ce;
  });
  const loss = total ? mul(total, lambda / depth) : full([], 0, { dtype, backend });
  return { loss, perDepth, counts, lambda };
}
