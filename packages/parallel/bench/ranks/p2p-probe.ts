// Two ranks ping-pong over the job's transport: one-way latency (8-byte messages) and bandwidth
// (4 MiB messages). Rank 0 prints one JSON line (or hands it back under launchLocal).
import { initProcessGroup, reportResult } from '@dsv3/parallel';

const pg = await initProcessGroup({ timeoutMs: 120_000 });
const peer = 1 - pg.rank;
async function pingPong(bytes: number, reps: number): Promise<number> {
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
  times.sort((a, b) => a - b);
  return times[times.length >> 1]!; // median one-way time: the loaded machine's outliers aside
}
const latency = await pingPong(8, 200);
const big = 4 << 20;
const bandwidth = big / ((await pingPong(big, 20)) - latency);
await pg.destroy();
const row = { latency, bandwidth };
if (pg.rank === 0 && !reportResult(row)) console.log(`PROBE ${JSON.stringify(row)}`);
