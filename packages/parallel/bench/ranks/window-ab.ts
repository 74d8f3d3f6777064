// One rank of an in-process A/B of the direct-exchange all-reduce's window: two groups over the same
// ranks, A with windowSegments 0 (the whole chunk staged) and B with COLL_WINDOW_SEGMENTS (default
// 2), run in alternating batches (A B B A ...) of COLL_OPS back-to-back f32 sum all-reduces of
// COLL_BYTES, a barrier before each batch. Both sides share the processes and the minutes, which is
// what a loaded machine needs. Prints this rank's median CPU (user + system) and wall ms per
// operation for each side over COLL_ROUNDS rounds, and the median of the per-round ratios B / A.
//   COLL_BYTES=268435456 COLL_ROUNDS=6 COLL_OPS=2 \
//     npx tsx --conditions=@dsv3/source src/launcher/cli.ts --nproc 4 bench/ranks/window-ab.ts
import { initProcessGroup } from '@dsv3/parallel';

const bytes = Number(process.env.COLL_BYTES ?? 256 << 20);
const rounds = Number(process.env.COLL_ROUNDS ?? 6);
const ops = Number(process.env.COLL_OPS ?? 2);
const window = Number(process.env.COLL_WINDOW_SEGMENTS ?? 2);
const segmentBytes = process.env.COLL_SEGMENT_BYTES ? Number(process.env.COLL_SEGMENT_BYTES) : undefined;
const seg = segmentBytes ? { segmentBytes } : {};
const pg = await initProcessGroup({ timeoutMs: 600_000 });
const all = Array.from({ length: pg.size }, (_, i) => i);
const sides = {
  A: pg.newGroup(all, { algorithm: { ...seg, windowSegments: 0 } })!,
  B: pg.newGroup(all, { algorithm: { ...seg, windowSegments: window } })!,
};
const buf = new Float32Array(bytes / 4).fill(1);
const batch = async (side: 'A' | 'B') => {
  const g = sides[side];
  await g.barrier().wait();
  const c0 = process.cpuUsage();
  const t0 = performance.now();
  for (let i = 0; i < ops; i++) await g.allReduce(buf, 'sum').wait();
  const wall = (performance.now() - t0) / ops;
  const c = process.cpuUsage(c0);
  buf.fill(1); // keep the values bounded (outside the timed batch)
  return { cpu: (c.user + c.system) / 1000 / ops, wall };
};
await batch('A'); // first touch of both sides' staging
await batch('B');
const got = { A: [] as { cpu: number; wall: number }[], B: [] as { cpu: number; wall: number }[] };
for (let r = 0; r < rounds; r++)
  for (const side of r % 2 === 0 ? (['A', 'B'] as const) : (['B', 'A'] as const)) got[side].push(await batch(side));
const median = (x: number[]) => [...x].sort((a, b) => a - b)[x.length >> 1]!;
const f = (x: number) => x.toFixed(1);
const ratio = (k: 'cpu' | 'wall') => median(got.B.map((b, i) => b[k] / got.A[i]![k]));
console.log(
  `rank ${pg.rank}: allreduce of ${bytes} bytes, ms per operation (median of ${rounds} batches of ${ops}): ` +
    `A (no window) CPU ${f(median(got.A.map((x) => x.cpu)))} wall ${f(median(got.A.map((x) => x.wall)))}; ` +
    `B (window ${window}) CPU ${f(median(got.B.map((x) => x.cpu)))} wall ${f(median(got.B.map((x) => x.wall)))}; ` +
    `B/A per round: CPU ${ratio('cpu').toFixed(3)} wall ${ratio('wall').toFixed(3)}`,
);
await pg.destroy();
