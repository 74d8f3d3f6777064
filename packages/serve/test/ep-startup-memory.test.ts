// An EP serving rank's start-up memory: loading only its own experts (startupKeep) peaks at what it
// holds, where loading the whole model first peaked at the whole model. Each load runs in its own
// process (peak RSS is per process), over a mid-size checkpoint whose routed experts dominate.
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { DeepseekV3ForCausalLM, parseConfig, saveModel } from '@dsv3/model';
import { describe, expect, it } from 'vitest';

describe('EP serving start-up memory', () => {
  it('rank 1 of 4 peaks at the experts it holds, not the whole model', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'dsv3-ep-startup-'));
    try {
      const config = parseConfig({
        model_type: 'deepseek_v3',
        vocab_size: 256,
        hidden_size: 256,
        intermediate_size: 512,
        moe_intermediate_size: 256,
        num_hidden_layers: 4,
        first_k_dense_replace: 1,
        num_attention_heads: 4,
        n_shared_experts: 1,
        n_routed_experts: 64,
        num_experts_per_tok: 4,
        n_group: 4,
        topk_group: 2,
        q_lora_rank: 64,
        kv_lora_rank: 64,
        qk_nope_head_dim: 32,
        qk_rope_head_dim: 16,
        v_head_dim: 32,
        max_position_embeddings: 128,
        num_nextn_predict_layers: 0,
      });
      await saveModel(new DeepseekV3ForCausalLM(config, { seed: 2 }), dir, { dtype: 'f32' });
      const child = fileURLToPath(new URL('./fixtures/ep-startup-memory.ts', import.meta.url));
      const run = (mode: string) =>
        JSON.parse(
          execFileSync(process.execPath, ['--conditions=@dsv3/source', '--import', 'tsx', child], {
            env: { ...process.env, MODE: mode, DIR: dir, RANK: '1', RANKS: '4' },
            encoding: 'utf8',
          }),
        ) as { growth: number; held: number; all: number; parameters: number };
      const whole = run('whole');
      const own = run('own');
      const MB = (b: number) => `${(b / 2 ** 20).toFixed(0)} MiB`;
      console.log(
        `EP start-up peak RSS growth, model ${MB(whole.parameters * 4)} (experts ${MB(whole.all)}): whole load ${MB(whole.growth)}, own experts ${MB(own.growth)} (holds ${MB(own.held)} of experts)`,
      );
      // the same experts end up held either way; a quarter of them (64 routed + shared over 4 ranks)
      expect(own.held).toBe(whole.held);
      expect(own.held).toBeLessThan(whole.all / 3);
      const dense = whole.parameters * 4 - whole.all;
      // the whole load touches every expert; the own load saves at least 3/4 of the experts it skips.
      // Compared with each other, the runtime's own start-up bytes (modules, JIT, heap: ~40 MiB, more on a
      // fresh clone) cancel out — an absolute bound on this small model is dominated by them
      expect(whole.growth).toBeGreaterThan(whole.all + dense);
      expect(whole.growth - own.growth).toBeGreaterThan(0.75 * (whole.all - own.held));
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }, 300_000);
});
