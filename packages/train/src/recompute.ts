// Selective recomputation (DeepSeek-V3 report §3.2.3): RMSNorm, the MLA up-projections and SwiGLU
// keep none of their intermediate activations in the forward; the backward runs them again (with
// recording on) and back-propagates through the fresh copy. Only the module's input is kept.
import {
  backward,
  backwardContributions,
  isGradEnabled,
  noGrad,
  record,
  RMSNorm,
  SwiGLU,
  withGrad,
  type Module,
  type Tensor,
} from '@dsv3/core';
import { MLA } from '@dsv3/mla';
import type { DeepseekV3ForCausalLM } from '@dsv3/model';

/** y = fn(x) without recording fn's graph; its backward recomputes fn(x) and back-propagates through it. */
export function recomputed(fn: (x: Tensor) => Tensor, x: Tensor, params: readonly Tensor[]): Tensor {
  if (!isGradEnabled() || !(x.requiresGrad || params.some((p) => p.requiresGrad))) return fn(x);
  const out = noGrad(() => fn(x));
  // x's gradient as the separate contributions of fn's ops: the outer backward adds them to x's
  // pending gradient one by one, in the order it would have without recomputation, so the sums round
  // the same (pre-summing them here regroups x's sum and changes the gradients in the last bit).
  const parts = (g: Tensor): (readonly Tensor[] | null)[] => {
    const xr = x.detach();
    xr.requireGrad(x.requiresGrad);
    // Parameters are leaves: the inner backward accumulates their gradients directly.
    const xParts = withGrad(() => {
      const y = fn(xr);
      if (x.requiresGrad) return backwardContributions(y, g, xr);
      backward(y, g);
      return null;
    });
    return [xParts, ...params.map(() => null)];
  };
  return record(
    out,
    'recompute',
    [x, ...params],
    (g) => {
      const [xParts, ...rest] = parts(g);
      const sum = xParts?.length ? noGrad(() => xParts.slice(1).reduce((a, b) => a.add(b), xParts[0]!)) : null;
      return [sum, ...rest.map(() => null)];
    },
    parts,
  );
}

function wrap(mod: Module & { forward(x: Tensor): Tensor }): void {
  const inner = mod.forward.bind(mod);
  // Parameters are read at call time: the optimizer replaces their tensors between steps.
  mod.forward = (x: Tensor): Tensor =>
    recomputed(
      inner,
      x,
      mod.parameters().map((p) => p.value),
    );
}

/** Turns recomputation on for every RMSNorm, MLA up-projection (q_b_proj, kv_b_proj) and SwiGLU; returns how many. */
export function applyRecompute(model: DeepseekV3ForCausalLM): number {
  let n = 0;
  for (const [, mod] of model.namedModules()) {
    if (mod instanceof RMSNorm || mod instanceof SwiGLU) {
      wrap(mod);
      n++;
    } else if (mod instanceof MLA) {
      for (const up of [mod.qBProj, mod.kvBProj]) {
        if (up) {
          wrap(up);
          n++;
        }
      }
    }
  }
  return n;
}
