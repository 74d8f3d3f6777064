// Checkpoint handling: FP8 dequantize-on-load vs HF, save → load round trip, and the clear errors of bad checkpoints.
import {
  copyFileSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  rmSync,
  writeFileSync,
  statSync,
  truncateSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { noGrad, readSafetensors, serializeSafetensors, tensor } from '@dsv3/core';
import {
  countParameters,
  kvBytesPerToken,
  kvElementsPerToken,
  loadModel,
  parseConfig,
  presetConfig,
  saveModel,
} from '../src/index.js';
import { compare } from './helpers.js';

const coreFixtures = join(import.meta.dirname, '../../core/test/fixtures');
const goldens = readSafetensors(join(import.meta.dirname, 'fixtures/tiny-v3-goldens.safetensors'));
const ids = tensor(goldens.get('input_ids').data, { shape: [2, 40], dtype: 'i32' });
const tmp = mkdtempSync(join(tmpdir(), 'dsv3-model-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

/** A copy of tiny-v3 with its tensor table edited. */
function corrupted(
  name: string,
  edit: (t: Record<string, { dtype: never; shape: number[]; data: never }>) => void,
): string {
  const dir = join(tmp, name);
  const src = readSafetensors(join(coreFixtures, 'tiny-v3/model.safetensors'));
  const all = Object.fromEntries(src.names().map((n) => [n, src.get(n)])) as never;
  src.close();
  edit(all);
  require_dir(dir);
  writeFileSync(join(dir, 'model.safetensors'), serializeSafetensors(all));
  copyFileSync(join(coreFixtures, 'tiny-v3/config.json'), join(dir, 'config.json'));
  return dir;
}
function require_dir(d: string): void {
  rmSync(d, { recursive: true, force: true });
  mkdirSync(d, { recursive: true });
}

describe('FP8 checkpoint, dequantized on load', () => {
  it('matches hf.fp8_dequant.logits', () => {
    const model = loadModel(join(coreFixtures, 'tiny-v3-fp8'));
    const logits = noGrad(() => model.forward(ids).logits).dataSync();
    const c = compare(logits, goldens.get('hf.fp8_dequant.logits').data as Float32Array);
    console.log(`fp8 dequant logits: rel ${c.rel.toExponential(2)}, max abs ${c.maxAbs.toExponential(2)}`);
    expect(c.rel).toBeLessThanOrEqual(1e-5);
  });
});

describe('bad checkpoints fail with one clear error, nothing loaded', () => {
  it('a missing tensor', () => {
    const dir = corrupted(
      'missing',
      (t) => delete (t as Record<string, unknown>)['model.layers.2.mlp.experts.7.up_proj.weight'],
    );
    expect(() => loadModel(dir)).toThrow(/model\.layers\.2\.mlp\.experts\.7\.up_proj\.weight: missing/);
  });
  it('a wrong shape and an unexpected tensor, listed together', () => {
    const dir = corrupted('shape', (t) => {
      const w = t['model.norm.weight'] as unknown as { shape: number[]; data: Uint16Array };
      (t as Record<string, unknown>)['model.norm.weight'] = { dtype: 'bf16', shape: [64], data: w.data.slice(0, 64) };
      (t as Record<string, unknown>)['model.extra'] = { dtype: 'f32', shape: [1], data: new Float32Array([1]) };
    });
    expect(() => loadModel(dir)).toThrow(
      /model\.norm\.weight: shape \[64\], expected \[128\][\s\S]*model\.extra: unexpected tensor/,
    );
  });
  it('a truncated file', () => {
    const dir = corrupted('truncated', () => {});
    const f = join(dir, 'model.safetensors');
    truncateSync(f, statSync(f).size - 1000);
    expect(() => loadModel(dir)).toThrow(/truncated|beyond|past the end/i);
  });
  it('an invalid config', () => {
    const dir = corrupted('config', () => {});
    const cfg = JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8'));
    cfg.n_group = 3;
    writeFileSync(join(dir, 'config.json'), JSON.stringify(cfg));
    expect(() => loadModel(dir)).toThrow(/n_group: n_routed_experts \(16\) must be divisible by n_group \(3\)/);
  });
});

describe('save and accounting', () => {
  it('saves in the published layout and loads back to the same logits', async () => {
    const model = loadModel(join(coreFixtures, 'tiny-v3'));
    const dir = join(tmp, 'saved');
    await saveModel(model, dir, { maxShardBytes: 3_000_000 });
    const back = loadModel(dir);
    const a = noGrad(() => model.forward(ids).logits).dataSync();
    const b = noGrad(() => back.forward(ids).logits).dataSync();
    expect(compare(b, a).rel).toBe(0);
    expect(parseConfig(JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8')))).toEqual(model.config);
  });

  it('counts the published V3 at 671B total / ~37B activated, 35,136 latent elements per token', () => {
    const c = presetConfig('deepseek-v3');
    const p = countParameters(c);
    expect(p.total / 1e9).toBeCloseTo(671.0, 0);
    expect(p.activated / 1e9).toBeGreaterThan(36.5);
    expect(p.activated / 1e9).toBeLessThan(38);
    expect(kvElementsPerToken(c)).toBe(35136);
    expect(kvBytesPerToken(c)).toBe(70272);
    const tiny = loadModel(join(coreFixtures, 'tiny-v3'));
    // every main-model tensor of the state dict (parameters and the gates' correction biases)
    const main = Object.entries(tiny.stateDict()).filter(([n]) => !n.startsWith('mtp.'));
    expect(countParameters(tiny.config).total).toBe(main.reduce((s, [, t]) => s + t.size, 0));
  });
});
