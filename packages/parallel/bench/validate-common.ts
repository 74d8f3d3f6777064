// What the validation benches share: running a command to completion, the median, and the probe of
// this machine (GEMM FLOP/s, memcpy bandwidth, the cost of a small operator, and the tcp transport
// between two dsv3-run ranks).
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { machineInfo, measureGemmFlops, measureMemcpy, measureOpOverhead, type MachineProbe } from '../src/index.js';

export const root = fileURLToPath(new URL('../../../', import.meta.url));
/** Node flags that run the workspace's TypeScript sources. */
export const tsx = ['--import', 'tsx', '--conditions=@dsv3/source'];
export const launcher = join(root, 'packages/parallel/src/launcher/cli.ts');

/** Runs a command; resolves with its stdout and stderr, rejects with their tail when it fails. */
export function runCommand(cmd: string, args: string[], cwd: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const c = spawn(cmd, args, { cwd, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    c.stdout.on('data', (d) => (out += d));
    c.stderr.on('data', (d) => (out += d));
    c.on('close', (code) =>
      code === 0 ? resolve(out) : reject(new Error(`${cmd} ${args.join(' ')} failed (${code}):\n${out.slice(-4000)}`)),
    );
  });
}

export function median(xs: readonly number[]): number {
  if (!xs.length) throw new RangeError('median of no values');
  const s = [...xs].sort((a, b) => a - b);
  const h = s.length >> 1;
  return s.length % 2 ? s[h]! : (s[h - 1]! + s[h]!) / 2;
}

/** Point-to-point bandwidth and latency of the tcp transport between two dsv3-run ranks. */
async function probeTransport(): Promise<{ bandwidth: number; latency: number }> {
  const script = fileURLToPath(new URL('./ranks/p2p-probe.ts', import.meta.url));
  const out = await runCommand(process.execPath, [...tsx, launcher, '--nproc', '2', script], root);
  const m = /PROBE (.*)$/m.exec(out);
  if (!m) throw new Error(`the transport probe printed no result:\n${out.slice(-2000)}`);
  return JSON.parse(m[1]!) as { bandwidth: number; latency: number };
}

/** This machine as the planner's cluster description needs it. */
export async function probeMachine(): Promise<MachineProbe> {
  const transport = await probeTransport();
  return {
    gemmFlops: measureGemmFlops(),
    memcpyBandwidth: measureMemcpy(),
    opOverhead: measureOpOverhead(),
    transportBandwidth: transport.bandwidth,
    transportLatency: transport.latency,
    ...machineInfo(),
  };
}

export const describeProbe = (p: MachineProbe): string =>
  `${p.cores} cores, sgemm ${(p.gemmFlops / 1e9).toFixed(1)} GFLOP/s, memcpy ${(p.memcpyBandwidth / 1e9).toFixed(1)} GB/s, ` +
  `${(p.opOverhead * 1e6).toFixed(0)} µs per small operator, tcp ${(p.transportBandwidth / 1e9).toFixed(2)} GB/s and ` +
  `${(p.transportLatency * 1e6).toFixed(0)} µs one way`;
