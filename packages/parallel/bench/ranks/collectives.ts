// One rank of the collective benchmark: all-reduce (sum, f32) and all-to-all (equal splits) over a
// range of message sizes; prints one JSON line per (op, size) from rank 0 with the slowest rank's
// mean time per iteration.
import { initProcessGroup, reportResult } from '@dsv3/parallel';

const sizes = (process.env.BENCH_SIZES ?? '').split(',').filter(Boolean).map(Number);
const minSeconds = Number(process.env.BENCH_MIN_SECONDS ?? '0.3');
// Algorithm options to compare (see AlgorithmOptions): COLL_SEGMENT_BYTES, COLL_DIRECT_MAX_RANKS,
// COLL_WINDOW_SEGMENTS.
const algorithm = {
  ...(process.env.COLL_SEGMENT_BYTES ? { segmentBytes: Number(process.env.COLL_SEGMENT_BYTES) } : {}),
  ...(process.env.COLL_DIRECT_MAX_RANKS ? { directAllReduceMaxRanks: Number(process.env.COLL_DIRECT_MAX_RANKS) } : {}),
  ...(process.env.COLL_WINDOW_SEGMENTS ? { windowSegments: Number(process.env.COLL_WINDOW_SEGMENTS) } : {}),
};
const warmSeconds = minSeconds / 2;
const pg = await initProcessGroup({ timeoutMs: 600_000, algorithm });

/** Seconds per operation of `run` on the slowest rank, from the first batch of 1, 2, 4, ... that
 *  lasts at least warmSeconds (or 8,192 operations). */
async function calibrate(run: () => Promise<unknown>): Promise<number> {
  for (let batch = 1; ; batch *= 2) {
    await pg.barrier().wait();
    const t0 = performance.now();
    for (let i = 0; i < batch; i++) await run();
    const took = Float64Array.of((performance.now() - t0) / 1000);
    await pg.allReduce(took, 'max').wait();
    if (took[0]! >= warmSeconds || batch >= 8192) return took[0]! / batch;
  }
}
const rows: { op: string; bytes: number; seconds: number; iters: number }[] = [];

for (const bytes of sizes) {
  const buf = new Float32Array(bytes / 4).fill(1);
  const out = new Float32Array(bytes / 4);
  // Equal splits, known to every rank (no count exchange), as all_to_all_single without split sizes.
  const splits = new Array<number>(pg.size).fill(bytes / 4 / pg.size);
  for (const op of ['allreduce', 'alltoall'] as const) {
    // all-to-all into a preallocated output, as gloo's all_to_all_single(out, buf) in the anchor.
    const run = () =>
      op === 'allreduce' ? pg.allReduce(buf, 'sum').wait() : pg.allToAll(buf, splits, splits, { out }).wait();
    await run(); // first touch of fresh buffers (and lazy connections where a transport has them)
    // Warm up and pick the iteration count (gloo.py does the same): timed batches of 1, 2, 4, ...
    // operations until one lasts warmSeconds on the slowest rank, so every rank runs the same number.
    // One timed operation was the rule before: a small cell then ran a few hundred operations, about
    // as many as V8 needs to optimize the hot paths (a 2-rank 64 KiB all-to-all's median fell from
    // ~300 to ~150 us only after ~1,000 operations), while gloo's C++ is as fast from its first.
    const perOp = await calibrate(run);
    // The cap was 200: a 64 KiB cell then timed only ~50 ms, where one descheduling decides the figure.
    const iters = Math.max(2, Math.min(20_000, Math.ceil(minSeconds / perOp)));
    await pg.barrier().wait();
    const t0 = performance.now();
    for (let i = 0; i < iters; i++) await run();
    const mean = Float64Array.of((performance.now() - t0) / 1000 / iters);
    await pg.allReduce(mean, 'max').wait();
    if (op === 'allreduce') buf.fill(1); // keep the values bounded
    rows.push({ op, bytes, seconds: mean[0]!, iters });
  }
}
await pg.destroy();
if (pg.rank === 0) {
  // A local (worker-thread) rank hands its rows back directly; a process prints them.
  if (!reportResult(rows)) console.log(`BENCH ${JSON.stringify(rows)}`);
}
