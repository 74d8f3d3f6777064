// Bitwise check of core's fused attention kernels against an earlier pair of kernel files
// (`git show REV:packages/core/src/cpu/X > DIR/X` for attention-kernels.ts and rope-attention-kernels.ts):
// ropeAttention (both rotary layouts) and causalAttention, forward and backward, f32 and f64, on 1 and 2
// GEMM threads, with all (batch, head) pairs, one or three per GEMM call, over ragged shapes. Exits
// non-zero at the first element that differs (Object.is: -0 and NaN payloads count).
//   npx tsx --conditions=@dsv3/source bench/attention-bitwise.ts DIR
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import type { KernelTensor } from '../src/backend.js';
import * as currentPlain from '../src/cpu/attention-kernels.js';
import { cpu, raw, wrap } from '../src/cpu/backend.js';
import * as current from '../src/cpu/rope-attention-kernels.js';
import { Rng, setAttentionScoreBudget, setGemmThreads } from '../src/index.js';

const dirArg = process.argv[2];
if (!dirArg) throw new Error('usage: attention-bitwise.ts DIR_WITH_OLD_KERNELS');
// The old files' relative imports resolve against this tree's src/cpu, except the old pair's own.
const here = fileURLToPath(new URL('../src/cpu/', import.meta.url));
const dir = mkdtempSync(join(tmpdir(), 'attention-bitwise-'));
for (const f of ['attention-kernels.ts', 'rope-attention-kernels.ts'])
  writeFileSync(
    join(dir, f),
    readFileSync(join(dirArg, f), 'utf8').replace(/from '(\.\.?\/[^']+)'/g, (m, p: string) =>
      p === './attention-kernels.js' ? m : `from '${pathToFileURL(join(here, p)).href}'`,
    ),
  );
const old = (await import(pathToFileURL(join(dir, 'rope-attention-kernels.ts')).href)) as typeof current;
const oldPlain = (await import(pathToFileURL(join(dir, 'attention-kernels.ts')).href)) as typeof currentPlain;

/** Throws at the first output whose elements differ from the old kernels'. */
function same(what: string, a: KernelTensor[], b: KernelTensor[]): void {
  a.forEach((t, j) => {
    const [x, y] = [raw(t), raw(b[j]!)];
    const at = x.findIndex((v, i) => !Object.is(v, y[i]));
    if (at >= 0) throw new Error(`${what}: output ${j} differs at element ${at} (${x[at]} vs ${y[at]})`);
  });
}

const SHAPES = [
  [8, 128, 4, 32, 16, 32], // the tiny preset's layer
  [2, 5, 3, 3, 4, 5],
  [3, 70, 5, 24, 8, 20],
  [1, 9, 2, 5, 2, 3],
  [5, 33, 2, 7, 6, 9],
];
let cases = 0;
for (const threads of [1, 2])
  for (const pairs of [0, 1, 3])
    for (const dt of ['f32', 'f64'] as const)
      for (const [B, S, H, dn, dr, dv] of SHAPES as [number, number, number, number, number, number][]) {
        setGemmThreads(threads);
        setAttentionScoreBudget(pairs ? pairs * S * S : undefined);
        const rng = new Rng(B * 100 + S);
        const r = (shape: number[]) => {
          const a = Float64Array.from({ length: shape.reduce((x, y) => x * y) }, () => rng.normal());
          return wrap(dt, shape, dt === 'f32' ? Float32Array.from(a) : a);
        };
        const ins = [r([B, S, H, dn + dr]), r([B, S, H, dn + dv]), r([B, S, dr]), r([1, S, dr / 2]), r([1, S, dr / 2])];
        const dO = r([B, S, H, dv]);
        const label = `[${B},${S},${H}] dn ${dn} dr ${dr} dv ${dv} ${dt}, ${threads} thread(s), ${pairs || 'all'} pairs per call`;
        for (const interleave of [false, true]) {
          const [a, b] = [old, current].map((k) => {
            const [o, lse] = k.ropeAttentionKernel(cpu, ins, { scale: 0.3, interleave });
            return [
              o!,
              lse!,
              ...k.ropeAttentionBackwardKernel(cpu, [...ins, o!, lse!, dO], { scale: 0.3, interleave }),
            ];
          });
          same(`ropeAttention ${label}, interleave ${interleave}`, a!, b!);
          cases++;
        }
        const plain = [r([B, S, H, dn + dr]), r([B, S, H, dn + dr]), r([B, S, H, dv])];
        const [a, b] = [oldPlain, currentPlain].map((k) => {
          const [o, lse] = k.causalAttentionKernel(cpu, plain, { scale: 0.3 });
          return [o!, lse!, ...k.causalAttentionBackwardKernel(cpu, [...plain, o!, lse!, dO], { scale: 0.3 })];
        });
        same(`causalAttention ${label}`, a!, b!);
        cases++;
      }
setAttentionScoreBudget();
console.log(`bitwise equal to ${dirArg}'s kernels: ${cases} cases (outputs, log-sum-exps and gradients)`);
process.exit(0); // the GEMM's worker threads would keep the process alive
