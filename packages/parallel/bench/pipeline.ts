// Pipeline bench: each schedule run by worker-thread ranks (MessagePort point-to-point), measured
// bubble fraction vs the simulator's prediction from the same run's measured op costs.
// Usage: npm run bench -- [--ranks 2] [--chunks 8] [--reps 3] [--dim 256] [--rows 128]
import { MessageChannel, Worker, type MessagePort } from 'node:worker_threads';
import { buildSchedule, simulate, SCHEDULE_KINDS, scheduleError, type ScheduleKind } from '../src/index.js';

const arg = (name: string, def: number): number => {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? Number(process.argv[i + 1]) : def;
};
const ranks = arg('ranks', 2);
const chunks = arg('chunks', 8);
const reps = arg('reps', 3);
const dim = arg('dim', 256);
const rows = arg('rows', 128);

interface Span {
  index: number;
  kind: string;
  deferW: boolean;
  start: number;
  end: number;
}
interface RankRun {
  start: number;
  end: number;
  trace: Span[];
}

async function runKind(kind: ScheduleKind): Promise<RankRun[][]> {
  const ports: Record<number, MessagePort>[] = Array.from({ length: ranks }, () => ({}));
  for (let a = 0; a < ranks; a++) {
    for (let b = a + 1; b < ranks; b++) {
      const ch = new MessageChannel();
      ports[a]![b] = ch.port1;
      ports[b]![a] = ch.port2;
    }
  }
  const workers = ports.map(
    (p, rank) =>
      new Worker(new URL('./worker-boot.mjs', import.meta.url), {
        workerData: { rank, ranks, kind, chunks, dim, rows, ports: p },
        transferList: Object.values(p),
        execArgv: ['--conditions=@dsv3/source'],
      }),
  );
  const inbox = workers.map((wk) => {
    const q: unknown[] = [];
    const waiters: ((m: unknown) => void)[] = [];
    wk.on('message', (m) => (waiters.length ? waiters.shift()!(m) : q.push(m)));
    wk.on('error', (e) => {
      throw e;
    });
    return (): Promise<unknown> => (q.length ? Promise.resolve(q.shift()) : new Promise((r) => waiters.push(r)));
  });
  await Promise.all(inbox.map((next) => next()));
  const runs: RankRun[][] = [];
  for (let rep = 0; rep <= reps; rep++) {
    workers.forEach((wk) => wk.postMessage({ go: rep }));
    const got = (await Promise.all(inbox.map((next) => next()))) as RankRun[];
    if (rep > 0) runs.push(got); // rep 0 warms up
  }
  await Promise.all(workers.map((wk) => wk.terminate()));
  return runs;
}

const mean = (xs: number[]): number => (xs.length ? xs.reduce((a, b) => a + b, 0) / xs.length : 0);

function analyse(
  kind: ScheduleKind,
  run: RankRun[],
): {
  measured: number;
  predicted: number;
  predictedExact: number;
  makespan: number;
  costs: { F: number; B: number; W: number; FB: number };
} {
  const t0 = Math.min(...run.map((r) => r.start));
  const makespan = Math.max(...run.map((r) => r.end)) - t0;
  const busy = run.map((r) => r.trace.reduce((a, t) => a + t.end - t.start, 0));
  const measured = 1 - mean(busy) / makespan;
  const spans = run.flatMap((r) => r.trace);
  const d = (f: (t: Span) => boolean): number[] => spans.filter(f).map((t) => t.end - t.start);
  const F = mean(d((t) => t.kind === 'F'));
  const W = mean(d((t) => t.kind === 'W'));
  const Bz = d((t) => t.kind === 'B' && t.deferW);
  const Bfull = d((t) => t.kind === 'B' && !t.deferW);
  const B = Bz.length ? mean(Bz) : mean(Bfull) - W;
  const FBs = d((t) => t.kind === 'FB');
  const costs: { F: number; B: number; W: number; FB: number } = { F, B, W, FB: FBs.length ? mean(FBs) : F + B + W };
  const schedule = buildSchedule(kind, { ranks, chunks });
  const sim = simulate(schedule, costs);
  // The same schedule with every op costing what it measured (stages differ: the head, the first stage's B).
  const measuredCost = run.map((r) => new Map(r.trace.map((t) => [t.index, t.end - t.start])));
  const exact = simulate(schedule, { ...costs, costOf: (rank, index) => measuredCost[rank]!.get(index)! });
  return { measured, predicted: sim.bubbleFraction, predictedExact: exact.bubbleFraction, makespan, costs };
}

const rowsOut: string[] = [];
for (const kind of SCHEDULE_KINDS) {
  if (scheduleError(kind, { ranks, chunks })) continue;
  const runs = await runKind(kind);
  const a = runs.map((r) => analyse(kind, r));
  const best = a.reduce((x, y) => (y.makespan < x.makespan ? y : x));
  const c = best.costs;
  rowsOut.push(
    `| ${kind} | ${ranks} | ${chunks} | ${c.F.toFixed(1)} / ${c.B.toFixed(1)} / ${c.W.toFixed(1)} / ${c.FB.toFixed(1)} | ${best.makespan.toFixed(0)} | ${(100 * best.measured).toFixed(1)}% | ${(100 * best.predictedExact).toFixed(1)}% | ${(100 * best.predicted).toFixed(1)}% |`,
  );
  console.error(
    `${kind}: measured ${a.map((x) => (100 * x.measured).toFixed(1)).join(', ')}% simulated (per-op) ${a.map((x) => (100 * x.predictedExact).toFixed(1)).join(', ')}% simulated (mean) ${a.map((x) => (100 * x.predicted).toFixed(1)).join(', ')}%`,
  );
}
console.log(
  `| schedule | ranks | chunks | F / B / W / F&B (ms, mean measured) | step (ms) | bubble measured | simulated, per-op measured costs | simulated, mean costs |`,
);
console.log('|---|---:|---:|---|---:|---:|---:|---:|');
for (const r of rowsOut) console.log(r);
