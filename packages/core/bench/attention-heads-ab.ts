// A/B of the fused MLA attention (ropeAttention forward + backward) at the tiny preset's layer shape
// (8 x 128 tokens, 4 heads, nope 32 / rope 16 / v 32): one GEMM call per head (setAttentionScoreBudget
// at one head's S x S) against all 32 (batch, head) pairs per batched call (the default),
// alternating rep by rep in one process; median process CPU ms of each, and a check they agree bitwise.
//   taskset -c 1 npx tsx --conditions=@dsv3/source bench/attention-heads-ab.ts [--reps 41] [--threads 1]
import { parseArgs } from 'node:util';
import * as T from '../src/index.js';

const { values } = parseArgs({
  options: { reps: { type: 'string', default: '41' }, threads: { type: 'string', default: '1' } },
});
T.setGemmThreads(Number(values.threads));
const [B, S, H, dn, dr, dv] = [8, 128, 4, 32, 16, 32];
const rng = new T.Rng(1);
const r = (shape: number[]) =>
  T.tensor(
    Float32Array.from({ length: shape.reduce((a, b) => a * b) }, () => rng.normal()),
    { shape },
  );
const [q, kv, kr, cos, sin, g] = [
  r([B, S, H, dn + dr]),
  r([B, S, H, dn + dv]),
  r([B, S, dr]),
  r([1, S, dr / 2]),
  r([1, S, dr / 2]),
  r([B, S, H, dv]),
];
/** One forward + backward with `budget` score floats per call (undefined: the default): [CPU ms, outputs]. */
function step(budget?: number): [number, Float32Array[]] {
  T.setAttentionScoreBudget(budget);
  const xs = [q, kv, kr].map((t) => t.detach().requireGrad());
  const t0 = process.cpuUsage();
  const o = T.ropeAttention(xs[0]!, xs[1]!, xs[2]!, cos, sin, { scale: 0.1, interleave: true });
  T.sum(T.mul(o, g)).backward();
  const u = process.cpuUsage(t0);
  return [(u.user + u.system) / 1000, [o, ...xs.map((x) => x.grad!)].map((t) => t.dataSync() as Float32Array)];
}
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[xs.length >> 1]!;
const perHead: number[] = [];
const grouped: number[] = [];
for (let i = 0; i < Number(values.reps); i++) {
  const [a, oa] = step(S * S);
  const [b, ob] = step();
  if (oa.some((x, j) => x.some((v, n) => !Object.is(v, ob[j]![n])))) throw new Error('outputs differ');
  if (i > 0) [perHead.push(a), grouped.push(b)]; // the first rep warms up
}
const [a, b] = [median(perHead), median(grouped)];
console.log(
  `one call per head ${a.toFixed(1)} ms, heads batched ${b.toFixed(1)} ms CPU (median), ratio ${(a / b).toFixed(3)}`,
);
