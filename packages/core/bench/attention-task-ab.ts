// A/B of the training-attention job's task (gemm/training-attention-task.ts) in one process: an earlier
// tree's task file (self-contained: no imports) against this tree's, switched call by call on the calling
// thread's engine (one GEMM thread: every task runs there), at the tiny preset's layer shape (8 x 128
// tokens, 4 heads, nope 32 / rope 16 / v 32). Times the backward kernel alone (wall ms, min and median
// over the reps of each, and the median of new / old in each rep's adjacent pair of calls; the process's
// CPU clock ticks too coarsely for ~6 ms) and checks that both tasks' gradients are the same bits. This
// tree's job layout serves both (a task ignores the scratch regions it does not know).
//   taskset -c 1 npx tsx --conditions=@dsv3/source bench/attention-task-ab.ts OLD_TASK_FILE [--reps 60] [--seq 128]
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import { buildAttentionRowsModule } from '../src/cpu/attention-rows-simd.js';
import { cpu, raw } from '../src/cpu/backend.js';
import { getEngine } from '../src/cpu/gemm/runtime.js';
import { trainingAttentionTask } from '../src/cpu/gemm/training-attention-task.js';
import * as kernels from '../src/cpu/rope-attention-kernels.js';
import { setGemmThreads } from '../src/index.js';
import { ropeAttentionOperands } from './attention-operands.js';

const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: { reps: { type: 'string', default: '60' }, seq: { type: 'string', default: '128' } },
});
if (positionals.length !== 1) throw new Error('usage: attention-task-ab.ts OLD_TASK_FILE [--reps N]');
const old = (await import(pathToFileURL(positionals[0]!).href)) as {
  trainingAttentionTask: typeof trainingAttentionTask;
};
setGemmThreads(1);

// --seq S: 1024 / S batch rows (8 at the tiny preset's 128; 1 from 1024)
const S = Number(values.seq);
const B = Math.max(1, 1024 / S);
const { ins, dO, attrs } = ropeAttentionOperands(B, S);
const [o, lse] = kernels.ropeAttentionKernel(cpu, ins, attrs);

// The engine's task table entry, switched between the two tasks over its own memory and kernels.
const engine = getEngine() as unknown as {
  ex: Parameters<typeof trainingAttentionTask>[0] & { trainingAttention(f: Int32Array, ws: number): void };
  memory: WebAssembly.Memory;
  maxPages: number;
};
if (!engine) throw new Error('attention-task-ab: no wasm engine');
const rows = new WebAssembly.Instance(
  new WebAssembly.Module(buildAttentionRowsModule(engine.memory.buffer instanceof SharedArrayBuffer, engine.maxPages)),
  { env: { memory: engine.memory } },
).exports as unknown as Parameters<typeof trainingAttentionTask>[1];
const tasks = { old: old.trainingAttentionTask, new: trainingAttentionTask };

function backward(name: keyof typeof tasks): [number, Float32Array[]] {
  engine.ex.trainingAttention = (f, ws) => tasks[name](engine.ex, rows, engine.memory, f, ws);
  const t0 = performance.now();
  const grads = kernels.ropeAttentionBackwardKernel(cpu, [...ins, o!, lse!, dO], attrs);
  const t = performance.now() - t0;
  return [t, grads.map((t) => (raw(t) as Float32Array).slice())];
}

const bits = (a: Float32Array[]) => a.map((x) => Buffer.from(x.buffer, x.byteOffset, x.byteLength));
const ms = { old: [] as number[], new: [] as number[] };
const reps = Number(values.reps);
for (let i = 0; i < reps + 5; i++) {
  const got: Partial<Record<keyof typeof tasks, Float32Array[]>> = {};
  for (const n of i % 2 ? (['old', 'new'] as const) : (['new', 'old'] as const)) {
    const [t, grads] = backward(n);
    got[n] = grads;
    if (i >= 5) ms[n].push(t);
  }
  const [ga, gb] = [bits(got.old!), bits(got.new!)];
  if (ga.some((x, j) => !x.equals(gb[j]!))) throw new Error(`attention-task-ab: gradients differ at rep ${i}`);
}
const sorted = (a: number[]) => [...a].sort((x, y) => x - y);
const line = (n: keyof typeof ms) =>
  `${n} min ${sorted(ms[n])[0]!.toFixed(3)} median ${sorted(ms[n])[ms[n].length >> 1]!.toFixed(3)}`;
const ratios = sorted(ms.new.map((t, j) => t / ms.old[j]!));
console.log(
  `backward kernel wall ms over ${reps} reps each: ${line('old')}, ${line('new')}; ` +
    `new / old per rep: median ${ratios[ratios.length >> 1]!.toFixed(3)}; gradients bitwise equal`,
);
