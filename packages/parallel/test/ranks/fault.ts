// A job in which one rank fails: `die` (rank VICTIM exits mid-job), `hang` (it stops calling
// collectives) or `killed` (it is killed from outside). The others report the error they got and
// how long it took.
import { initProcessGroup, reportResult } from '@dsv3/parallel';

const mode = process.argv[2] ?? process.env.FAULT_MODE;
const victim = Number(process.env.FAULT_VICTIM ?? 1);
const timeoutMs = Number(process.env.FAULT_TIMEOUT_MS ?? 3000);
// A survivor slow to report (a loaded machine): the launcher must leave it time before SIGTERM.
const reportDelayMs = Number(process.env.FAULT_REPORT_DELAY_MS ?? 0);
// FAULT_WINDOW=1: the all-reduces run the direct exchange through a window of one 16 KiB slot per peer
// (9 segments per chunk at 3 ranks, every later one sent after its owner's READY), so a rank that dies
// leaves its peers waiting mid-window.
const algorithm = process.env.FAULT_WINDOW ? { segmentBytes: 16 << 10, windowSegments: 1 } : {};
const pg = await initProcessGroup({ timeoutMs, algorithm });
const x = new Float32Array(100_000).fill(1);
await pg.allReduce(x).wait(); // everyone is up and connected
console.log(`DSV3_READY pid=${process.pid}`);
// `killed`: the victim runs like everyone else until the test kills its process from outside.
if (pg.rank === victim && mode !== 'killed') {
  if (mode === 'die') {
    setTimeout(() => process.exit(3), 200);
  } else {
    await new Promise((r) => setTimeout(r, timeoutMs * 2)); // hung: joins nothing
    process.exit(0);
  }
} else {
  const t0 = Date.now();
  let error = '';
  try {
    for (let i = 0; i < (mode === 'killed' ? 1e9 : 1000); i++) await pg.allReduce(x).wait();
    error = 'no error';
  } catch (e) {
    error = (e as Error).message;
  }
  const result = { rank: pg.rank, error, ms: Date.now() - t0 };
  if (reportDelayMs) await new Promise((r) => setTimeout(r, reportDelayMs));
  if (!reportResult(result)) console.log(`DSV3_RESULT ${JSON.stringify(result)}`);
  process.exit(0);
}
