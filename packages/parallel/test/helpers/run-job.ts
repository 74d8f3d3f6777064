// Runs a job under dsv3-run (the real launcher, from source) and collects each rank's DSV3_RESULT line.
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';

export const pkgRoot = fileURLToPath(new URL('../..', import.meta.url));
export const cli = fileURLToPath(new URL('../../src/launcher/cli.ts', import.meta.url));
export const rankScript = (name: string) => fileURLToPath(new URL(`../ranks/${name}`, import.meta.url));

export interface JobOutput {
  code: number | null;
  output: string;
  results: Record<string, unknown>[];
  ms: number;
}

export function runJob(
  args: string[],
  opts: { env?: Record<string, string>; timeoutMs?: number; cmd?: string[] } = {},
): Promise<JobOutput> {
  const t0 = Date.now();
  const cmd = opts.cmd ?? [process.execPath, '--import', 'tsx', '--conditions=@dsv3/source', cli];
  return new Promise((resolve) => {
    const child = spawn(cmd[0]!, [...cmd.slice(1), ...args], {
      cwd: pkgRoot,
      env: { ...process.env, ...opts.env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let output = '';
    child.stdout.on('data', (d) => (output += d));
    child.stderr.on('data', (d) => (output += d));
    const timer = setTimeout(() => child.kill('SIGTERM'), opts.timeoutMs ?? 240_000);
    child.on('close', (code) => {
      clearTimeout(timer);
      const results = [...output.matchAll(/DSV3_RESULT (.*)$/gm)].map(
        (m) => JSON.parse(m[1]!) as Record<string, unknown>,
      );
      resolve({ code, output, results, ms: Date.now() - t0 });
    });
  });
}
