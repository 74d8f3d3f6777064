// Training mode: main + MTP loss back-propagates into every part (MLA, experts, gate, MTP) and falls.
import { describe, expect, it } from 'vitest';
import { AdamW, crossEntropy, narrow, tensor, Rng } from '@dsv3/core';
import { DeepseekV3ForCausalLM, parseConfig, PRESETS } from '../src/index.js';

const config = parseConfig({
  ...PRESETS['tiny-v3'],
  vocab_size: 64,
  hidden_size: 32,
  intermediate_size: 64,
  moe_intermediate_size: 16,
  num_hidden_layers: 2,
  q_lora_rank: 32,
  kv_lora_rank: 16,
  qk_nope_head_dim: 8,
  qk_rope_head_dim: 8,
  v_head_dim: 8,
  n_routed_experts: 8,
  n_group: 4,
  topk_group: 2,
  num_experts_per_tok: 2,
});

describe('training form', () => {
  it('main + MTP loss reaches every parameter group and decreases with AdamW', async () => {
    const model = new DeepseekV3ForCausalLM(config, { seed: 1 });
    const rng = new Rng(2);
    // A learnable pattern: t_{i+1} = (t_i * 5 + 3) mod V.
    const seq = (): number[] => {
      const s = [rng.integer(0, 64)];
      while (s.length < 12) s.push((s.at(-1)! * 5 + 3) % 64);
      return s;
    };
    const ids = tensor(Int32Array.from([...seq(), ...seq(), ...seq(), ...seq()]), { shape: [4, 12], dtype: 'i32' });
    const opt = new AdamW(model.parameters(), { lr: 1e-2 });
    const losses: number[] = [];
    for (let step = 0; step < 25; step++) {
      opt.zeroGrad();
      const { loss, mtp } = model.loss(ids, { mtpLambda: 0.3 });
      loss.backward();
      if (step === 0) {
        expect(mtp).not.toBeNull();
        const grads = Object.fromEntries(model.namedParameters().map(([n, p]) => [n, p.grad !== null]));
        for (const n of [
          'model.layers.0.self_attn.kv_b_proj.weight',
          'model.layers.1.mlp.gate.weight',
          'model.layers.1.mlp.shared_experts.up_proj.weight',
          'mtp.0.eh_proj.weight',
          'mtp.0.block.self_attn.q_b_proj.weight',
          'lm_head.weight',
          'model.embed_tokens.weight',
        ]) {
          expect(grads[n], n).toBe(true);
        }
      }
      opt.stepUpdate();
      losses.push(await loss.item());
    }
    expect(losses.at(-1)!).toBeLessThan(losses[0]! * 0.6);
    // the MTP head learned something about the token after next, too
    const out = model.forward(ids, { mtp: true });
    const mtpCe = await crossEntropy(narrow(out.mtpLogits![0]!, 1, 0, 10), narrow(ids, 1, 2, 10)).item();
    expect(mtpCe).toBeLessThan(Math.log(64));
  });
});
