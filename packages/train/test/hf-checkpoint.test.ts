// A checkpoint the trainer writes is what Hugging Face transformers loads as it is: the committed
// fixture (written by the trainer from fixtures/hf-checkpoint/train.json) gives HF's logits within 1e-5,
// and a fresh run of the same config still writes exactly that layout.
import { readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { loadSafetensors, noGrad, readShardedCheckpoint } from '@dsv3/core';
import { relativeError } from '@dsv3/core/testing';
import { loadModel, loadTokenizer } from '@dsv3/model';
import { parseTrainConfig, train } from '../src/index.js';
import { tempDir } from './helpers.js';

const FIX = join(__dirname, 'fixtures', 'hf-checkpoint');
const CKPT = join(FIX, 'checkpoint');

describe('trainer checkpoints in Hugging Face transformers', () => {
  it("HF logits of the trainer's checkpoint equal @dsv3/model's within 1e-5, and HF tokenizes like us", async () => {
    const golden = loadSafetensors(join(FIX, 'golden.safetensors'));
    const tok = await loadTokenizer(CKPT);
    const texts = ['The jury said it was a fine election.'];
    expect(tok.encode(texts[0]!)).toEqual([...(await golden['hf.token_ids_full_0']!.data())]);
    const model = loadModel(CKPT);
    model.eval();
    const logits = noGrad(() => model.forward(golden.input_ids!).logits);
    const rel = relativeError(await logits.data(), await golden['hf.logits']!.data());
    expect(rel).toBeLessThan(1e-5); // measured 2026-12: see README
  });

  it("a fresh run of the fixture's config writes the same files, tensors, shapes and config", async () => {
    const cfg = parseTrainConfig(JSON.parse(readFileSync(join(FIX, 'train.json'), 'utf8')));
    const r = await train({ config: cfg, outDir: join(tempDir('hf'), 'run') });
    const fresh = r.lastCheckpoint!;
    expect(readdirSync(fresh).sort()).toEqual(
      [...readdirSync(CKPT), 'optimizer.safetensors', 'trainer_state.json'].sort(),
    );
    for (const f of ['config.json', 'tokenizer.json', 'tokenizer_config.json']) {
      expect(JSON.parse(readFileSync(join(fresh, f), 'utf8')), f).toEqual(
        JSON.parse(readFileSync(join(CKPT, f), 'utf8')),
      );
    }
    const a = readShardedCheckpoint(fresh);
    const b = readShardedCheckpoint(CKPT);
    expect(a.names()).toEqual(b.names());
    for (const n of a.names())
      expect([a.info(n).dtype, a.info(n).shape], n).toEqual([b.info(n).dtype, b.info(n).shape]);
    a.close();
    b.close();
  }, 120_000);
});
