#!/usr/bin/env node
// dsv3-run: dsv3-run --nproc N [--nnodes M --node-rank R --master ADDR:PORT] SCRIPT ARGS...
import net from 'node:net';
import { Command, InvalidArgumentError } from 'commander';
import { launchLocal } from '../comm/launch-local.js';
import { spawnRanks } from './spawn-ranks.js';

function positiveInt(v: string): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1) throw new InvalidArgumentError('expected a positive integer');
  return n;
}

function nonNegativeInt(v: string): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 0) throw new InvalidArgumentError('expected a non-negative integer');
  return n;
}

function hostPort(v: string): { host: string; port: number } {
  const m = /^(.+):(\d+)$/.exec(v);
  if (!m || Number(m[2]) < 1 || Number(m[2]) > 65535)
    throw new InvalidArgumentError('expected ADDR:PORT, e.g. 10.0.0.1:29500');
  return { host: m[1]!.replace(/^\[(.*)\]$/, '$1'), port: Number(m[2]) };
}

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(port));
    });
  });
}

const program = new Command('dsv3-run')
  .description(
    'Run SCRIPT as N ranks per node; ranks read their layout from RANK, WORLD_SIZE, MASTER_ADDR, ... (as under torchrun)',
  )
  .requiredOption('--nproc <n>', 'ranks on this node', positiveInt)
  .option('--nnodes <m>', 'nodes in the job', positiveInt, 1)
  .option('--node-rank <r>', 'index of this node', nonNegativeInt, 0)
  .option('--master <addr:port>', "rank 0's rendezvous store (required with --nnodes > 1)", hostPort)
  .option('--transport <kind>', 'tcp (the default for processes); MPI jobs start with mpirun or srun instead')
  .option('--threads', 'run the ranks as worker threads of one process (the local transport)')
  .option('--timeout-ms <ms>', 'stop the whole job after this long', positiveInt)
  .argument('<script>', 'the program every rank runs (.js / .ts / any executable)')
  .argument('[args...]', "the script's arguments")
  .passThroughOptions()
  .showHelpAfterError()
  .action(
    async (
      script: string,
      args: string[],
      o: {
        nproc: number;
        nnodes: number;
        nodeRank: number;
        master?: { host: string; port: number };
        transport?: string;
        threads?: boolean;
        timeoutMs?: number;
      },
    ) => {
      if (o.transport !== undefined && o.transport !== 'tcp')
        program.error(
          `--transport ${o.transport}: dsv3-run starts tcp ranks (or local ones with --threads); start MPI jobs with mpirun or srun`,
        );
      if (o.nodeRank >= o.nnodes) program.error(`--node-rank ${o.nodeRank} is out of range for --nnodes ${o.nnodes}`);
      if (o.nnodes > 1 && !o.master)
        program.error('--master ADDR:PORT is required when --nnodes > 1 (every node must name the same rank-0 store)');
      if (o.threads) {
        if (o.nnodes > 1) program.error('--threads runs one process; it cannot span nodes');
        const res = await launchLocal({
          nproc: o.nproc,
          script,
          args,
          ...(o.timeoutMs ? { timeoutMs: o.timeoutMs } : {}),
        });
        const bad = res.find((r) => r.exitCode !== 0);
        if (bad)
          process.stderr.write(
            `[dsv3-run] rank ${bad.rank} failed: ${bad.error?.message ?? `exit code ${bad.exitCode}`}\n`,
          );
        process.exitCode = bad ? bad.exitCode || 1 : 0;
        return;
      }
      const master = o.master ?? { host: '127.0.0.1', port: await freePort() };
      let timer: ReturnType<typeof setTimeout> | undefined;
      if (o.timeoutMs) timer = setTimeout(() => process.kill(process.pid, 'SIGTERM'), o.timeoutMs);
      const res = await spawnRanks({
        nproc: o.nproc,
        nnodes: o.nnodes,
        nodeRank: o.nodeRank,
        masterAddr: master.host,
        masterPort: master.port,
        script,
        args,
        ...(o.transport ? { transport: o.transport } : {}),
      });
      clearTimeout(timer);
      process.exitCode = res.exitCode;
    },
  );

program.parseAsync(process.argv).catch((e: unknown) => {
  process.stderr.write(`dsv3-run: ${(e as Error).message}\n`);
  process.exitCode = 1;
});
