// Times the fused ropeAttention forward (the training-attention job) at a prefill's shape — V3-mini's
// MHA-form prefill: 1 x 512 tokens, 8 heads, nope 64 / rope 32 (qk 96), v 64, causal — as MLA's
// freshPromptMha calls it: the minimum and median wall of `reps` calls after 5 warm-up calls, and the
// process's CPU a call (worker threads included). For A/Bs run old / new trees' copies alternately.
//   npx tsx --conditions=@dsv3/source bench/prefill-attention-time.ts [--threads 1] [--reps 40] [--S 512] [--tag NAME]
import { parseArgs } from 'node:util';
import { cpu, raw, wrap } from '../src/cpu/backend.js';
import { releaseResidentOutput } from '../src/cpu/resident-outputs.js';
import * as kernels from '../src/cpu/rope-attention-kernels.js';
import { Rng, setGemmThreads } from '../src/index.js';

const { values } = parseArgs({
  options: {
    threads: { type: 'string', default: '1' },
    reps: { type: 'string', default: '40' },
    S: { type: 'string', default: '512' },
    tag: { type: 'string', default: '' },
  },
});
setGemmThreads(Number(values.threads));
const [B, S, H, dn, dr, dv] = [1, Number(values.S), 8, 64, 32, 64];
const rng = new Rng(1);
const r = (shape: number[], sd = 1) =>
  wrap(
    'f32',
    shape,
    Float32Array.from({ length: shape.reduce((a, b) => a * b) }, () => sd * rng.normal()),
  );
const ins = [r([B, S, H, dn + dr]), r([B, S, H, dn + dv]), r([B, S, dr]), r([1, S, dr / 2]), r([1, S, dr / 2])];
const attrs = { scale: 1 / Math.sqrt(dn + dr), interleave: false };
const reps = Number(values.reps);
const wall: number[] = [];
const c0 = process.cpuUsage();
for (let i = 0; i < reps + 5; i++) {
  if (i === 5) Object.assign(c0, process.cpuUsage());
  const w0 = performance.now();
  const outs = kernels.ropeAttentionKernel(cpu, ins, attrs);
  if (i >= 5) wall.push(performance.now() - w0);
  // released as a prefill's step scope releases them: the next call's outputs reuse warm blocks
  // instead of fresh engine memory (whose first writes are page faults, ~3 ms a call at 1 thread)
  for (const t of outs) releaseResidentOutput(raw(t) as Float32Array);
}
const u = process.cpuUsage(c0);
wall.sort((a, b) => a - b);
const macs = B * H * ((S * (S + 1)) / 2) * (dn + dr + dv);
console.log(
  `${values.tag} threads ${values.threads} S ${S}: min ${wall[0]!.toFixed(2)} ms, median ${wall[reps >> 1]!.toFixed(2)} ms, ` +
    `CPU ${((u.user + u.system) / 1000 / reps).toFixed(2)} ms a call; ${(macs / wall[0]! / 1e6).toFixed(1)} G multiply-adds/s at the min`,
);
