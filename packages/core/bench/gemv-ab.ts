// A/B of two GEMV kernel generators in one process: an earlier gemv-kernel.ts (e.g. from
// `git show REV:packages/core/src/cpu/gemm/gemv-kernel.ts > /tmp/old.ts`) against the current one,
// each emitted into its own module over one memory and called directly on the calling thread,
// alternating call by call; prints median G weights/s and checks the outputs agree.
// usage: npx tsx --conditions=@dsv3/source bench/gemv-ab.ts OLD.ts [--n 2048] [--k 1024] [--m 1] [--reps 201] [--kinds f32,bf16,fp8]
// Pin it to one core (taskset -c 1) on a shared machine; n x k above the L3 size measures memory.
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import * as current from '../src/cpu/gemm/gemv-kernel.js';
import { enableRelaxedSimd } from '../src/cpu/gemm/sgemm-kernel.js';
import { ModuleBuilder } from '../src/cpu/gemm/wasm-emitter.js';

type Kind = current.WeightKind;
const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    n: { type: 'string', default: '2048' },
    k: { type: 'string', default: '1024' },
    m: { type: 'string', default: '1' },
    reps: { type: 'string', default: '201' },
    kinds: { type: 'string', default: 'f32,bf16,fp8' },
  },
});
if (positionals.length !== 1) throw new Error('usage: gemv-ab.ts OLD_GEMV_KERNEL.ts [options]');
// The old generator imports './wasm-emitter.js': point that at this tree's emitter.
const emitter = pathToFileURL(fileURLToPath(new URL('../src/cpu/gemm/wasm-emitter.ts', import.meta.url))).href;
const oldFile = join(mkdtempSync(join(tmpdir(), 'gemv-ab-')), 'gemv-old.ts');
writeFileSync(oldFile, readFileSync(positionals[0]!, 'utf8').replaceAll("'./wasm-emitter.js'", `'${emitter}'`));
const old = (await import(pathToFileURL(oldFile).href)) as typeof current;

const fma = enableRelaxedSimd();
const kinds = values.kinds.split(',') as Kind[];
const [n, k, m, reps] = [values.n, values.k, values.m, values.reps].map(Number) as [number, number, number, number];
const eb: Record<Kind, number> = { f32: 4, bf16: 2, fp8: 1 };
const W = 1 << 20,
  X = W + n * k * 4,
  Y = X + m * k * 4,
  XS = Y + m * n * 4,
  S = XS + current.fp8GemvWorkspace(m, k) + 64;
const sCols = Math.ceil(k / 128);
const pages = Math.ceil((S + Math.ceil(n / 128) * sCols * 4) / 65536) + 1;
const memory = new WebAssembly.Memory({ initial: pages, maximum: pages });
type Exports = Record<string, (...a: number[]) => void>;
const build = (gen: typeof current.genGemv): Exports => {
  const mb = new ModuleBuilder({
    module: 'env',
    name: 'memory',
    initialPages: pages,
    maximumPages: pages,
    shared: false,
  });
  for (const kind of kinds) gen(mb, kind, fma);
  return new WebAssembly.Instance(new WebAssembly.Module(mb.emit()), { env: { memory } }).exports as Exports;
};
const variants: [string, Exports][] = [
  ['old', build(old.genGemv)],
  ['new', build(current.genGemv)],
];
const u8 = new Uint8Array(memory.buffer),
  f32 = new Float32Array(memory.buffer);
for (let i = 0; i < n * k * 4; i++) u8[W + i] = (i * 37 + 11) & 0x3f; // finite f32 / bf16 / E4M3 values
for (let i = 0; i < m * k; i++) f32[X / 4 + i] = Math.sin(i);
f32.fill(0.01, S / 4, S / 4 + Math.ceil(n / 128) * sCols);
const call = (ex: Exports, kind: Kind): void => {
  const args = [X, m, k * 4, k, W, k * eb[kind], 0, n, Y, n * 4];
  if (kind === 'fp8') args.push(S, sCols * 4, 0, XS);
  ex[`gemv_${kind}`]!(...args);
};
const rates: Record<string, number[]> = {};
for (let r = 0; r < reps; r++)
  for (const kind of kinds)
    for (const [name, ex] of variants) {
      const t = performance.now();
      call(ex, kind);
      (rates[`${kind} ${name}`] ??= []).push((n * k) / ((performance.now() - t) / 1000) / 1e9);
    }
const median = (a: number[]): number => a.slice().sort((x, y) => x - y)[a.length >> 1]!;
console.log(`GEMV A/B m=${m} n=${n} k=${k}, ${fma ? 'relaxed FMA' : 'mul + add'}, G weights/s (medians of ${reps})`);
for (const kind of kinds) {
  const [a, b] = [median(rates[`${kind} old`]!), median(rates[`${kind} new`]!)];
  const outs = variants.map(([, ex]) => {
    call(ex, kind);
    return f32.slice(Y / 4, Y / 4 + m * n);
  });
  let diff = 0;
  for (let i = 0; i < m * n; i++)
    diff = Math.max(diff, Math.abs(outs[0]![i]! - outs[1]![i]!) / (Math.abs(outs[0]![i]!) + 1e-3));
  console.log(
    `  ${kind.padEnd(4)} old ${a.toFixed(2)}  new ${b.toFixed(2)}  new/old ${(b / a).toFixed(2)}  (max relative difference ${diff.toExponential(1)})`,
  );
}
