// MoE layer forward on the CPU at the V3-mini MoE shape (hidden 1024, 64 experts of width 256, top-6 of
// 8 groups keeping 4, one shared expert), for T = 1, 16, 512 tokens: median and minimum milliseconds per forward (the minimum is the steadier figure on a loaded machine).
// `--src DIR` loads the layer from another copy of this package's sources (e.g. the previous commit's,
// to compare before/after in interleaved processes):
//
//   taskset -c 1 npx tsx --conditions=@dsv3/source bench/layer-cpu.ts [--src .bench-base/src] [--tokens 1,16,512]
import { noGrad, Rng, tensor } from '@dsv3/core';
import { resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { V3_MINI_MOE } from './v3-mini-moe';

const args = process.argv.slice(2);
const arg = (name: string): string | undefined => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? args[i + 1] : undefined;
};
const src = arg('src') ?? new URL('../src', import.meta.url).pathname;
const tokens = (arg('tokens') ?? '1,16,512').split(',').map(Number);
const mod = (await import(pathToFileURL(resolve(src, 'index.ts')).href)) as typeof import('../src/index');

const H = V3_MINI_MOE.hiddenSize;
const moe = new mod.MoE(V3_MINI_MOE, { seed: 1 });
moe.gate.setBias(new Rng(2).fillNormal(new Float32Array(64), 0, 0.05));
const results: Record<string, number> = {};
for (const T of tokens) {
  const x = tensor(new Rng(3 + T).fillNormal(new Float32Array(T * H), 0, 1), { shape: [T, H] });
  const iters = T >= 512 ? 5 : T >= 16 ? 30 : 100;
  const times: number[] = [];
  noGrad(() => moe.forward(x).dataSync());
  for (let i = 0; i < iters; i++) {
    const t0 = performance.now();
    noGrad(() => moe.forward(x).dataSync());
    times.push(performance.now() - t0);
  }
  times.sort((a, b) => a - b);
  results[`T=${T} median`] = times[times.length >> 1]!;
  results[`T=${T} min`] = times[0]!;
}
console.log(JSON.stringify({ src, ms: results }));
