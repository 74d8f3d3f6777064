// The owner's side of expert parallelism: the received rows go through the experts this rank holds
// (its placement's slots), and only those: the weights of experts held elsewhere are never read, so
// a rank that released them (parameters sharded by expert) computes the same thing. FP8 (W8A8) experts
// run through the grouped block-scaled GEMM over the owned experts' bytes, as the one-process layer does.
import { concat, indexSelect, narrow, tensor, type SwiGLU, type Tensor } from '@dsv3/core';
import { dispatchPlan, Fp8ExpertProjection, groupedLinear, swiglu, type Fp8Experts, type MoE } from '@dsv3/moe';
import type { ExpertPlacement } from './placement.js';

/** The logical experts with a slot on `rank`, ascending. */
export function ownedExperts(p: ExpertPlacement, rank: number): number[] {
  return [...new Set(p.physToLogical.filter((_, s) => p.physRank[s] === rank))].sort((a, b) => a - b);
}

/**
 * Rows [R, H] with their logical expert ids → each row through its expert, in the received order.
 * Every id must be one of `owned` (dispatch sends a row only to a rank holding its expert).
 */
export function runOwnedExperts(moe: MoE, owned: readonly number[], rows: Tensor, ids: Int32Array): Tensor {
  const R = rows.shape[0]!;
  if (R === 0) return rows;
  const local = new Map(owned.map((e, i) => [e, i]));
  const localIds = Int32Array.from(ids, (e) => {
    const i = local.get(e);
    if (i === undefined)
      throw new Error(`expert parallelism: received a row for expert ${e}, which this rank does not hold`);
    return i;
  });
  const plan = dispatchPlan(localIds, 1, owned.length);
  const be = rows.backend;
  const xs = indexSelect(rows, tensor(plan.sortedTokens, { dtype: 'i32', backend: be }), 0);
  const offs = plan.offsets;
  let y: Tensor;
  if (moe.expertLinear === 'fp8' || moe.expertsAsModules) {
    // (the one-process layer runs its experts' modules in this case, FP8 weights or not: so does the owner)
    const parts: Tensor[] = [];
    owned.forEach((e, i) => {
      const c = offs[i + 1]! - offs[i]!;
      if (c > 0) parts.push(moe.experts.at(e).forward(narrow(xs, 0, offs[i]!, c)));
    });
    y = concat(parts, 0);
  } else if (moe.fp8Experts) {
    const { gate, up, down } = ownedFp8(moe.fp8Experts, owned);
    const offsT = tensor(Int32Array.from(offs), { dtype: 'i32', backend: be });
    y = down.forward(swiglu(gate.forward(xs, offsT), up.forward(xs, offsT), { impl: moe.impl }), offsT);
  } else {
    const ex = owned.map((e) => moe.experts.at(e) as SwiGLU);
    const opt = { impl: moe.impl };
    const g = groupedLinear(
      xs,
      ex.map((m) => m.gateProj.weight.value),
      offs,
      opt,
    );
    const u = groupedLinear(
      xs,
      ex.map((m) => m.upProj.weight.value),
      offs,
      opt,
    );
    y = groupedLinear(
      swiglu(g, u, opt),
      ex.map((m) => m.downProj.weight.value),
      offs,
      opt,
    );
  }
  return indexSelect(y, tensor(plan.inverse, { dtype: 'i32', backend: be }), 0);
}

/**
 * The FP8 projections over the owned experts' weights only, kept per layer and owned set (so a WebGPU
 * rank stacks them on the device once, not per call).
 */
const ownedProjections = new WeakMap<Fp8Experts, Map<string, Fp8Experts>>();
function ownedFp8(all: Fp8Experts, owned: readonly number[]): Fp8Experts {
  let byOwned = ownedProjections.get(all);
  if (!byOwned) ownedProjections.set(all, (byOwned = new Map()));
  const key = owned.join(',');
  let sub = byOwned.get(key);
  if (!sub) {
    const pick = (p: Fp8ExpertProjection) =>
      new Fp8ExpertProjection(
        owned.map((e) => p.weights[e]!),
        { block: p.block, scaleFormat: p.scaleFormat },
      );
    sub = { gate: pick(all.gate), up: pick(all.up), down: pick(all.down) };
    byOwned.set(key, sub);
  }
  return sub;
}
