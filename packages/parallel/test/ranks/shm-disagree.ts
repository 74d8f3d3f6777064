// Ranks of a local job that call the shared-memory collectives with sizes that do not match: every
// rank must get an error naming the sizes (not a hang, not garbage), and the group must stay usable.
import { initProcessGroup, reportResult } from '@dsv3/parallel';

const pg = await initProcessGroup({ timeoutMs: 60_000 });
const errors: string[] = [];
const attempt = async (w: { wait(): Promise<unknown> }) => {
  try {
    await w.wait();
    errors.push('');
  } catch (e) {
    errors.push((e as Error).message);
  }
};
// All-reduce: rank 1 has one element more.
await attempt(pg.allReduce(new Float32Array(pg.rank === 1 ? 11 : 10), 'sum'));
// All-to-all: rank 0 says it expects 2 rows from every rank, the others send 1.
await attempt(
  pg.allToAll(new Float32Array(pg.size), undefined, pg.rank === 0 ? new Array(pg.size).fill(2) : undefined),
);
// Afterwards the group still works.
const ok = new Float32Array(3).fill(pg.rank + 1);
await pg.allReduce(ok, 'sum').wait();
const { output } = await pg.allToAll(Float32Array.from({ length: pg.size }, (_, i) => pg.rank * 10 + i)).wait();
await pg.destroy();
reportResult({ errors, sum: Array.from(ok), a2a: Array.from(output) });
