// One rank of a CPU-cost probe: repeats one collective (f32 sum all-reduce, or equal-split all-to-all
// into a preallocated output) with a barrier before each (COLL_BARRIER=0: back to back, as the
// collectives bench runs them; the wall figure is then the mean), and prints this rank's CPU time per
// operation (user and system, from process.cpuUsage(), the first operation left out) and the median
// wall time. CPU time per operation stays readable on a machine shared with other jobs, where wall
// time does not; compare two versions by running them alternately.
//   COLL_OP=allreduce|alltoall COLL_BYTES=16777216 COLL_ITERS=10 \
//     npx tsx --conditions=@dsv3/source src/launcher/cli.ts --nproc 2 bench/ranks/cpu-per-op.ts
// bench/gloo-cpu-per-op.py is gloo's side, with the same variables and output.
import { initProcessGroup } from '@dsv3/parallel';

const op = process.env.COLL_OP ?? 'allreduce';
const bytes = Number(process.env.COLL_BYTES ?? 16 << 20);
const iters = Number(process.env.COLL_ITERS ?? 10);
const withBarrier = process.env.COLL_BARRIER !== '0';
if (op !== 'allreduce' && op !== 'alltoall') throw new Error(`COLL_OP=${op}: expected allreduce or alltoall`);
if (!(iters >= 2)) throw new Error(`COLL_ITERS=${process.env.COLL_ITERS}: expected at least 2`);
// Algorithm options to compare (see AlgorithmOptions): COLL_SEGMENT_BYTES, COLL_DIRECT_MAX_RANKS,
// COLL_WINDOW_SEGMENTS.
const algorithm = {
  ...(process.env.COLL_SEGMENT_BYTES ? { segmentBytes: Number(process.env.COLL_SEGMENT_BYTES) } : {}),
  ...(process.env.COLL_DIRECT_MAX_RANKS ? { directAllReduceMaxRanks: Number(process.env.COLL_DIRECT_MAX_RANKS) } : {}),
  ...(process.env.COLL_WINDOW_SEGMENTS ? { windowSegments: Number(process.env.COLL_WINDOW_SEGMENTS) } : {}),
};
const pg = await initProcessGroup({ timeoutMs: 600_000, algorithm });
const n = bytes / 4;
if (!Number.isInteger(n / pg.size)) throw new Error(`COLL_BYTES=${bytes}: expected a multiple of 4 x ${pg.size} ranks`);
const buf = new Float32Array(n).fill(1);
const out = new Float32Array(n);
const splits = new Array<number>(pg.size).fill(n / pg.size);
const run = () =>
  op === 'allreduce' ? pg.allReduce(buf, 'sum').wait() : pg.allToAll(buf, splits, splits, { out }).wait();
const wall: number[] = [];
let cpu = process.cpuUsage();
let start = 0;
for (let i = 0; i < iters; i++) {
  if (withBarrier) await pg.barrier().wait();
  const t0 = performance.now();
  await run();
  wall.push(performance.now() - t0);
  if (i === 0) {
    cpu = process.cpuUsage(); // the first operation warms up
    start = performance.now();
  }
  if (op === 'allreduce') buf.fill(1); // keep the values bounded
}
const used = process.cpuUsage(cpu);
const mean = (performance.now() - start) / (iters - 1);
wall.sort((a, b) => a - b);
const ms = (x: number) => x.toFixed(x < 10 ? 3 : 1);
const per = (us: number) => ms(us / 1000 / (iters - 1));
console.log(
  `rank ${pg.rank}: ${op} of ${bytes} bytes, CPU ms per operation: user ${per(used.user)} system ${per(used.system)}; ` +
    (withBarrier ? `median wall ${ms(wall[iters >> 1]!)} ms` : `mean wall ${ms(mean)} ms`),
);
await pg.destroy();
