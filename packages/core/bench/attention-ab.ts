// A/B of the fused MLA attention kernels (ropeAttention forward + backward, called directly) at the
// tiny preset's layer shape (8 x 128 tokens, 4 heads, nope 32 / rope 16 / v 32): an earlier pair of
// attention-kernels.ts and rope-attention-kernels.ts (`git show REV:packages/core/src/cpu/X > DIR/X`
// for both) against the current ones, alternating rep by rep in one process; median CPU ms of each
// and a bitwise check that outputs and gradients agree. Reports the process's CPU (worker threads
// included) and the forward's and backward's wall time.
// `--plain`: causalAttention at the same shape instead (q, k [B, S, H, 48], v [B, S, H, 32]).
//   taskset -c 1 npx tsx --conditions=@dsv3/source bench/attention-ab.ts DIR [--reps 41] [--threads 2] [--plain]
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import { cpu, raw } from '../src/cpu/backend.js';
import * as currentPlain from '../src/cpu/attention-kernels.js';
import * as current from '../src/cpu/rope-attention-kernels.js';
import { setGemmThreads } from '../src/index.js';
import { dn, dr, dv, H, ropeAttentionOperands } from './attention-operands.js';

const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    reps: { type: 'string', default: '41' },
    threads: { type: 'string', default: '1' },
    plain: { type: 'boolean', default: false },
  },
});
if (positionals.length !== 1) throw new Error('usage: attention-ab.ts DIR_WITH_OLD_KERNELS [--reps N]');
setGemmThreads(Number(values.threads));
// The old files' relative imports resolve against this tree's src/cpu, except the old pair's own.
const here = fileURLToPath(new URL('../src/cpu/', import.meta.url));
const dir = mkdtempSync(join(tmpdir(), 'attention-ab-'));
for (const f of ['attention-kernels.ts', 'rope-attention-kernels.ts'])
  writeFileSync(
    join(dir, f),
    readFileSync(join(positionals[0]!, f), 'utf8').replace(/from '(\.\.?\/[^']+)'/g, (m, p: string) =>
      p === './attention-kernels.js' ? m : `from '${pathToFileURL(join(here, p)).href}'`,
    ),
  );
const old = (await import(pathToFileURL(join(dir, 'rope-attention-kernels.ts')).href)) as typeof current;
const oldPlain = (await import(pathToFileURL(join(dir, 'attention-kernels.ts')).href)) as typeof currentPlain;

const [B, S] = [8, 128];
const { ins, dO, attrs, random: r } = ropeAttentionOperands(B, S);
const plainIns = [r([B, S, H, dn + dr]), r([B, S, H, dn + dr]), r([B, S, H, dv])];
type Pair = [typeof current, typeof currentPlain];
/** Forward + backward: [[CPU ms, wall ms of the forward, of the backward], o and the three gradients]. */
function step([k, p]: Pair): [number[], Float32Array[]] {
  const [c0, w0] = [process.cpuUsage(), performance.now()];
  const [o, lse] = values.plain
    ? p.causalAttentionKernel(cpu, plainIns, attrs)
    : k.ropeAttentionKernel(cpu, ins, attrs);
  const w1 = performance.now();
  const grads = values.plain
    ? p.causalAttentionBackwardKernel(cpu, [...plainIns, o!, lse!, dO], attrs)
    : k.ropeAttentionBackwardKernel(cpu, [...ins, o!, lse!, dO], attrs);
  const [u, w2] = [process.cpuUsage(c0), performance.now()];
  return [[(u.user + u.system) / 1000, w1 - w0, w2 - w1], [o!, ...grads].map((t) => raw(t) as Float32Array)];
}
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[xs.length >> 1]!;
const ta: number[][] = [];
const tb: number[][] = [];
for (let i = 0; i < Number(values.reps); i++) {
  const [a, oa] = step([old, oldPlain]);
  const [b, ob] = step([current, currentPlain]);
  if (oa.some((x, j) => x.some((v, n) => !Object.is(v, ob[j]![n])))) throw new Error('outputs differ');
  if (i > 0) [ta.push(a), tb.push(b)]; // the first rep warms up
}
// Medians of CPU (all threads of the process), forward wall, backward wall.
['CPU', 'forward wall', 'backward wall'].forEach((what, j) => {
  const [a, b] = [median(ta.map((t) => t[j]!)), median(tb.map((t) => t[j]!))];
  console.log(`${what}: old ${a.toFixed(2)} ms, new ${b.toFixed(2)} ms (medians), ratio ${(a / b).toFixed(3)}`);
});
