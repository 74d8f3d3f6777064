// A/B of two versions of the CPU paged-attention kernel on decode-shaped calls (S = 1, a V3 layer's
// heads and latent widths), in one process, alternating call by call: an earlier attention-cpu.ts
// (e.g. `git show REV:packages/mla/src/attention-cpu.ts > /tmp/old.ts`) against the current one.
// Prints the median µs per call of each and checks their outputs are bitwise equal.
// usage: npx tsx --conditions=@dsv3/source bench/paged-decode-ab.ts OLD.ts [--context 128] [--reps 301]
//        [--heads 8] [--latent 256] [--rope 32]
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import { cpu, CpuStorage, type KernelTensor } from '@dsv3/core';
import { randomUniform } from '../../core/src/testing.js';
import * as current from '../src/attention-cpu.js';

const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    context: { type: 'string', default: '128' },
    reps: { type: 'string', default: '301' },
    heads: { type: 'string', default: '8' },
    latent: { type: 'string', default: '256' },
    rope: { type: 'string', default: '32' },
  },
});
if (positionals.length !== 1) throw new Error('usage: paged-decode-ab.ts OLD_ATTENTION_CPU.ts [options]');
// The old file's imports, pointed at this tree (the same core module instance as the current file's).
const core = pathToFileURL(fileURLToPath(new URL('../../core/src/index.ts', import.meta.url))).href;
const attrs = pathToFileURL(fileURLToPath(new URL('../src/attention-attrs.ts', import.meta.url))).href;
const oldFile = join(mkdtempSync(join(tmpdir(), 'paged-ab-')), 'attention-old.ts');
writeFileSync(
  oldFile,
  readFileSync(positionals[0]!, 'utf8')
    .replaceAll("'@dsv3/core'", `'${core}'`)
    .replaceAll("'./attention-attrs.js'", `'${attrs}'`),
);
const old = (await import(pathToFileURL(oldFile).href)) as typeof current;

const [T, reps, H, C, R] = [values.context, values.reps, values.heads, values.latent, values.rope].map(Number) as [
  number,
  number,
  number,
  number,
  number,
];
const bs = 16;
const blocks = Math.ceil(T / bs) + 1;
const f32 = (shape: number[], seed: number): KernelTensor => ({
  storage: new CpuStorage(
    Float32Array.from(
      randomUniform(
        shape.reduce((a, b) => a * b, 1),
        seed,
      ),
    ),
  ),
  shape,
  dtype: 'f32',
});
const i32 = (shape: number[], a: Int32Array): KernelTensor => ({ storage: new CpuStorage(a), shape, dtype: 'i32' });
// Blocks in reverse order, so the gather walks a real page table.
const table = Int32Array.from({ length: blocks }, (_, i) => blocks - 1 - i);
const inputs = [
  f32([1, 1, H, C], 1),
  f32([1, 1, H, R], 2),
  f32([blocks, bs, C], 3),
  f32([blocks, bs, R], 4),
  i32([1, blocks], table),
  i32([1], Int32Array.of(T)),
];
const pagedAttrs = { scale: 1 / Math.sqrt(C + R), blockSize: bs };
const variants = [
  ['old', old.pagedAttentionCpu],
  ['new', current.pagedAttentionCpu],
] as const;
const times: number[][] = [[], []];
let outs: Float32Array[] = [];
for (let r = 0; r < reps; r++)
  variants.forEach(([, kernel], i) => {
    const t = performance.now();
    const [o] = kernel(cpu, inputs, pagedAttrs);
    times[i]!.push((performance.now() - t) * 1000);
    if (r === 0) outs[i] = (o!.storage as CpuStorage).data as Float32Array;
  });
const same = outs[0]!.every((v, j) => Object.is(v, outs[1]![j]));
outs = [];
const median = (a: number[]): number => [...a].sort((x, y) => x - y)[Math.floor(a.length / 2)]!;
variants.forEach(([name], i) =>
  console.log(`${name}: ${median(times[i]!).toFixed(1)} µs per call (context ${T}, ${H} heads, d_c ${C}, d_r ${R})`),
);
console.log(
  `new / old speed: ${(median(times[0]!) / median(times[1]!)).toFixed(2)}x; outputs ${same ? 'bitwise equal' : 'DIFFER'}`,
);
