// Backward split in two, as zero-bubble pipelines need: B computes the gradient w.r.t. the stage's
// input (what the previous stage waits for) and keeps, for every op that consumed a weight, the
// gradient that reached it; W later turns those into weight gradients. Works on core's recorded graph:
// while B runs an op's backward the weight operands are marked as not needing a gradient (ops skip
// what nobody needs, e.g. matmul's x^T·g), while W runs it the activation operands are.
import { accumulateGrad, noGrad, topoOrder, type GradNode, type Tensor } from '@dsv3/core';
import { gradientParts, isAsyncNode, type AsyncGradNode } from '../ep/autograd.js';

interface DeferredWeightGrad {
  node: GradNode;
  gradOutput: Tensor;
  weightInputs: number[];
  activationInputs: number[];
}

export interface SplitBackwardResult {
  /** d(loss)/d(input), or null when the input does not reach the root. */
  inputGrad: Tensor | null;
  /** Accumulates the weight gradients into the leaves' `.grad` (call once). */
  weights(): void;
}

/** Runs `fn` with `tensors` marked as not needing gradients. */
function masked<T>(tensors: readonly Tensor[], fn: () => T): T {
  const prev = tensors.map((t) => t.requiresGrad);
  for (const t of tensors) t.requiresGrad = false;
  try {
    return fn();
  } finally {
    tensors.forEach((t, i) => (t.requiresGrad = prev[i]!));
  }
}

interface PassResult {
  inputGrad: Tensor | null;
  deferred: DeferredWeightGrad[];
}

/** A communicating node's backward the driver must run (and send the input gradients back in). */
interface AsyncStep {
  node: AsyncGradNode;
  gradOutput: Tensor;
}

function checkRoot(root: Tensor, gradient: Tensor | undefined): void {
  if (!root.requiresGrad)
    throw new Error('pipeline backward: the stage output does not depend on any parameter or on the stage input');
  if (!gradient && root.size !== 1)
    throw new Error(`pipeline backward: a loss must be a scalar, got shape [${root.shape.join(', ')}]`);
  if (gradient && gradient.shape.join() !== root.shape.join()) {
    throw new Error(
      `pipeline backward: output gradient has shape [${gradient.shape.join(', ')}], the stage output [${root.shape.join(', ')}]`,
    );
  }
}

/**
 * The B pass as a generator: it yields each communicating (async) node, which has no weight operands,
 * for the driver to run, and takes its input gradients back; everything else runs here.
 */
function* backwardPass(
  root: Tensor,
  gradient: Tensor | undefined,
  input: Tensor | null,
  deferWeights: boolean,
): Generator<AsyncStep, PassResult, (Tensor | null | undefined)[]> {
  const grads = new Map<Tensor, Tensor>([[root, gradient ?? root.onesLike()]]);
  const deferred: DeferredWeightGrad[] = [];
  let inputGrad: Tensor | null = null;
  const isWeight = (t: Tensor): boolean => t.requiresGrad && !t.gradFn && t !== input;
  if (root === input) inputGrad = grads.get(root)!;
  for (const t of topoOrder(root, { leaves: false })) {
    const node = t.gradFn;
    let g = grads.get(t);
    // A communicating node runs even when no gradient reached it, so its peers are not left waiting.
    if (!node || (!g && !isAsyncNode(node))) continue;
    g ??= t.zerosLike();
    grads.delete(t);
    const weightInputs: number[] = [];
    const activationInputs: number[] = [];
    node.inputs.forEach((x, i) => {
      if (isWeight(x)) weightInputs.push(i);
      else if (x.requiresGrad) activationInputs.push(i);
    });
    // Each input's gradient as its separate contributions (a recomputed module's, backwardParts), added
    // one by one as core's backward adds them, so recomputation stays bitwise.
    let parts: (readonly Tensor[] | null | undefined)[];
    if (isAsyncNode(node)) {
      parts = (yield { node, gradOutput: g }).map((gi) => (gi ? [gi] : null));
    } else {
      if (deferWeights && weightInputs.length) deferred.push({ node, gradOutput: g, weightInputs, activationInputs });
      if (!activationInputs.length && deferWeights) continue;
      const weightTensors = weightInputs.map((i) => node.inputs[i]!);
      parts = deferWeights ? masked(weightTensors, () => gradientParts(node, g)) : gradientParts(node, g);
    }
    for (const i of activationInputs) {
      const x = node.inputs[i]!;
      for (const gi of parts[i] ?? []) {
        if (x === input) inputGrad = inputGrad ? inputGrad.add(gi) : gi;
        else grads.set(x, grads.has(x) ? grads.get(x)!.add(gi) : gi);
      }
    }
    if (!deferWeights || isAsyncNode(node))
      for (const i of weightInputs) for (const gi of parts[i] ?? []) accumulateGrad(node.inputs[i]!, gi);
  }
  return { inputGrad, deferred };
}

function result(r: PassResult): SplitBackwardResult {
  let done = false;
  return {
    inputGrad: r.inputGrad,
    weights(): void {
      if (done) throw new Error('pipeline backward: weights() of this backward already ran');
      done = true;
      noGrad(() => {
        for (const d of r.deferred) {
          const parts = masked(
            d.activationInputs.map((i) => d.node.inputs[i]!),
            () => gradientParts(d.node, d.gradOutput),
          );
          for (const i of d.weightInputs) for (const gi of parts[i] ?? []) accumulateGrad(d.node.inputs[i]!, gi);
        }
      });
      r.deferred.length = 0;
    },
  };
}

/**
 * Back-propagates from `root` (a scalar loss when `gradient` is undefined) to `input`, a leaf that
 * requires grad. Every other leaf that requires grad is a weight: with `deferWeights` its gradient waits
 * for `weights()`, otherwise it is accumulated now, in the same pass.
 */
export function splitBackward(
  root: Tensor,
  gradient: Tensor | undefined,
  input: Tensor | null,
  deferWeights: boolean,
): SplitBackwardResult {
  checkRoot(root, gradient);
  const pass = backwardPass(root, gradient, input, deferWeights);
  const step = noGrad(() => pass.next());
  if (!step.done)
    throw new Error(
      `pipeline backward: the stage communicates in its backward (${step.value.node.op}); use splitBackwardAsync`,
    );
  return result(step.value);
}

/** splitBackward for stages whose backward communicates (expert-parallel MoE): awaits those nodes. */
export async function splitBackwardAsync(
  root: Tensor,
  gradient: Tensor | undefined,
  input: Tensor | null,
  deferWeights: boolean,
): Promise<SplitBackwardResult> {
  checkRoot(root, gradient);
  const pass = backwardPass(root, gradient, input, deferWeights);
  let step = noGrad(() => pass.next());
  while (!step.done) {
    const { node, gradOutput } = step.value;
    const gin = await node.backwardAsync(gradOutput);
    step = noGrad(() => pass.next(gin));
  }
  return result(step.value);
}
