// `npm run bench` for @dsv3/model: prefill and decode tokens/s (batch 1 and 16) through the absorbed
// latent cache, for the tiny-v3 checkpoint and a larger random V3-shaped config, on the CPU and (when
// an adapter exists) WebGPU; peak resident memory.
import { join } from 'node:path';
import { noGradAsync, tensor, type Backend, defaultBackend } from '@dsv3/core';
import { DeepseekV3ForCausalLM, loadModel, presetConfig, type DeepseekV3ForCausalLM as Model } from '../src/index.js';

const args = process.argv.slice(2);
const quick = args.includes('--quick');

interface Row {
  model: string;
  backend: string;
  batch: number;
  prefillTokS: number;
  decodeTokS: number;
}

async function measure(
  model: Model,
  name: string,
  backend: Backend,
  batch: number,
  promptLen: number,
  decodeSteps: number,
): Promise<Row> {
  return noGradAsync(async () => {
    const V = model.config.vocabSize;
    const cache = model.newCache(batch * (promptLen + decodeSteps + 16));
    const seqs = Array.from({ length: batch }, () => cache.allocateSequence());
    const prompt = Int32Array.from({ length: batch * promptLen }, (_, i) => (i * 7919) % V);
    let t = performance.now();
    const pre = model.step(cache, seqs, tensor(prompt, { shape: [batch, promptLen], dtype: 'i32', backend }));
    await pre.logits.data();
    const prefill = (batch * promptLen) / ((performance.now() - t) / 1000);
    t = performance.now();
    for (let s = 0; s < decodeSteps; s++) {
      const { logits } = model.step(
        cache,
        seqs,
        tensor(
          Int32Array.from({ length: batch }, (_, i) => (s * 31 + i) % V),
          { shape: [batch, 1], dtype: 'i32', backend },
        ),
      );
      await logits.data();
    }
    const decode = (batch * decodeSteps) / ((performance.now() - t) / 1000);
    return { model: name, backend: backend.name, batch, prefillTokS: prefill, decodeTokS: decode };
  });
}

async function backends(): Promise<Backend[]> {
  const list: Backend[] = [defaultBackend()];
  if (args.includes('--no-gpu')) return list;
  try {
    const { createNodeWebGpuBackend } = await import('@dsv3/core/node');
    const gpu = await createNodeWebGpuBackend();
    console.log(`webgpu adapter: ${JSON.stringify(gpu.adapterInfo)}`);
    list.push(gpu);
  } catch (e) {
    console.log(`WebGPU skipped: ${(e as Error).message.split('\n')[0]}`);
  }
  return list;
}

const rows: Row[] = [];
for (const backend of await backends()) {
  const tiny = loadModel(join(import.meta.dirname, '../../core/test/fixtures/tiny-v3'), { backend });
  const small = new DeepseekV3ForCausalLM(presetConfig('small-v3'), { backend, seed: 0, std: 0.02 });
  for (const [name, model] of [
    ['tiny-v3 (checkpoint)', tiny],
    ['small-v3 (random: hidden 1024, 8 layers, 64 experts)', small],
  ] as const) {
    for (const batch of [1, 16]) {
      const r = await measure(model, name, backend, batch, quick ? 16 : 64, quick ? 4 : 16);
      rows.push(r);
      console.log(
        `${r.model.padEnd(54)} ${r.backend.padEnd(7)} batch ${String(batch).padStart(2)}  prefill ${r.prefillTokS.toFixed(1).padStart(8)} tok/s  decode ${r.decodeTokS.toFixed(1).padStart(8)} tok/s`,
      );
    }
  }
  backend.dispose?.();
}
console.log(`peak RSS ${(process.resourceUsage().maxRSS / 1024).toFixed(0)} MiB`);
