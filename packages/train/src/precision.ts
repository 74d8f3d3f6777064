// Precision recipes, applied to a built model. They touch exactly the tensors DeepSeek-V3's FP8
// checkpoints store in FP8 (every attention projection, dense MLP and expert); the embedding, output
// head, norms, gate, MTP eh_proj and the attention core stay in f32 as in the report.
//   fp32  nothing changes.
//   bf16  each of those GEMMs sees bf16-rounded operands (input, weight, and the gradients flowing
//         back through them), accumulating in f32: what BF16 tensor-core training computes.
//   fp8   each of those layers runs as @dsv3/fp8's FP8Linear over the same f32 master weight
//         (Fprop/Dgrad/Wgrad in E4M3, 1x128 activation tiles, 128x128 weight blocks).
// Routed experts take the recipe on their grouped GEMMs (MoE.expertRecipe: the same arithmetic per
// expert, the segment bounds staying on the device), so both recipes train on every backend.
import { cast, Linear, type Tensor } from '@dsv3/core';
import { FP8Linear } from '@dsv3/fp8';
import { checkpointName, checkpointSpecs, type DeepseekV3ForCausalLM } from '@dsv3/model';
import { MoE } from '@dsv3/moe';

export type Precision = 'fp32' | 'bf16' | 'fp8';

const bf16Round = (t: Tensor): Tensor => cast(cast(t, 'bf16'), t.dtype);

/** Applies the recipe; returns how many projections it changed. */
export function applyPrecision(model: DeepseekV3ForCausalLM, precision: Precision): number {
  if (precision === 'fp32') return 0;
  const quantizable = new Set(
    checkpointSpecs(model.config, { mtp: true })
      .filter((s) => s.quantizable)
      .map((s) => s.name),
  );
  let changed = 0;
  for (const [name, mod] of model.namedModules()) {
    // Routed experts: their grouped GEMMs run the recipe themselves (device-side segments, any backend).
    if (mod instanceof MoE) mod.expertRecipe = precision;
    if (!(mod instanceof Linear) || !quantizable.has(checkpointName(model.config, `${name}.weight`))) continue;
    changed++;
    if (name.includes('.mlp.experts.')) continue;
    const lin = mod;
    if (precision === 'bf16') {
      lin.forward = (x: Tensor): Tensor => {
        const y = bf16Round(x).matmul(bf16Round(lin.weight.value), { transB: true });
        return lin.bias ? y.add(lin.bias.value) : y;
      };
    } else {
      if (lin.bias) throw new Error(`fp8 recipe: ${name} has a bias, which DeepSeek-V3's projections do not`);
      const fp8 = new FP8Linear(lin.inFeatures, lin.outFeatures, { block: 128, std: 0 });
      // The FP8 layer computes with the Linear's own f32 master weight (one Parameter, one optimizer slot).
      Object.defineProperty(fp8, 'weight', { value: lin.weight, writable: false });
      lin.forward = (x: Tensor): Tensor => fp8.forward(x);
    }
  }
  return changed;
}
