// Autograd through communication. Core's backward() is synchronous, but the backward of a dispatch or
// combine is itself an all-to-all that must be awaited. An async node carries `backwardAsync`; the
// walker below is core's reverse-topological walk that awaits those nodes. Every rank of a group must
// reach its async nodes in the same order: the nodes of an EP model form a dependency chain (combine of
// layer L after its dispatch, dispatch of L after layer L-1), so the topological order fixes it.
import { accumulateGrad, backward, isGradEnabled, noGrad, topoOrder, type GradNode, type Tensor } from '@dsv3/core';

export interface AsyncGradNode extends GradNode {
  backwardAsync(gradOutput: Tensor): Promise<(Tensor | null | undefined)[]>;
}

export const isAsyncNode = (n: GradNode): n is AsyncGradNode =>
  typeof (n as Partial<AsyncGradNode>).backwardAsync === 'function';

/** Attaches an async node to `out` when recording is on and some input needs a gradient (as core's record()). */
export function recordAsync(
  out: Tensor,
  op: string,
  inputs: readonly Tensor[],
  backwardAsync: AsyncGradNode['backwardAsync'],
): Tensor {
  if (isGradEnabled() && inputs.some((t) => t.requiresGrad)) {
    out.requiresGrad = true;
    const node: AsyncGradNode = {
      op,
      inputs,
      backward: () => {
        throw new Error(
          `${op}: its backward is a collective; run backwardAsync() (from @dsv3/parallel) instead of backward()`,
        );
      },
      backwardAsync,
    };
    out.gradFn = node;
  }
  return out;
}

/**
 * A node's input gradients as their separate contributions: a recomputed module's (core's
 * `backwardParts`) in the order its inner graph produced them, any other node's one each. Added to the
 * pending gradients one by one they round as core's backward() rounds them.
 */
export function gradientParts(node: GradNode, g: Tensor): (readonly Tensor[] | null | undefined)[] {
  return node.backwardParts ? node.backwardParts(g) : node.backward(g).map((gi) => (gi ? [gi] : null));
}

/**
 * backward() for graphs holding async (communicating) nodes. Leaves accumulate into `.grad`. An async
 * node that no gradient reached still runs, with a zero gradient, so its peers are never left waiting.
 */
export async function backwardAsync(root: Tensor, gradient?: Tensor): Promise<void> {
  if (!root.requiresGrad) throw new Error('backwardAsync() on a tensor that does not require grad');
  if (!gradient && root.size !== 1)
    throw new Error(`backwardAsync() without a gradient needs a scalar, got shape [${root.shape.join(', ')}]`);
  const order = topoOrder(root);
  // Nothing communicates (a data-parallel or pipeline-only graph): core's backward, whose in-place
  // accumulation and recycled buffers this walk lacks (it made a tiny step's backward ~2.2x the CPU).
  if (!order.some((t) => t.gradFn && isAsyncNode(t.gradFn))) return backward(root, gradient);
  const grads = new Map<Tensor, Tensor>([[root, gradient ?? root.onesLike()]]);
  for (const t of order) {
    const node = t.gradFn;
    let g = grads.get(t);
    if (!g && !(node && isAsyncNode(node))) continue;
    grads.delete(t);
    if (!node) {
      accumulateGrad(t, g!);
      continue;
    }
    g ??= noGrad(() => t.zerosLike());
    if (t.retainsGrad) t.grad = t.grad ? noGrad(() => t.grad!.add(g!)) : g;
    // An async node's backward runs its own tensor ops under noGrad (recording is global, awaits interleave).
    const parts = isAsyncNode(node)
      ? (await node.backwardAsync(g)).map((gi) => (gi ? [gi] : null))
      : noGrad(() => gradientParts(node, g!));
    node.inputs.forEach((inp, i) => {
      if (!inp.requiresGrad) return;
      for (const gi of parts[i] ?? []) {
        if (gi.shape.join() !== inp.shape.join())
          throw new Error(
            `internal: gradient of ${node.op} input ${i} has shape [${gi.shape.join(', ')}], expected [${inp.shape.join(', ')}]`,
          );
        const prev = grads.get(inp);
        grads.set(inp, prev ? noGrad(() => prev.add(gi)) : gi);
      }
    });
  }
}
