// The W8A8 reference point for prefill-activations-accuracy.ts, through the repo's own W8A8 path on an FP8
// checkpoint (loadModel's fp8: 'w8a8': every FP8 projection as block-scaled FP8 GEMMs over online 1x128
// activation quantization, prefill and decode), against the same bytes kept resident (weights 'fp8') with
// f32 activations and with the i16 route: last-position logits of the bench's 512-token prompt (relative
// L2 error, argmax) and the greedy continuation of --prompt-ids.
// usage: npx tsx --conditions=@dsv3/source bench/prefill-w8a8-reference.ts FP8_CKPT_DIR [--prefill 512]
//        [--prompt-ids 1,2,3]
import { parseArgs } from 'node:util';
import { noGrad, noGradAsync, setPrefillActivations, tensor } from '@dsv3/core';
import { type DeepseekV3ForCausalLM, generate, loadModel } from '../src/index.js';

const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: { prefill: { type: 'string', default: '512' }, 'prompt-ids': { type: 'string', default: '' } },
});
if (!positionals[0]) throw new Error('usage: prefill-w8a8-reference.ts FP8_CKPT_DIR [--prefill 512]');
const prefill = Number(values.prefill);
const ids = values['prompt-ids'] ? values['prompt-ids'].split(',').map(Number) : [];

async function run(model: DeepseekV3ForCausalLM) {
  const V = model.config.vocabSize;
  const prompt = Int32Array.from({ length: prefill }, (_, i) => (i * 7919 + 13) % V); // benchGeneration's
  const logits = await noGradAsync(async () => {
    const cache = model.newCache(prefill + 16);
    const out = model.step(cache, [cache.allocateSequence()], tensor(prompt, { shape: [1, prefill], dtype: 'i32' }), {
      logits: 'last',
    });
    const data = Float32Array.from((await out.logits.data()) as Float32Array);
    cache.dispose();
    return data;
  });
  const gen = ids.length ? (await generate(model, [ids], { maxNewTokens: 16, temperature: 0 })).newTokens[0]! : [];
  return { logits, gen };
}

const argmax = (l: Float32Array): number => l.reduce((best, v, i) => (v > l[best]! ? i : best), 0);
function report(mode: string, base: Awaited<ReturnType<typeof run>>, r: Awaited<ReturnType<typeof run>>, s: number) {
  let num = 0;
  let den = 0;
  for (let i = 0; i < base.logits.length; i++) {
    num += (r.logits[i]! - base.logits[i]!) ** 2;
    den += base.logits[i]! ** 2;
  }
  let agree = 0;
  while (agree < base.gen.length && base.gen[agree] === r.gen[agree]) agree++;
  console.log(
    JSON.stringify({
      mode,
      seconds: s,
      logits_rel_l2: Math.sqrt(num / den),
      argmax_same: argmax(base.logits) === argmax(r.logits),
      generate_agree: `${agree}/${base.gen.length}`,
      generate: r.gen.join(' '),
    }),
  );
}

const timed = async (f: () => Promise<Awaited<ReturnType<typeof run>>>) => {
  const t = performance.now();
  const r = await f();
  return [r, (performance.now() - t) / 1000] as const;
};
const resident = noGrad(() => loadModel(positionals[0]!, { weights: 'fp8' }));
setPrefillActivations('f32');
const [base, tb] = await timed(() => run(resident));
report('f32', base, base, tb);
setPrefillActivations('i16');
const [i16, ti] = await timed(() => run(resident));
report('i16', base, i16, ti);
setPrefillActivations('f32');
const w8a8Model = noGrad(() => loadModel(positionals[0]!, { fp8: 'w8a8' }));
const [w8a8, tw] = await timed(() => run(w8a8Model));
report('w8a8', base, w8a8, tw);
