// Times loadModel alone (no warm-up) on a checkpoint and prints the process's peak RSS, the weights it
// holds (every parameter in its storage dtype) and how much of the process's memory sits on transparent
// huge pages (Linux). For load A/Bs between trees: run it alternating, one process per load.
// usage: tsx --conditions=@dsv3/source bench/load-time.ts CKPT_DIR [f32|bf16|fp8]
import { existsSync, readFileSync } from 'node:fs';
import { gemmInfo, noGrad, setGemmThreads } from '@dsv3/core';
import { storedWeightBytes } from '../src/bench.js';
import { loadModel } from '../src/loader.js';

const [dir, weights = 'f32'] = process.argv.slice(2);
if (!dir || !['f32', 'bf16', 'fp8'].includes(weights)) throw new Error('usage: load-time.ts CKPT_DIR [f32|bf16|fp8]');
setGemmThreads(2);
const t = performance.now();
const model = noGrad(() => loadModel(dir, { weights: weights as 'f32' | 'bf16' | 'fp8' }));
const loadS = (performance.now() - t) / 1000;
const rollup = '/proc/self/smaps_rollup';
const huge = existsSync(rollup)
  ? Number(/AnonHugePages:\s+(\d+)/.exec(readFileSync(rollup, 'utf8'))?.[1] ?? 0) * 1024
  : 0;
const gib = (b: number): string => (b / 2 ** 30).toFixed(3);
console.log(
  `${weights} load ${loadS.toFixed(2)} s, peak RSS ${gib(process.resourceUsage().maxRSS * 1024)} GiB, weights held ${gib(storedWeightBytes(model))} GiB, on huge pages ${gib(huge)} GiB (engine advised: ${gemmInfo().hugePages})`,
);
