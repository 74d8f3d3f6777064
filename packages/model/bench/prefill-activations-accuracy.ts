// What the prefill's activation format changes on a checkpoint, against f32 activations on the same
// loaded weights (the modes are process-wide, so one load serves all): 'i16' (core's integer weight
// GEMM) and two reference points on exactly the products the i16 route takes (bf16 / FP8 weights, at
// least i16MinRows rows, i.e. the prefill's): 'bf16' (x rounded to bf16, as llama.cpp's bf16 path
// computes) and 'fp8' (x through the fp8 package's 1x128 E4M3 activation quantizer, the W8A8 recipe:
// model/test/fp8-w8a8.test.ts checks the W8A8 path equals f32 products of these dequantized
// activations). Per mode: last-position logits of the bench's 512-token prompt (relative L2 error,
// max |diff| over max |logit|, argmax, top-5 overlap), the bench's greedy tokens after that prefill,
// and the greedy continuation of --prompt-ids.
// usage: npx tsx --conditions=@dsv3/source bench/prefill-activations-accuracy.ts CKPT_DIR [--dtype bf16|fp8]
//        [--modes i16,bf16,fp8] [--prefill 512] [--decode 64] [--prompt-ids 1,2,3] [--threads N]
import { parseArgs } from 'node:util';
import { noGrad, noGradAsync, setGemmThreads, setPrefillActivations, tensor } from '@dsv3/core';
import { dequantizeActivation, quantizeActivation } from '@dsv3/fp8';
import { gemmConfig } from '../../core/src/cpu/gemm/config.js';
import { benchGeneration } from '../src/bench.js';
import { generate, loadModel } from '../src/index.js';

const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    dtype: { type: 'string', default: 'bf16' },
    prefill: { type: 'string', default: '512' },
    decode: { type: 'string', default: '64' },
    modes: { type: 'string', default: 'i16,bf16,fp8' },
    'prompt-ids': { type: 'string', default: '' },
    threads: { type: 'string', default: '' },
    prompts: { type: 'string', default: '1' },
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
// Prompt 0 is benchGeneration's; the others shift it, so one routing flip does not make the whole figure
const prompts = Array.from({ length: Number(values.prompts) }, (_, p) =>
  Int32Array.from({ length: prefill }, (_, i) => (i * 7919 + 13 + p * 104729) % V),
);

/** x rounded to the nearest bf16 (ties to even), in place. */
function roundToBf16(x: Float32Array): void {
  const u = new Uint32Array(x.buffer, x.byteOffset, x.length);
  for (let i = 0; i < u.length; i++) {
    const b = u[i]!;
    u[i] = (b + 0x7fff + ((b >>> 16) & 1)) & 0xffff0000;
  }
}

/** x through DeepSeek's 1x128 E4M3 activation quantization and back (the W8A8 operand), in place. */
function roundToFp8Tiles(x: Float32Array, m: number, k: number): void {
  const q = quantizeActivation(x, [m, k]);
  x.set(dequantizeActivation(q.q, q.scales, [m, k]));
}

/**
 * x on the i16 route's activation grid alone, `bits` bits with the sign (scale max|x| / (2^(bits-1) − 1)
 * per row and 128 depths, round to nearest), in place: what the activations' quantization costs apart
 * from the weights'.
 */
const roundToIntGrid =
  (bits: number) =>
  (x: Float32Array, m: number, k: number): void => {
    const top = 2 ** (bits - 1) - 1;
    for (let r = 0; r < m; r++)
      for (let b0 = 0; b0 < k; b0 += 128) {
        const [lo, hi] = [r * k + b0, r * k + Math.min(k, b0 + 128)];
        let max = 0;
        for (let i = lo; i < hi; i++) max = Math.max(max, Math.abs(x[i]!));
        if (max === 0) continue;
        const scale = Math.fround(max / top);
        for (let i = lo; i < hi; i++) x[i] = Math.round(x[i]! / scale) * scale;
      }
  };

