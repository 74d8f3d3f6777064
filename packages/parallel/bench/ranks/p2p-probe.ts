// Two ranks ping-pong over the job's transport: one-way latency (8-byte messages) and bandwidth
// (4 MiB messages). Rank 0 prints one JSON line (or hands it back under launchLocal). The latency is
// the mean, not the median: a step pays the sum of its messages' waits, descheduled peers included.
import { initProcessGroup, reportResult } from '@dsv3/parallel';

const pg = await initProcessGroup({ timeoutMs: 120_000 });
const peer = 1 - pg.rank;
/** One-way times (s) of `reps` ping-pongs of `bytes`, sorted. */
async function pingPong(bytes: number, reps: number): Promise<number[]> {
  const buf = new Uint8Array(bytes);
  const once = async () => {
    if (pg.rank === 0) {
      await pg.send(buf, peer).wait();
      await pg.recv(buf, peer).wait();
    } else {
      await pg.recv(buf, peer).wait();
      await pg.send(buf, peer).wait();
    }
  };
  for (let i = 0; i < 3; i++) await once();
  const times: number[] = [];
  for (let i = 0; i < reps; i++) {
    const t0 = performance.now();
    await once();
    times.push((performance.now() - t0) / 2 / 1e3);
  }
  return times.sort((a, b) => a - b);
}
const median = (xs: number[]): number => xs[xs.length >> 1]!;
const small = await pingPong(8, 200);
const latency = small.reduce((a, b) => a + b, 0) / small.length;
const medianLatency = median(small);
const big = 4 << 20;
// bandwidth from the median large transfer less the median latency: the rate while the link runs
const bandwidth = big / Math.max(1e-9, median(await pingPong(big, 20)) - medianLatency);
await pg.destroy();
const row = { latency, medianLatency, bandwidth };
if (pg.rank === 0 && !reportResult(row)) console.log(`PROBE ${JSON.stringify(row)}`);
