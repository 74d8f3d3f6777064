// dsv3-serve --ep N: expert-parallel serving behind the OpenAI API. Rank 0 (this process) serves HTTP
// and spreads requests over the N ranks' engine cores (attention data-parallel); the MoE layers run
// expert-parallel, each rank holding only its experts (plus EPLB's redundant copies), re-placed from
// live loads every --eplb-interval seconds. Rank 0 launches ranks 1..N-1 as local processes, or,
// with --ep-master, waits for them to join (`dsv3-serve --ep N --ep-rank r --ep-master host:port`).
// SIGUSR2 to rank 0 re-places the experts at the next step.
import { spawn, type ChildProcess } from 'node:child_process';
import { createServer as netServer } from 'node:net';
import { readConfig } from '@dsv3/model';
import { initProcessGroup, type ProcessGroup } from '@dsv3/parallel';
import {
  AsyncEngine,
  chatTemplateFor,
  ExpertParallelFrontCore,
  ExpertParallelServer,
  imbalance,
  serveExpertParallelRank,
  startupKeep,
  type Replacement,
} from '@dsv3/serve';
import { createServer } from './app.js';
import { exitAfterDrainOnSignal } from './drain-on-signal.js';
import { loadEngineCore, type LoadServedOptions } from './load.js';

export interface EpOptions {
  dir: string;
  name: string;
  host: string;
  port: number;
  apiKey?: string;
  maxQueue: number;
  load: LoadServedOptions;
  /** ranks in the EP group */
  ep: number;
  /** this process's rank (0: the front end) */
  rank: number;
  /** host:port of rank 0's rendezvous (default: a free loopback port, ranks launched here) */
  master?: string;
  /** expert slots per rank (default: one copy of each expert, plus one) */
  slots?: number;
  /** seconds between re-placements (0: never) */
  eplbIntervalS: number;
  twoMicroBatches: boolean;
}

/** Set on the ranks rank 0 launches: they exit when its end of their stdin closes (rank 0 is gone). */
const PARENT_PIPE = 'DSV3_EP_PARENT_PIPE';

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = netServer();
    s.on('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => resolve(port));
    });
  });
}

function mib(bytes: number): string {
  return `${(bytes / 2 ** 20).toFixed(1)} MiB`;
}

/** Launches ranks 1..N-1 as copies of this command line joining `master`; killed when this process exits. */
function launchRanks(n: number, master: string): ChildProcess[] {
  const script = process.argv[1]!;
  const children = Array.from({ length: n - 1 }, (_, i) =>
    spawn(
      process.execPath,
      [...process.execArgv, script, ...process.argv.slice(2), '--ep-rank', String(i + 1), '--ep-master', master],
      { stdio: ['pipe', 'ignore', 'inherit'], env: { ...process.env, [PARENT_PIPE]: '1' } },
    ),
  );
  const killAll = (): void => {
    for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  };
  process.on('exit', killAll);
  for (const [i, c] of children.entries())
    c.on('exit', (code, signal) => {
      if (code !== 0) process.stderr.write(`dsv3-serve: EP rank ${i + 1} exited (${code ?? signal})\n`);
    });
  return children;
}

async function joinGroup(o: EpOptions, master: string): Promise<ProcessGroup> {
  const at = master.lastIndexOf(':');
  if (at < 1) throw new Error(`--ep-master ${master}: expected host:port`);
  return initProcessGroup({
    transport: 'tcp',
    // a step of a long prompt may keep a rank inside one all-to-all for a while
    timeoutMs: 600_000,
    env: {
      ...process.env,
      RANK: String(o.rank),
      WORLD_SIZE: String(o.ep),
      MASTER_ADDR: master.slice(0, at),
      MASTER_PORT: master.slice(at + 1),
    },
  });
}

/** The expert-parallel server's options, the same on every rank (rank 0 also logs re-placements). */
function serverOptions(o: EpOptions) {
  return {
    ...(o.slots && { slotsPerRank: o.slots }),
    replaceIntervalMs: o.eplbIntervalS * 1000,
    twoMicroBatches: o.twoMicroBatches,
    shardExpertsFrom: o.dir,
    expertsLoaded: 'own' as const,
    idleMs: 5,
  };
}

