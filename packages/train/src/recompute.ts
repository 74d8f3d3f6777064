// Selective recomputation (DeepSeek-V3 report §3.2.3): RMSNorm, the MLA up-projections and SwiGLU
// keep none of their intermediate activations in the forward; the backward runs them again (with
// recording on) and back-propagates through the fresh copy. Only the module's input is kept.
import {
  backward,
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
  return record(out, 'recompute', [x, ...params], (g) => {
    const xr = x.detach();
    xr.requireGrad(x.requiresGrad);
    // Parameters are leaves: the inner backward accumulates their gradients directly.
    withGrad(() => backward(fn(xr), g));
    return [x.requiresGrad ? xr.grad : null, ...params.map(() => null)];
  });
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
