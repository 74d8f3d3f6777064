// A greedy decode step's sampling on the CPU kernel: sampleCpu over one row of V logits at temperature
// 0 (argmax only), best of rounds. Extra arguments are other copies of sample-kernel-cpu.ts (e.g. a
// parent commit's, `git show REV:packages/mtp/src/sample-kernel-cpu.ts > src/old-sample.ts`), timed
// interleaved with the current one; every kernel must return the same id.
// usage: npx tsx --conditions=@dsv3/source bench/greedy-sample.ts [--vocab 129280] [KERNEL_FILE ...]
import { resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { CpuStorage, cpu, type KernelTensor } from '@dsv3/core';
import { sampleCpu } from '../src/sample-kernel-cpu.js';

const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: { vocab: { type: 'string', default: '129280' }, rounds: { type: 'string', default: '15' } },
});
const V = Number(values.vocab);
type Kernel = typeof sampleCpu;
const kernels: [string, Kernel][] = [['current', sampleCpu]];
for (const file of positionals)
  kernels.push([file, ((await import(resolve(file))) as { sampleCpu: Kernel }).sampleCpu]);
const t = (data: Float32Array | Int32Array | Uint32Array, shape: number[], dtype: KernelTensor['dtype']) => ({
  storage: new CpuStorage(data),
  shape,
  dtype,
});
const logits = Float32Array.from({ length: V }, (_, i) => Math.sin(i * 12.9898) * 10);
const inputs = [
  t(logits, [1, V], 'f32'),
  t(new Float32Array(1), [1], 'f32'), // temperature 0: greedy
  t(new Int32Array(1), [1], 'i32'),
  t(new Float32Array([1]), [1], 'f32'),
  t(new Uint32Array(2), [1, 2], 'u32'),
];
const best = kernels.map(() => Infinity);
const ids = kernels.map(() => -1);
const calls = 20;
for (let r = 0; r < Number(values.rounds); r++)
  kernels.forEach(([, k], j) => {
    const t0 = performance.now();
    for (let i = 0; i < calls; i++) ids[j] = ((k(cpu, inputs)[0]!.storage as CpuStorage).data as Int32Array)[0]!;
    best[j] = Math.min(best[j]!, (performance.now() - t0) / calls);
  });
if (ids.some((id) => id !== ids[0])) throw new Error(`greedy-sample: the kernels disagree: ids ${ids.join(', ')}`);
console.log(`greedy sampleCpu, V = ${V}, best of ${values.rounds} x ${calls} calls (id ${ids[0]}):`);
kernels.forEach(([name], j) => console.log(`  ${(best[j]! * 1000).toFixed(0).padStart(6)} us  ${name}`));
