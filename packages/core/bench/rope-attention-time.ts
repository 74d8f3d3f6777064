// Times the current tree's fused ropeAttention, forward + backward, at the tiny preset's layer shape
// (8 x 128 tokens, 4 heads, nope 32 / rope 16 / v 32): medians over `reps` (after 5 warm-up reps) of the
// process's CPU (worker threads included) and the forward's and backward's wall. For A/Bs of the
// training-attention job across trees (its task, the job, the engine's module): one process per
// variant, alternating (attention-ab.ts swaps only the two kernel files within one process).
//   npx tsx --conditions=@dsv3/source bench/rope-attention-time.ts [--threads 2] [--reps 40] [--tag NAME]
import { parseArgs } from 'node:util';
import { cpu } from '../src/cpu/backend.js';
import * as kernels from '../src/cpu/rope-attention-kernels.js';
import { setGemmThreads } from '../src/index.js';
import { ropeAttentionOperands } from './attention-operands.js';

const { values } = parseArgs({
  options: {
    threads: { type: 'string', default: '1' },
    reps: { type: 'string', default: '40' },
    tag: { type: 'string', default: '' },
  },
});
setGemmThreads(Number(values.threads));
const [B, S] = [8, 128];
const { ins, dO, attrs } = ropeAttentionOperands(B, S);
const reps = Number(values.reps);
const times: number[][] = [];
for (let i = 0; i < reps + 5; i++) {
  const [c0, w0] = [process.cpuUsage(), performance.now()];
  const [o, lse] = kernels.ropeAttentionKernel(cpu, ins, attrs);
  const w1 = performance.now();
  kernels.ropeAttentionBackwardKernel(cpu, [...ins, o!, lse!, dO], attrs);
  const [u, w2] = [process.cpuUsage(c0), performance.now()];
  if (i >= 5) times.push([(u.user + u.system) / 1000, w1 - w0, w2 - w1]);
}
const median = (j: number) => [...times.map((t) => t[j]!)].sort((a, b) => a - b)[times.length >> 1]!.toFixed(2);
console.log(`${values.tag} CPU ${median(0)} ms, forward wall ${median(1)} ms, backward wall ${median(2)} ms (medians)`);
