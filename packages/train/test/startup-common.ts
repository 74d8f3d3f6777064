// The mid-size MoE model of the start-up memory test: routed experts dominate (~420 MB of f32), so a
// rank holding an eighth of them holds a small part of the model.
import { parseConfig, type ModelConfig } from '@dsv3/model';
import { PRESET_MODELS } from '../src/index.js';

export function midConfig(): ModelConfig {
  return parseConfig({
    ...PRESET_MODELS.tiny,
    hidden_size: 256,
    moe_intermediate_size: 512,
    n_routed_experts: 64,
    num_experts_per_tok: 4,
    num_hidden_layers: 4,
  });
}
