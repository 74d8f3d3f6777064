// Routing and dispatch as tensor ops (the kernels are in route-kernels.ts / webgpu-route.ts): they
// enqueue on the gate's backend and return tensors, so nothing waits on the host.
import { exec, tensor, type Tensor } from '@dsv3/core';
import './register';
import { DISPATCH_OP, ROUTE_OP, type RouteAttrs } from './route-kernels';

/** The dispatch of a routed batch on the device (the tensor form of DispatchPlan). */
export interface DeviceDispatch {
  /** i32 [E + 1]: expert e's rows are [offsets[e], offsets[e+1]) of the dispatch order. */
  offsets: Tensor;
  /** i32 [E]: (token, slot) pairs routed to each expert. */
  counts: Tensor;
  /** i32 [T·k]: the token of each dispatch row (the rows to gather). */
  rows: Tensor;
  /** i32 [T·k]: dispatch row → pair index t·k + j (a stable sort of the pairs by expert). */
  permutation: Tensor;
}

/** Stable counting sort of the routed pairs by expert, on the indices' backend. */
export function dispatchTensors(indices: Tensor, numExperts: number): DeviceDispatch {
  if (indices.dtype !== 'i32' || indices.ndim !== 2)
    throw new Error(
      `dispatch: indices must be an i32 [T, k] tensor, got ${indices.dtype} [${indices.shape.join(', ')}]`,
    );
  const [offsets, counts, rows, permutation] = exec(DISPATCH_OP, [indices], { numExperts }) as [
    Tensor,
    Tensor,
    Tensor,
    Tensor,
  ];
  return { offsets, counts, rows, permutation };
}

/**
 * Selected experts (i32 [T, k]) and their combine weights' values ([T, k], no gradient) from the
 * scores [T, E] and the f32 correction bias [E] (or null), with the router's rule; `override` (host
 * experts, validated by the caller) replaces the selection. Third: i32 [1], the tokens whose scores
 * hold a NaN (counted on a GPU; the CPU throws naming the token).
 */
export function routeTensors(
  scores: Tensor,
  bias: Tensor | null,
  override: Int32Array | null,
  attrs: Omit<RouteAttrs, 'hasBias' | 'override'>,
): [Tensor, Tensor, Tensor] {
  const inputs = [scores];
  if (bias) inputs.push(bias);
  if (override) {
    const T = scores.shape[0]!;
    inputs.push(tensor(override, { shape: [T, attrs.k], dtype: 'i32', backend: scores.backend }));
  }
  const full: RouteAttrs = { ...attrs, hasBias: bias !== null, override: override !== null };
  return exec(ROUTE_OP, inputs, full) as [Tensor, Tensor, Tensor];
}
