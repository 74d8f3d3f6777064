// The tiny bench step (bench-step.ts, what bench/run.ts times against torch) on one process with
// --threads GEMM threads (dp=1) against two data-parallel worker-thread ranks with one GEMM thread each
// (dp=2, the trainer's parallel step over the local shared-memory transport): each process runs W warm-up
// and N timed steps; the two kinds alternate as separate processes, --pairs times. Prints per run the
// median wall and process CPU per step and the losses (the same batches on both: dp=2 differs from dp=1
// only by the gradient all-reduce's summation order).
//   npx tsx --conditions=@dsv3/source bench/dp-step.ts [--pairs 3] [--steps 12] [--warmup 4] [--threads 2]
//     [--ranks 2] [--rank-threads 1] [--no-recycle]     (--only dp1|dp2: one run, printed as JSON)
import { spawnSync } from 'node:child_process';
import { PassThrough } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { setGemmThreads } from '@dsv3/core';
import { launchLocal } from '@dsv3/parallel';
import { benchStep } from './bench-step.js';

const args = process.argv.slice(2);
const flag = (name: string, dflt: string) => (args.includes(name) ? args[args.indexOf(name) + 1]! : dflt);
const steps = Number(flag('--steps', '12'));
const warmup = Number(flag('--warmup', '4'));
const recycle = !args.includes('--no-recycle');
const only = args.includes('--only') ? flag('--only', '') : null;
type Step = { wall: number; cpu: number; loss: number; allReduceMs?: number };

async function runDp1(): Promise<Step[]> {
  setGemmThreads(Number(flag('--threads', '2')));
  const { step } = benchStep('tiny', { recycleActivations: recycle });
  const out: Step[] = [];
  for (let s = 0; s < warmup + steps; s++) out.push(await step());
  return out;
}

async function runDp2(): Promise<Step[]> {
  const sink = new PassThrough();
  sink.resume();
  const res = await launchLocal({
    nproc: Number(flag('--ranks', '2')),
    script: fileURLToPath(new URL('./dp-step-rank.ts', import.meta.url)),
    env: {
      STEPS: String(steps),
      WARMUP: String(warmup),
      GEMM_THREADS: flag('--rank-threads', '1'),
      RECYCLE: recycle ? '1' : '0',
    },
    stdout: sink,
    stderr: process.stderr,
  });
  const bad = res.find((r) => r.error || r.exitCode !== 0);
  if (bad) throw new Error(`rank ${bad.rank} failed: ${bad.error?.message ?? bad.exitCode}`);
  return res[0]!.result as Step[];
}

if (only !== null) {
  if (only !== 'dp1' && only !== 'dp2') throw new Error(`--only: dp1 or dp2, got ${only}`);
  console.log(JSON.stringify(only === 'dp1' ? await runDp1() : await runDp2()));
} else {
  const pairs = Number(flag('--pairs', '3'));
  const median = (xs: number[]) => [...xs].sort((x, y) => x - y)[Math.floor(xs.length / 2)]!;
  const medians: Record<string, number[]> = { dp1: [], dp2: [] };
  console.log(
    `tiny bench step (fp32, 8 x 128), ${warmup} warm-up + ${steps} timed steps per process; dp1: ${flag('--threads', '2')} GEMM threads; dp2: ${flag('--ranks', '2')} ranks x ${flag('--rank-threads', '1')} GEMM thread; recycling ${recycle ? 'on' : 'off'}`,
  );
  for (let p = 0; p < pairs; p++) {
    for (const kind of p % 2 === 0 ? ['dp1', 'dp2'] : ['dp2', 'dp1']) {
      const r = spawnSync(process.execPath, [...process.execArgv, process.argv[1]!, ...args, '--only', kind], {
        encoding: 'utf8',
        stdio: ['ignore', 'pipe', 'inherit'],
      });
      if (r.status !== 0) throw new Error(`${kind} run failed (exit ${r.status})`);
      const timed = (JSON.parse(r.stdout.trim().split('\n').at(-1)!) as Step[]).slice(warmup);
      const wall = median(timed.map((s) => s.wall)) * 1000;
      medians[kind]!.push(wall);
      console.log(
        `pair ${p + 1} ${kind}: step ${wall.toFixed(1)} ms (CPU ${(median(timed.map((s) => s.cpu)) * 1000).toFixed(0)} ms${kind === 'dp2' ? `, rank 0 in all-reduces ${median(timed.map((s) => s.allReduceMs!)).toFixed(0)} ms` : ''})  losses ${timed.map((s) => s.loss.toFixed(6)).join(' ')}`,
      );
    }
  }
  const a = median(medians.dp1!);
  const b = median(medians.dp2!);
  console.log(`median of medians: dp1 ${a.toFixed(1)} ms, dp2 ${b.toFixed(1)} ms; dp1 / dp2 = ${(a / b).toFixed(2)}x`);
}
