// One rank of a warm-up probe: the wall time of each of the first 3,000 back-to-back operations of a
// collective (equal-split all-to-all into a preallocated output by default, COLL_OP=allreduce for the
// f32 sum), after COLL_BEFORE all-reduces of the same size (the collectives bench runs a cell's
// all-reduce first), printed by rank 0 as the median and mean per range of operation indices. It shows
// how many operations pass before V8 has optimized the hot paths, which a benchmark's warm-up must cover.
//   COLL_BYTES=65536 COLL_BEFORE=400 npx tsx --conditions=@dsv3/source src/launcher/cli.ts --nproc 2 bench/ranks/first-ops.ts
import { initProcessGroup } from '@dsv3/parallel';

const op = process.env.COLL_OP ?? 'alltoall';
const bytes = Number(process.env.COLL_BYTES ?? 65536);
const before = Number(process.env.COLL_BEFORE ?? 400);
if (op !== 'allreduce' && op !== 'alltoall') throw new Error(`COLL_OP=${op}: expected allreduce or alltoall`);
const pg = await initProcessGroup({ timeoutMs: 600_000 });
const n = bytes / 4;
if (!Number.isInteger(n / pg.size)) throw new Error(`COLL_BYTES=${bytes}: expected a multiple of 4 x ${pg.size} ranks`);
const buf = new Float32Array(n).fill(1);
const out = new Float32Array(n);
const splits = new Array<number>(pg.size).fill(n / pg.size);
const allReduce = () => pg.allReduce(buf, 'sum').wait();
const run = () => (op === 'allreduce' ? allReduce() : pg.allToAll(buf, splits, splits, { out }).wait());
for (let i = 0; i < before; i++) await allReduce();
await pg.barrier().wait();
const wall: number[] = [];
for (let i = 0; i < 3000; i++) {
  const t0 = performance.now();
  await run();
  wall.push(performance.now() - t0);
}
const us = (x: number) => (x * 1000).toFixed(0);
const ranges: [number, number][] = [
  [0, 10],
  [10, 100],
  [100, 500],
  [500, 1000],
  [1000, 3000],
];
const summary = ranges.map(([a, b]) => {
  const r = wall.slice(a, b);
  const sorted = [...r].sort((x, y) => x - y);
  return `${a + 1}-${b}: ${us(sorted[r.length >> 1]!)} / ${us(r.reduce((x, y) => x + y, 0) / r.length)}`;
});
if (pg.rank === 0)
  console.log(`${op} of ${bytes} bytes, us per operation (median / mean) by operation: ${summary.join('; ')}`);
await pg.destroy();
