// What i16 prefill activations (loadModel's prefillActivations, core's integer weight GEMM) change on a
// checkpoint, against f32 activations on the same loaded weights (the mode is process-wide, so one load
// serves both): last-position logits of the bench's 512-token prompt (relative L2 error, max |diff| over
// max |logit|, argmax, top-5 overlap), the bench's greedy tokens after that prefill, and the greedy
// continuation of --prompt-ids.
// usage: npx tsx --conditions=@dsv3/source bench/prefill-activations-accuracy.ts CKPT_DIR [--dtype bf16|fp8]
//        [--prefill 512] [--decode 16] [--prompt-ids 1,2,3] [--threads N]
import { parseArgs } from 'node:util';
import { noGrad, noGradAsync, setGemmThreads, setPrefillActivations, tensor } from '@dsv3/core';
import { benchGeneration } from '../src/bench.js';
import { generate, loadModel } from '../src/index.js';

const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    dtype: { type: 'string', default: 'bf16' },
    prefill: { type: 'string', default: '512' },
    decode: { type: 'string', default: '16' },
    'prompt-ids': { type: 'string', default: '' },
    threads: { type: 'string', default: '' },
  },
});
const weights = values.dtype;
if (weights !== 'bf16' && weights !== 'fp8') throw new Error(`--dtype is bf16 or fp8, got ${weights}`);
if (!positionals[0]) throw new Error('usage: prefill-activations-accuracy.ts CKPT_DIR [--dtype bf16|fp8]');
if (values.threads) setGemmThreads(Number(values.threads));
const prefill = Number(values.prefill);
const decode = Number(values.decode);
const model = noGrad(() => loadModel(positionals[0]!, { weights }));
const V = model.config.vocabSize;
const prompt = Int32Array.from({ length: prefill }, (_, i) => (i * 7919 + 13) % V); // benchGeneration's

async function run(mode: 'f32' | 'i16') {
  setPrefillActivations(mode);
  const logits = await noGradAsync(async () => {
    const cache = model.newCache(prefill + 16);
    const seqs = [cache.allocateSequence()];
    const out = model.step(cache, seqs, tensor(prompt, { shape: [1, prefill], dtype: 'i32' }), { logits: 'last' });
    const data = Float32Array.from((await out.logits.data()) as Float32Array);
    cache.dispose();
    return data;
  });
  const bench = await benchGeneration(model, { prefill, decode });
  const ids = values['prompt-ids'] ? values['prompt-ids'].split(',').map(Number) : [];
  const gen = ids.length ? (await generate(model, [ids], { maxNewTokens: 16, temperature: 0 })).newTokens[0]! : [];
  return { logits, tokens: bench.tokens, gen };
}

const base = await run('f32');
const i16 = await run('i16');
let num = 0;
let den = 0;
let maxDiff = 0;
let maxAbs = 0;
for (let i = 0; i < V; i++) {
  const d = i16.logits[i]! - base.logits[i]!;
  num += d * d;
  den += base.logits[i]! ** 2;
  maxDiff = Math.max(maxDiff, Math.abs(d));
  maxAbs = Math.max(maxAbs, Math.abs(base.logits[i]!));
}
const top = (l: Float32Array, n: number): number[] =>
  Array.from(l.keys())
    .sort((a, b) => l[b]! - l[a]!)
    .slice(0, n);
const [t5a, t5b] = [top(base.logits, 5), top(i16.logits, 5)];
const same = (a: readonly number[], b: readonly number[]): number => a.filter((v, i) => v === b[i]).length;
console.log(
  JSON.stringify({
    dtype: weights,
    prefill,
    logits_rel_l2: Math.sqrt(num / den),
    logits_max_diff_over_max: maxDiff / maxAbs,
    argmax_same: t5a[0] === t5b[0],
    top5_overlap: t5a.filter((t) => t5b.includes(t)).length,
    bench_tokens_same: `${same(base.tokens, i16.tokens)}/${base.tokens.length}`,
    bench_tokens_f32: base.tokens.join(' '),
    bench_tokens_i16: i16.tokens.join(' '),
    generate_same: `${same(base.gen, i16.gen)}/${base.gen.length}`,
    generate_f32: base.gen.join(' '),
    generate_i16: i16.gen.join(' '),
  }),
);
