// The dsv3-model CLI end to end (run from source through tsx, as a user would after building).
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { readSafetensors } from '@dsv3/core';
import { kvBytesPerToken, loadModel, readConfig } from '../src/index.js';
import { compare } from './helpers.js';

const root = join(import.meta.dirname, '../../..');
const dir = join(root, 'packages/core/test/fixtures/tiny-v3');
const run = (...args: string[]): string =>
  execFileSync(
    join(root, 'node_modules/.bin/tsx'),
    ['--conditions=@dsv3/source', join(root, 'packages/model/src/cli.ts'), ...args],
    { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] },
  );

describe('dsv3-model CLI', () => {
  it('generate --json reproduces HF greedy generation; logits writes safetensors', () => {
    const goldens = readSafetensors(join(import.meta.dirname, 'fixtures/tiny-v3-goldens.safetensors'));
    const want = Array.from(goldens.get('hf.generate').data as Int32Array).slice(0, 32);
    const out = JSON.parse(
      run(
        'generate',
        dir,
        '--prompt-ids',
        want.slice(0, 8).join(','),
        '--max-new-tokens',
        '24',
        '--temperature',
        '0',
        '--json',
      ),
    );
    expect(out).toEqual({ ids: [want] });

    const tmp = mkdtempSync(join(tmpdir(), 'dsv3-cli-'));
    try {
      const ids = Array.from(goldens.get('input_ids').data as Int32Array);
      const rows = [ids.slice(0, 40).join(','), ids.slice(40, 80).join(',')].join(';');
      run('logits', dir, '--input-ids', rows, '--out', join(tmp, 'l.safetensors'));
      const l = readSafetensors(join(tmp, 'l.safetensors')).get('logits');
      expect(l.shape).toEqual([2, 40, 1024]);
      expect(compare(l.data as Float32Array, goldens.get('hf.logits').data as Float32Array).rel).toBeLessThan(1e-5);
    } finally {
      rmSync(tmp, { recursive: true, force: true });
    }
    expect(() => run('generate', dir, '--prompt-ids', '1,x', '--max-new-tokens', '2')).toThrow(/"x" is not a token id/);
    expect(() => run('generate', dir, '--prompt-ids', '1', '--max-new-tokens', '2', '--dtype', 'f8')).toThrow(
      /--dtype <d>' argument 'f8' is invalid. Allowed choices are f32, bf16, f16, fp8/,
    );
    expect(() => run('generate', dir, '--prompt-ids', '1', '--max-new-tokens', '2', '--dtype', 'f16')).toThrow(
      /weights 'f16' is the WebGPU f16 compute mode/,
    );
  });

  it('bench --json reports load and warm-up apart, and the weights held and KV cache its peak RSS is read against', () => {
    const bench = (dtype: string, ...more: string[]) =>
      JSON.parse(
        run('bench', dir, '--prefill', '16', '--decode', '4', '--dtype', dtype, '--warmup', '8', '--json', ...more)
          .trim()
          .split('\n')
          .at(-1)!,
      ) as Record<string, number>;
    const f32 = bench('f32');
    const bf16 = bench('bf16');
    // mapped from the file's pages by default (the CPU keeps resident weights), --no-map-weights reads
    // them: the same greedy tokens; --warmup 0 times the cold first prefill
    const read = bench('bf16', '--no-map-weights', '--warmup', '0') as unknown as {
      map_weights: boolean;
      warmup_s: number;
      tokens: number[];
    };
    if (process.env.DSV3_REQUIRE_NATIVE_KERNELS === '1' && process.platform === 'linux')
      expect((bf16 as unknown as { map_weights: boolean }).map_weights).toBe(true);
    expect(read.map_weights).toBe(false);
    // f32 weights from this BF16 checkpoint are widened at load: nothing to map
    expect((f32 as unknown as { map_weights: boolean }).map_weights).toBe(false);
    expect(read.tokens).toEqual((bf16 as unknown as { tokens: number[] }).tokens);
    expect(read.warmup_s).toBeLessThan(0.05);
    for (const r of [f32, bf16]) {
      expect(r.load_s).toBeGreaterThan(0);
      expect(r.warmup_s).toBeGreaterThan(0);
      expect(r.peak_rss_bytes).toBeGreaterThan(r.weight_bytes!);
      // the latent cache: (kv_lora_rank + qk_rope_head_dim) f32 per layer and token, prefill + decode tokens
      expect(r.kv_cache_bytes).toBe(kvBytesPerToken(readConfig(dir), 4) * 20);
    }
    const params = [...loadModel(dir).namedParameters()].reduce((n, [, p]) => n + p.value.size, 0);
    expect(f32.weight_bytes).toBe(4 * params);
    // bf16: the projections, head and (stored bf16) embedding at 2 bytes; norms, routers, kv_b_proj f32
    expect(bf16.weight_bytes).toBeLessThan(0.6 * f32.weight_bytes!);
    expect(bf16.weight_bytes).toBeGreaterThan(0.5 * f32.weight_bytes!);
  });
});