function describeReplacement(r: Replacement): string {
  const copies = r.placement.replicas.reduce((n, l) => n + l.reduce((m, reps) => m + reps.length, 0), 0);
  return `dsv3-serve ep: experts re-placed at step ${r.step}${r.duringRequests ? ' during requests' : ''} (per-rank rows max/mean over the interval before: ${imbalance(r.rankRows).toFixed(3)}; ${copies} expert copies)`;
}

export async function runExpertParallel(o: EpOptions): Promise<void> {
  if (!(o.rank >= 0 && o.rank < o.ep)) throw new Error(`--ep-rank ${o.rank} is outside the group of ${o.ep} ranks`);
  if (o.rank > 0) return runRank(o);
  const server = createServer({ modelName: o.name, ...(o.apiKey && { apiKey: o.apiKey }) });
  const address = await server.app.listen({ port: o.port, host: o.host });
  const master = o.master ?? `127.0.0.1:${await freePort()}`;
  if (!o.master) launchRanks(o.ep, master);
  else console.log(`dsv3-serve ep: waiting for ranks 1..${o.ep - 1} to join at ${master}`);
  const { model, tokenizer, core } = await loadRankEngine(o);
  const group = await joinGroup(o, master);
  const ep = new ExpertParallelServer(model, group, {
    ...serverOptions(o),
    onReplace: (r) => console.log(describeReplacement(r)),
  });
  await reportShards(ep, group);
  const front = new ExpertParallelFrontCore(ep, core);
  const stopping = exitAfterDrainOnSignal(() => server.drain().then(() => front.close()));
  // an operator (or a benchmark) can ask for a re-placement now
  process.on('SIGUSR2', () => ep.requestReplace());
  void front.finished.then(() => {
    if (!stopping()) process.stderr.write('dsv3-serve ep: the expert-parallel group failed; requests get 503\n');
  });
  server.ready({
    engine: new AsyncEngine(front, tokenizer, { maxQueue: o.maxQueue }),
    chatTemplate: chatTemplateFor(tokenizer, o.dir),
  });
  console.log(
    `dsv3-serve ready: model "${o.name}" on ${address} (expert-parallel over ${o.ep} ranks, max ${core.maxModelLen} tokens per request)`,
  );
}

/** This rank's engine core, its model read with only this rank's experts of the first placement. */
function loadRankEngine(o: EpOptions) {
  return loadEngineCore(o.dir, { ...o.load, keep: startupKeep(readConfig(o.dir), o.rank, o.ep) });
}

/** Every rank's expert bytes, printed by rank 0 (one collective: every rank calls it). */
async function reportShards(ep: ExpertParallelServer, group: ProcessGroup): Promise<void> {
  const b = ep.shard!.bytes();
  const all = await group.allGather(new Float64Array([b.held, b.all, b.experts])).wait();
  if (group.rank !== 0) return;
  for (let r = 0; r < group.size; r++)
    console.log(
      `dsv3-serve ep: rank ${r} holds ${all[r * 3 + 2]} expert copies, ${mib(all[r * 3]!)} of expert weights (all experts: ${mib(all[r * 3 + 1]!)})`,
    );
}

async function runRank(o: EpOptions): Promise<void> {
  if (!o.master) throw new Error(`--ep-rank ${o.rank} needs --ep-master host:port (rank 0's rendezvous)`);
  if (process.env[PARENT_PIPE]) {
    // launched by rank 0: go when it goes
    process.stdin.on('close', () => process.exit(1));
    process.stdin.resume();
  }
  const { model, core } = await loadRankEngine(o);
  const group = await joinGroup(o, o.master);
  const ep = new ExpertParallelServer(model, group, serverOptions(o));
  await reportShards(ep, group);
  await serveExpertParallelRank(ep, core);
  process.exit(0);
}