type Mode = 'f32' | 'i16' | 'bf16' | 'fp8' | `a${number}`;
const modes = values.modes.split(',') as Mode[];
for (const m of modes)
  if (!['i16', 'bf16', 'fp8'].includes(m) && !/^a([2-9]|1[0-9]|2[0-4])$/.test(m))
    throw new Error(`--modes takes i16, bf16, fp8, aBITS (2-24: the i16 route's activation grid alone) (got ${m})`);

async function run(mode: Mode) {
  setPrefillActivations(mode === 'i16' ? 'i16' : 'f32');
  gemmConfig.roundPrefillActivations =
    mode === 'bf16'
      ? roundToBf16
      : mode === 'fp8'
        ? roundToFp8Tiles
        : mode.startsWith('a')
          ? roundToIntGrid(Number(mode.slice(1)))
          : null;
  const logits: Float32Array[] = [];
  for (const prompt of prompts)
    logits.push(
      await noGradAsync(async () => {
        const cache = model.newCache(prefill + 16);
        const seqs = [cache.allocateSequence()];
        const ids = tensor(prompt, { shape: [1, prefill], dtype: 'i32' });
        const out = model.step(cache, seqs, ids, { logits: 'last' });
        const data = Float32Array.from((await out.logits.data()) as Float32Array);
        cache.dispose();
        return data;
      }),
    );
  const bench = await benchGeneration(model, { prefill, decode });
  const ids = values['prompt-ids'] ? values['prompt-ids'].split(',').map(Number) : [];
  const gen = ids.length ? (await generate(model, [ids], { maxNewTokens: 16, temperature: 0 })).newTokens[0]! : [];
  return { logits, tokens: bench.tokens, gen };
}

const top = (l: Float32Array, n: number): number[] =>
  Array.from(l.keys())
    .sort((a, b) => l[b]! - l[a]!)
    .slice(0, n);
/** Last-position logits of a mode against f32 activations' on the same prompt. */
function compareLogits(base: Float32Array, got: Float32Array) {
  let num = 0;
  let den = 0;
  let maxDiff = 0;
  let maxAbs = 0;
  for (let i = 0; i < V; i++) {
    const d = got[i]! - base[i]!;
    num += d * d;
    den += base[i]! ** 2;
    maxDiff = Math.max(maxDiff, Math.abs(d));
    maxAbs = Math.max(maxAbs, Math.abs(base[i]!));
  }
  const [t5a, t5b] = [top(base, 5), top(got, 5)];
  return {
    rel: Math.sqrt(num / den),
    maxRel: maxDiff / maxAbs,
    argmax: t5a[0] === t5b[0],
    top5: t5a.filter((t) => t5b.includes(t)).length,
  };
}
/** Leading tokens two greedy runs share (after the first difference they answer different prompts). */
const agree = (a: readonly number[], b: readonly number[]): number => {
  let i = 0;
  while (i < a.length && a[i] === b[i]) i++;
  return i;
};
const base = await run('f32');
console.log(
  JSON.stringify({ dtype: weights, mode: 'f32', bench_tokens: base.tokens.join(' '), generate: base.gen.join(' ') }),
);
for (const mode of modes) {
  const r = await run(mode);
  const errs = prompts.map((_, p) => compareLogits(base.logits[p]!, r.logits[p]!));
  const rel = errs.map((e) => e.rel).sort((a, b) => a - b);
  const e0 = errs[0]!;
  console.log(
    JSON.stringify({
      dtype: weights,
      mode,
      prefill,
      logits_rel_l2: e0.rel,
      logits_max_diff_over_max: e0.maxRel,
      argmax_same: e0.argmax,
      top5_overlap: e0.top5,
      ...(prompts.length > 1 && {
        prompts: prompts.length,
        rel_l2_median: rel[Math.floor((rel.length - 1) / 2)],
        rel_l2_mean: rel.reduce((a, b) => a + b, 0) / rel.length,
        rel_l2_max: rel[rel.length - 1],
        argmax_same_count: errs.filter((e) => e.argmax).length,
      }),
      bench_tokens_agree: `${agree(base.tokens, r.tokens)}/${base.tokens.length}`,
      generate_agree: `${agree(base.gen, r.gen)}/${base.gen.length}`,
      bench_tokens: r.tokens.join(' '),
      generate: r.gen.join(' '),
    }),
  );
}
