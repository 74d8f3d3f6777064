// One rank of the collective benchmark: all-reduce (sum, f32) and all-to-all (equal splits) over a
// range of message sizes; prints one JSON line per (op, size) from rank 0 with the slowest rank's
// mean time per iteration.
import { initProcessGroup, reportResult } from '@dsv3/parallel';

const sizes = (process.env.BENCH_SIZES ?? '').split(',').filter(Boolean).map(Number);
const minSeconds = Number(process.env.BENCH_MIN_SECONDS ?? '0.3');
// Algorithm options to compare (see AlgorithmOptions): COLL_SEGMENT_BYTES, COLL_DIRECT_MAX_RANKS.
const algorithm = {
  ...(process.env.COLL_SEGMENT_BYTES ? { segmentBytes: Number(process.env.COLL_SEGMENT_BYTES) } : {}),
  ...(process.env.COLL_DIRECT_MAX_RANKS ? { directAllReduceMaxRanks: Number(process.env.COLL_DIRECT_MAX_RANKS) } : {}),
};
const pg = await initProcessGroup({ timeoutMs: 600_000, algorithm });
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
    await run(); // warm up (and connect lazily where a transport does)
    // Agree on an iteration count from one timed run (the warm-up's first touch of fresh buffers
    // would overestimate it several times), so every rank runs the same number.
    await pg.barrier().wait();
    let t0 = performance.now();
    await run();
    const once = Float64Array.of((performance.now() - t0) / 1000);
    await pg.allReduce(once, 'max').wait();
    // The cap was 200: a 64 KiB cell then timed only ~50 ms, where one descheduling decides the figure.
    const iters = Math.max(2, Math.min(20_000, Math.ceil(minSeconds / once[0]!)));
    await pg.barrier().wait();
    t0 = performance.now();
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
