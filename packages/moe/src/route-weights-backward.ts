// The combine weights' backward into the gate's scores (routingWeightsTensor in gate.ts) as one CPU
// kernel for f32: the composed rule's ten small ops on [T, k] and [T, E] tensors (takeAlong, two sums,
// adds, products, quotients, a zero fill and scatterAlong), each an exec with its own output, become
// one pass per token. Every step is the composed op's arithmetic: the sums in f64 in slot order
// rounded once, each elementwise op one f32 rounding of the exact result, the scatter summed in f64
// from +0 per score and rounded once — so its bits.
import { CpuStorage, takeF32, type Kernel, type KernelTensor } from '@dsv3/core';

export const ROUTE_WEIGHTS_BACKWARD_OP = 'moe.routeWeightsBackward';

export interface RouteWeightsBackwardAttrs {
  normTopkProb: boolean;
  scale: number;
}

const f32 = Math.fround;
const TINY = f32(1e-20); // the denominator's guard, as the f32 scalar the composed add lifts it to

/**
 * [g [T, k] f32, scores [T, E] f32, indices [T, k] i32] → dScores [T, E]:
 * normTopkProb: ds_i = c · (g_i − Σ_j g_j s_j / S) for chosen i, S = Σ_chosen s + 1e-20, c = scale / S;
 * else ds_i = scale · g_i; 0 for the experts not chosen (summed where an expert is chosen twice).
 */
export const routeWeightsBackwardCpu: Kernel = (_b, [g, scores, indices], attrs) => {
  const { normTopkProb, scale } = attrs as unknown as RouteWeightsBackwardAttrs;
  const [T, E] = scores!.shape as [number, number];
  const k = g!.shape[1]!;
  if (g!.dtype !== 'f32' || scores!.dtype !== 'f32' || indices!.dtype !== 'i32')
    throw new TypeError(
      `${ROUTE_WEIGHTS_BACKWARD_OP}: f32 g and scores, i32 indices expected, got ${g!.dtype}, ${scores!.dtype}, ${indices!.dtype}`,
    );
  if (g!.shape[0] !== T || indices!.shape[0] !== T || indices!.shape[1] !== k)
    throw new RangeError(
      `${ROUTE_WEIGHTS_BACKWARD_OP}: g [${g!.shape}] and indices [${indices!.shape}] do not match scores [${scores!.shape}]`,
    );
  const G = (g!.storage as CpuStorage).data as Float32Array;
  const s = (scores!.storage as CpuStorage).data as Float32Array;
  const idx = (indices!.storage as CpuStorage).data as Int32Array;
  const out = takeF32(T * E);
  out.fill(0);
  const sc = f32(scale);
  const acc = new Float64Array(E); // one token's chosen scores, +0 then each chosen slot's gradient added
  for (let t = 0; t < T; t++) {
    const row = t * k;
    let c = 0;
    let r = 0;
    if (normTopkProb) {
      let sel = 0; // Σ s_j in f64, rounded once (the sum op)
      let gsel = 0; // Σ f32(g_j · s_j) likewise
      for (let j = 0; j < k; j++) {
        const e = index(idx[row + j]!, E);
        sel += s[t * E + e]!;
        gsel += f32(G[row + j]! * s[t * E + e]!);
      }
      const S = f32(f32(sel) + TINY);
      r = f32(f32(gsel) / S);
      c = f32(sc / S);
    }
    for (let j = 0; j < k; j++) acc[index(idx[row + j]!, E)] = 0; // only the chosen scores are read
    for (let j = 0; j < k; j++) {
      const e = index(idx[row + j]!, E);
      acc[e]! += normTopkProb ? f32(f32(G[row + j]! - r) * c) : f32(G[row + j]! * sc);
    }
    for (let j = 0; j < k; j++) {
      const e = idx[row + j]!;
      out[t * E + e] = acc[e]!;
    }
  }
  return [{ storage: new CpuStorage(out), shape: [T, E], dtype: 'f32' } satisfies KernelTensor];
};

function index(e: number, E: number): number {
  if (!(e >= 0 && e < E))
    throw new RangeError(`${ROUTE_WEIGHTS_BACKWARD_OP}: expert index ${e} is out of range [0, ${E})`);
  return e;
}
