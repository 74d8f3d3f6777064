// The recipe on the tiny preset and the built-in corpus: the loss falls well below what a model
// without context can reach, and the fp8 recipe trains like bf16.
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import {
  parseTrainConfig,
  PRESET_CONFIGS,
  readMetrics,
  train,
  type EvalRecord,
  type StepRecord,
} from '../src/index.js';
import { tempDir } from './helpers.js';

const STEPS = 30;
// Byte-unigram entropy of the untagged Brown corpus (5.97M bytes): 3.08 nats. A model that only learned
// byte frequencies cannot go below it; the uniform start is ln 258 = 5.55.
const UNIGRAM_ENTROPY = 3.08;

async function tinyRun(precision: 'bf16' | 'fp8'): Promise<{ train: number; eval: number; first: number }> {
  const config = parseTrainConfig({
    ...PRESET_CONFIGS.tiny,
    precision,
    steps: STEPS,
    intervals: { log: 1, eval: STEPS, evalBatches: 4, checkpoint: STEPS, keepLast: 1 },
  });
  const r = await train({ config, outDir: join(tempDir(precision), 'run') });
  const recs = readMetrics(r.metricsPath);
  const tr = recs.filter((x): x is StepRecord => x.kind === 'train');
  const last5 = tr.slice(-5).map((x) => x.mainLoss);
  return {
    first: tr[0]!.mainLoss,
    train: last5.reduce((a, b) => a + b, 0) / 5,
    eval: recs.filter((x): x is EvalRecord => x.kind === 'eval').at(-1)!.evalLoss,
  };
}

describe('tiny preset on the built-in corpus', () => {
  let bf16: { train: number; eval: number; first: number };

  it(`train and eval loss fall below the byte-unigram entropy (${UNIGRAM_ENTROPY} nats) within ${STEPS} steps`, async () => {
    bf16 = await tinyRun('bf16');
    expect(bf16.first).toBeGreaterThan(5.3);
    expect(bf16.train).toBeLessThan(UNIGRAM_ENTROPY);
    expect(bf16.eval).toBeLessThan(UNIGRAM_ENTROPY);
  }, 1_200_000);

  it("the fp8 recipe runs end to end and its loss stays within 1% of bf16's (measured: train 0.15%, eval 0.38%)", async () => {
    const fp8 = await tinyRun('fp8');
    expect(Math.abs(fp8.train - bf16.train) / bf16.train).toBeLessThan(0.01);
    expect(Math.abs(fp8.eval - bf16.eval) / bf16.eval).toBeLessThan(0.01);
  }, 1_200_000);
});
