// Runs expert-parallel serving jobs (fixtures/ep-rank.ts) as tcp processes, for the tests and the bench.
import { spawn } from 'node:child_process';
import { createServer } from 'node:net';
import { join } from 'node:path';

export interface RankResult {
  rank: number;
  tokens: Record<string, number[]>;
  failed: string[];
  replacements: {
    step: number;
    duringRequests: boolean;
    rankRows: number[][];
    placement: { replicas: number[][][] };
  }[];
  finalRows: number[][];
  steps: number;
  runMs: number;
}

async function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const s = createServer();
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => resolve(port));
    });
  });
}

/** Runs an EP job (see fixtures/ep-rank.ts) over `world` tcp processes; each rank's result. */
export async function runJob(world: number, job: object): Promise<RankResult[]> {
  const port = await freePort();
  const script = join(import.meta.dirname, 'fixtures/ep-rank.ts');
  const ranks = Array.from({ length: world }, (_, rank) => {
    const p = spawn(process.execPath, ['--import', 'tsx', '--conditions=@dsv3/source', script, JSON.stringify(job)], {
      cwd: join(import.meta.dirname, '..'),
      env: {
        ...process.env,
        RANK: String(rank),
        WORLD_SIZE: String(world),
        MASTER_ADDR: '127.0.0.1',
        MASTER_PORT: String(port),
        DSV3_TRANSPORT: 'tcp',
      },
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    let out = '';
    p.stdout!.on('data', (d: Buffer) => (out += d.toString()));
    return new Promise<RankResult>((resolve, reject) => {
      p.on('exit', (code) =>
        code === 0
          ? resolve(JSON.parse(out.trim().split('\n').pop()!) as RankResult)
          : reject(new Error(`rank ${rank} exited with ${code}: ${out}`)),
      );
    });
  });
  return Promise.all(ranks);
}
