// Activation memory kept between forward and backward, with and without selective recomputation:
//   node --expose-gc --import tsx --conditions=@dsv3/source bench/recompute.ts [tiny|mini] [micro-batch]
// Measures the growth of ArrayBuffer memory (where CPU tensors live) from before the forward to after
// the loss, after a full GC, for one micro-batch of the preset's sequence length. Each variant runs in
// its own process, so freed buffers of the other cannot blur the count.
import { execFileSync } from 'node:child_process';
import { byteLevelTokenizer, deepseekV3Tokenizer } from '@dsv3/model';
import {
  applyPrecision,
  applyRecompute,
  batchTensor,
  buildModel,
  parseTrainConfig,
  PRESET_CONFIGS,
  TokenStream,
  type TrainPreset,
} from '../src/index.js';

const preset = (process.argv[2] ?? 'tiny') as TrainPreset;
const micro = Number(process.argv[3] ?? PRESET_CONFIGS[preset].batch.microBatch);
const gc = (globalThis as { gc?: () => void }).gc;
if (!gc) throw new Error('run with node --expose-gc');
const cfg = parseTrainConfig(PRESET_CONFIGS[preset]);
const tok = preset === 'tiny' ? byteLevelTokenizer() : await deepseekV3Tokenizer();
const seqs = await new TokenStream({
  path: null,
  tokenizer: tok,
  seqLen: cfg.batch.seqLen,
  seed: 0,
  evalFraction: 0,
  shuffleBuffer: 8,
}).next(micro);
const mem = () => {
  gc();
  return process.memoryUsage().arrayBuffers;
};

async function retained(recompute: boolean): Promise<number> {
  const model = buildModel(cfg);
  applyPrecision(model, cfg.precision);
  if (recompute) applyRecompute(model);
  model.train();
  const ids = batchTensor(seqs, undefined);
  const before = mem();
  const { loss } = model.loss(ids, { mtpLambda: 0.3 });
  const kept = mem() - before;
  loss.backward();
  return kept;
}

const mode = process.argv[4];
if (mode) {
  console.log(await retained(mode === 'on'));
  process.exit(0);
}
const child = (m: string) =>
  Number(
    execFileSync(process.execPath, [...process.execArgv, process.argv[1]!, preset, String(micro), m], {
      encoding: 'utf8',
    })
      .trim()
      .split('\n')
      .at(-1),
  );
const off = child('off');
const on = child('on');
const mb = (b: number) => (b / 2 ** 20).toFixed(1);
console.log(
  `| ${preset} (${cfg.precision}), ${micro} x ${cfg.batch.seqLen} tokens | ${mb(off)} MiB | ${mb(on)} MiB | ${((1 - on / off) * 100).toFixed(1)}% |`,
);
