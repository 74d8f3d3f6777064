// Training-step throughput of the presets on the CPU against PyTorch (transformers' DeepseekV3ForCausalLM,
// float32) running a step of the same config and batch, interleaved in the same session.
//   npx tsx --conditions=@dsv3/source bench/run.ts [tiny|mini] [--rounds N] [--python PATH] [--threads N] [--sequential]
// On a loaded machine compare both sides pinned to one core: `taskset -c 1 ... --threads 1`.
// `--warmup N` (default 4): untimed steps of each side first (dsv3's first steps run V8's interpreter and
// fill its free lists; torch's first ones allocate), so the rounds time both at their steady speed.
// `--no-recycle`: the dsv3 step leaves its activations to the garbage collector (recycleActivations off).
// dsv3 side: fp32 recipe, no MTP (HF has none), no sequence-wise loss; AdamW (f32 moments, as torch's),
// clipping and the gate-bias update included. Random token batches of the preset's shape, one micro-batch.
import { spawn } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { setGemmThreads } from '@dsv3/core';
import { flopsPerToken } from '@dsv3/model';
import { modelHfConfig, type TrainPreset } from '../src/index.js';
import { benchConfig, benchStep } from './bench-step.js';

const args = process.argv.slice(2);
const flag = (name: string, dflt: string) => (args.includes(name) ? args[args.indexOf(name) + 1]! : dflt);
const preset = (args.find((a) => !a.startsWith('--') && (a === 'tiny' || a === 'mini')) ?? 'tiny') as TrainPreset;
const rounds = Number(flag('--rounds', '5'));
const python = flag('--python', process.env.DSV3_PYTHON ?? '/work/venv/bin/python');
const threads = Number(flag('--threads', '2'));
const warmup = Number(flag('--warmup', '4'));
if (!Number.isInteger(warmup) || warmup < 1) throw new Error(`--warmup must be an integer >= 1, got ${warmup}`);
// Both sides get the same thread count: torch's intra-op pool and our GEMM workers.
setGemmThreads(threads);

// `--sequential` (the default for mini, whose f32 weights, gradients and moments take ~11 GB per side)
// runs the torch side to the end and lets its process exit before the dsv3 model is built, so the
// two are never resident together; otherwise the rounds alternate, both seeing the same load.
const sequential = args.includes('--sequential') || preset === 'mini';
const cfg = benchConfig(preset);
const seqs = cfg.batch.sequences;
const S = cfg.batch.seqLen;
const hf = modelHfConfig(cfg);
const cfgPath = join(mkdtempSync(join(tmpdir(), 'dsv3-bench-')), 'config.json');
writeFileSync(cfgPath, JSON.stringify(hf));

// Each side reports [wall, process CPU] seconds per step; on a loaded machine CPU time is the steadier.
type Side = () => Promise<[number, number]>;
const startOurs = (): { model: ReturnType<typeof benchStep>['model']; run: Side } => {
  const { model, step } = benchStep(preset, { recycleActivations: !args.includes('--no-recycle') });
  return {
    model,
    run: async () => {
      const r = await step();
      return [r.wall, r.cpu];
    },
  };
};

const startTorch = async (): Promise<{ params: string; run: Side; close: () => Promise<void> }> => {
  const py = spawn(
    python,
    [join(import.meta.dirname, 'torch_step.py'), cfgPath, String(seqs), String(S), String(threads)],
    { stdio: ['pipe', 'pipe', 'inherit'] },
  );
  const exited = new Promise<void>((resolve) => py.on('exit', () => resolve()));
  const lines = createInterface({ input: py.stdout })[Symbol.asyncIterator]();
  const readLine = async () => {
    const r = await lines.next();
    if (r.done) throw new Error(`${python} exited before answering (torch and transformers needed)`);
    return r.value;
  };
  const ready = await readLine();
  return {
    params: ready.split(' ')[1]!,
    run: async () => {
      py.stdin.write('step\n');
      const [wall, cpuTime] = (await readLine()).split(' ').map(Number);
      return [wall!, cpuTime!];
    },
    close: async () => {
      py.stdin.end();
      await exited;
    },
  };
};

const a: number[] = [];
const b: number[] = [];
const aCpu: number[] = [];
const bCpu: number[] = [];
const timeRounds = async (side: Side, wall: number[], cpu: number[]) => {
  const [w, c] = await side();
  wall.push(w);
  cpu.push(c);
};
let model: ReturnType<typeof benchStep>['model'];
let torchParams: string;
if (sequential) {
  const torch = await startTorch();
  torchParams = torch.params;
  for (let w = 0; w < warmup; w++) await torch.run();
  for (let r = 0; r < rounds; r++) await timeRounds(torch.run, b, bCpu);
  await torch.close();
  const ours = startOurs();
  model = ours.model;
  for (let w = 0; w < warmup; w++) await ours.run();
  for (let r = 0; r < rounds; r++) await timeRounds(ours.run, a, aCpu);
} else {
  const ours = startOurs();
  const torch = await startTorch();
  model = ours.model;
  torchParams = torch.params;
  // Warm-up of both, then interleaved rounds.
  for (let w = 0; w < warmup; w++) {
    await ours.run();
    await torch.run();
  }
  for (let r = 0; r < rounds; r++) {
    await timeRounds(ours.run, a, aCpu);
    await timeRounds(torch.run, b, bCpu);
  }
  await torch.close();
}
const median = (xs: number[]) => [...xs].sort((x, y) => x - y)[Math.floor(xs.length / 2)]!;
const tokens = seqs * S;
const fpt = flopsPerToken(model.config, { context: S, mode: 'train' });
const row = (name: string, t: number) =>
  `| ${name} | ${(t * 1000).toFixed(0)} | ${(tokens / t).toFixed(0)} | ${(((tokens / t) * fpt) / 1e9).toFixed(2)} | ${((((tokens / t) * fpt) / cfg.peakFlops) * 100).toFixed(2)}% |`;
console.log(
  `\n${preset} preset: ${model.numParameters()} parameters (dsv3) / ${torchParams} (torch, no MTP), batch ${seqs} x ${S} tokens, ${threads} threads, median of ${rounds} ${sequential ? 'steps per side, torch first' : 'interleaved steps'}\n`,
);
console.log(
  '| implementation | step (ms) | tokens/s | model GFLOP/s | MFU (peak 192 GFLOP/s) |\n|---|---:|---:|---:|---:|',
);
console.log(row('dsv3 (CPU, fp32)', median(a)));
console.log(row(`PyTorch ${'(transformers, CPU, f32)'}`, median(b)));
console.log(`\nratio dsv3 / torch tokens/s: ${(median(b) / median(a)).toFixed(2)}x`);
console.log(
  `process CPU time per step (median): dsv3 ${(median(aCpu) * 1000).toFixed(0)} ms, torch ${(median(bCpu) * 1000).toFixed(0)} ms; ratio ${(median(bCpu) / median(aCpu)).toFixed(2)}x`,
);
