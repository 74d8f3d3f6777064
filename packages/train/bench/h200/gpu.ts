// The WebGPU half of the H200 run (run.sh): validates the subgroup-matrix f16 and FP8 GEMMs against
// the tiled kernels, then times the f32 GEMM, the f16 GEMM, the block-scaled FP8 GEMM, V3-mini
// decode at batch 1/16/64 (f32 weights, then the f16 compute mode where the device has shader-f16)
// and a training step, one JSON line per result on stdout. `--small` runs the same code at tiny sizes
// (lavapipe, CI); `--ratios dsv3.jsonl anchors.jsonl` pairs each result with the torch anchor of the
// same name, or the one it names (anchors.py), and prints the ratios.
//
//   npx tsx --conditions=@dsv3/source packages/train/bench/h200/gpu.ts --small
import { readFileSync, writeFileSync } from 'node:fs';
import { pathToFileURL } from 'node:url';
import { AdamW, fromRaw, matmul, randn, type Backend, type Tensor } from '@dsv3/core';
import { relativeError } from '@dsv3/core/testing';
import { createNodeWebGpuBackend, type WebGpuBackend } from '@dsv3/core/node';
import { enableFp8SubgroupMatrix, fp8GemmBlockScaledT, quantizeActivationT, quantizeWeightT } from '@dsv3/fp8';
import { benchGeneration, DeepseekV3ForCausalLM, parseConfig, useDeviceHalfWeights } from '@dsv3/model';
import { PRESET_MODELS, trainStep } from '../../src/index.js';

/** Sizes of one run: the H200's, or tiny ones that exercise the same code on a software adapter. */
export interface H200Sizes {
  gemm: number;
  fp8: [m: number, n: number, k: number];
  /** f16 and FP8 validation shapes (M, N, K) */
  check: [number, number, number];
  model: 'mini' | 'tiny';
  decodeBatches: number[];
  prefill: number;
  decode: number;
  train: { batch: number; seqLen: number; steps: number };
}

export const FULL: H200Sizes = {
  gemm: 4096,
  fp8: [4096, 7168, 7168],
  check: [512, 640, 896],
  model: 'mini',
  decodeBatches: [1, 16, 64],
  prefill: 32,
  decode: 32,
  train: { batch: 4, seqLen: 256, steps: 3 },
};

export const SMALL: H200Sizes = {
  gemm: 128,
  fp8: [64, 256, 256],
  check: [64, 96, 256],
  model: 'tiny',
  decodeBatches: [1, 2],
  prefill: 4,
  decode: 3,
  train: { batch: 2, seqLen: 16, steps: 1 },
};

/** The floors issue 18 sets on the H200 (TFLOP/s). */
const TARGETS: Record<string, number> = { 'gemm-f32': 40, 'gemm-f16': 150, 'fp8-gemm': 200 };

export type Line = Record<string, unknown> & { kind: string; name: string };

const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
const onGpu = (t: Tensor, be: Backend): Tensor => fromRaw(t.dtype, t.shape, t.rawSync(), be);

/** GPU milliseconds per call of `fn`: repetitions so a sample spans ~30 ms, median of 5 samples. */
async function gpuMs(be: WebGpuBackend, fn: () => void): Promise<{ ms: number; timing: string }> {
  const once = await be.timeGpu(fn); // also builds the pipelines
  const reps = Math.min(200, Math.max(1, Math.ceil(30 / Math.max(once?.ms ?? 1, 1e-3))));
  const times: number[] = [];
  let timing = 'wall';
  for (let s = 0; s < 5; s++) {
    const r = await be.timeGpu(() => {
      for (let i = 0; i < reps; i++) fn();
    });
    if (!r) continue;
    timing = r.timestamps ? 'timestamp-query' : 'wall';
    times.push(r.ms / reps);
  }
  return { ms: median(times), timing };
}

/** The subgroup-matrix f16 GEMMs (f16 × f16, f32 × f16 weight) against the tiled one (a second device with the feature off). */
async function checkF16(be: WebGpuBackend, [m, n, k]: [number, number, number]): Promise<Line> {
  const base = { kind: 'check', name: 'f16-subgroup-matrix-vs-tiled', status: be.subgroupMatrixStatus };
  if (!be.subgroupMatrixGemm) return { ...base, pass: null };
  const tiled = await createNodeWebGpuBackend({ subgroupMatrix: false });
  try {
    const a = randn([m, k], { seed: 1, dtype: 'f16' });
    const b = randn([k, n], { seed: 2, dtype: 'f16' });
    const fast = await matmul(onGpu(a, be), onGpu(b, be)).data();
    const ref = await matmul(onGpu(a, tiled), onGpu(b, tiled)).data();
    const relErr = relativeError(fast, ref);
    // The f16 compute mode's product: f32 activations × an f16 weight, which the subgroup-matrix kernel
    // takes with the activations rounded to f16 (the tiled kernel keeps them f32): within u = 2^-11.
    const x = randn([m, k], { seed: 3 });
    const w = randn([n, k], { seed: 4, dtype: 'f16' });
    const mixed = await matmul(onGpu(x, be), onGpu(w, be), { transB: true }).data();
    const mixedRef = await matmul(onGpu(x, tiled), onGpu(w, tiled), { transB: true }).data();
    const weightRelErr = relativeError(mixed, mixedRef);
    return {
      ...base,
      shape: [m, n, k],
      relErr,
      weightRelErr,
      pass: relErr <= 1e-5 && weightRelErr <= 2 ** -11,
    };
  } finally {
    tiled.dispose();
  }
}

/**
 * The subgroup-matrix FP8 GEMM against the tiled one. Without the feature (lavapipe) the same
 * comparison runs the kernel's skeleton with emulated matrix builtins, so the check itself is tested.
 */
async function checkFp8(be: WebGpuBackend, [m, n, k]: [number, number, number]): Promise<Line> {
  const status = await enableFp8SubgroupMatrix(be);
  const enabled = status.startsWith('enabled');
  const x = quantizeActivationT(randn([m, k], { seed: 3 }));
  const w = quantizeWeightT(randn([n, k], { seed: 4 }));
  const args = [onGpu(x.q, be), onGpu(x.scales, be), onGpu(w.q, be), onGpu(w.scales, be)] as const;
  const fast = await fp8GemmBlockScaledT(...args, {
    webgpu: enabled ? {} : { emulateSubgroupMatrix: { M: 16, N: 16, K: 16 } },
  }).data();
  const ref = await fp8GemmBlockScaledT(...args, { webgpu: { subgroupMatrix: false } }).data();
  const relErr = relativeError(fast, ref);
  return {
    kind: 'check',
    name: 'fp8-subgroup-matrix-vs-tiled',
    status,
    path: enabled ? 'subgroup-matrix' : 'emulated subgroup-matrix skeleton',
    shape: [m, n, k],
    relErr,
    pass: relErr <= 1e-6,
  };
}

async function timeGemm(be: WebGpuBackend, dtype: 'f32' | 'f16', n: number): Promise<Line> {
  const a = onGpu(randn([n, n], { seed: 5, dtype }), be);
  const b = onGpu(randn([n, n], { seed: 6, dtype }), be);
  const { ms, timing } = await gpuMs(be, () => matmul(a, b).dispose());
  const path = dtype === 'f16' && be.subgroupMatrixGemm ? 'subgroup-matrix' : 'tiled';
  const tflops = (2 * n ** 3) / (ms * 1e-3) / 1e12;
  return { kind: 'measure', name: `gemm-${dtype}`, shape: [n, n, n], path, ms, timing, value: tflops, unit: 'TFLOP/s' };
}

async function timeFp8(be: WebGpuBackend, [m, n, k]: [number, number, number]): Promise<Line> {
  const x = quantizeActivationT(randn([m, k], { seed: 7 }));
  const w = quantizeWeightT(randn([n, k], { seed: 8 }));
  const args = [onGpu(x.q, be), onGpu(x.scales, be), onGpu(w.q, be), onGpu(w.scales, be)] as const;
  const { ms, timing } = await gpuMs(be, () => fp8GemmBlockScaledT(...args).dispose());
  const tflops = (2 * m * n * k) / (ms * 1e-3) / 1e12;
  return { kind: 'measure', name: 'fp8-gemm', shape: [m, n, k], ms, timing, value: tflops, unit: 'TFLOP/s' };
}

function hfConfig(model: H200Sizes['model']): Record<string, unknown> {
  // Torch has no MTP modules: both sides run without them.
  return { ...PRESET_MODELS[model], num_nextn_predict_layers: 0 };
}

/**
 * Decode tokens/s at each batch with f32 weights, then (where the device has shader-f16) in the f16
 * compute mode: the same model's projections converted to f16 on the device. Both pair with torch's
 * bf16 decode anchor of the batch.
 */
async function timeDecode(be: WebGpuBackend, s: H200Sizes): Promise<Line[]> {
  const model = new DeepseekV3ForCausalLM(parseConfig(hfConfig(s.model)), { backend: be, seed: 1 });
  model.eval();
  const out: Line[] = [];
  const modes = be.features.shaderF16 ? (['f32', 'f16'] as const) : (['f32'] as const);
  for (const weights of modes) {
    if (weights === 'f16') useDeviceHalfWeights(model, 'f16');
    await benchGeneration(model, { prefill: 2, decode: 1, batch: 1 }); // warm-up: pipelines
    for (const batch of s.decodeBatches) {
      const r = await benchGeneration(model, { prefill: s.prefill, decode: s.decode, batch });
      const extra = {
        model: s.model,
        weights,
        prefill: s.prefill,
        decode: s.decode,
        batch,
        anchor: `decode-b${batch}`,
      };
      const name = weights === 'f32' ? `decode-b${batch}` : `decode-f16-b${batch}`;
      out.push({ kind: 'measure', name, ...extra, value: r.decodeTokS, unit: 'tokens/s' });
    }
  }
  return out;
}

async function timeTrain(be: WebGpuBackend, s: H200Sizes): Promise<Line> {
  const model = new DeepseekV3ForCausalLM(parseConfig(hfConfig(s.model)), { backend: be, seed: 2 });
  model.train();
  const params = model.parameters();
  const opt = new AdamW(params, { betas: [0.9, 0.95], weightDecay: 0.1, stateDType: 'bf16' });
  const { batch, seqLen, steps } = s.train;
  const V = model.config.vocabSize;
  let seed = 1;
  const sequences = () =>
    Array.from({ length: batch }, () => Int32Array.from({ length: seqLen }, () => (seed++ * 7919) % V));
  const step = () =>
    trainStep(model, [opt], params, {
      sequences: sequences(),
      microBatch: batch,
      lr: 1e-4,
      mtpLambda: 0,
      seqAuxAlpha: 0,
      biasUpdateSpeed: 0,
      clipNorm: 1,
    });
  await step(); // warm-up
  const times: number[] = [];
  let loss = 0;
  for (let i = 0; i < steps; i++) {
    const t0 = performance.now();
    loss = (await step()).loss;
    await be.sync();
    times.push(performance.now() - t0);
  }
  const ms = median(times);
  const extra = { model: s.model, batch, seqLen, ms, loss, optimizer: 'AdamW (bf16 moments)' };
  return { kind: 'measure', name: 'train-step', ...extra, value: (batch * seqLen) / (ms / 1000), unit: 'tokens/s' };
}

/** Runs everything on `be`, handing each line to `emit` as soon as it is measured. */
export async function runH200(be: WebGpuBackend, s: H200Sizes, emit: (l: Line) => void): Promise<void> {
  const f = be.features;
  emit({
    kind: 'device',
    name: 'adapter',
    ...be.adapterInfo,
    shaderF16: f.shaderF16,
    subgroups: f.subgroups,
    timestampQuery: f.timestampQuery,
    subgroupMatrixConfigs: f.subgroupMatrixConfigs,
  });
  // Each part reports its own failure and the run goes on: one broken part must not cost the rest.
  const part = async (name: string, fn: () => Promise<Line | Line[]>) => {
    try {
      const r = await fn();
      for (const l of Array.isArray(r) ? r : [r]) emit(l);
    } catch (e) {
      emit({ kind: 'error', name, error: e instanceof Error ? (e.stack ?? e.message) : String(e) });
    }
  };
  await part('f16-subgroup-matrix-vs-tiled', () => checkF16(be, s.check));
  await part('fp8-subgroup-matrix-vs-tiled', () => checkFp8(be, s.check));
  await part('gemm-f32', () => timeGemm(be, 'f32', s.gemm));
  if (f.shaderF16) await part('gemm-f16', () => timeGemm(be, 'f16', s.gemm));
  await part('fp8-gemm', () => timeFp8(be, s.fp8));
  await part('decode', () => timeDecode(be, s));
  await part('train-step', () => timeTrain(be, s));
}

/** Pairs each measurement with the anchor line of the same name: dsv3 / anchor (higher is better for both). */
export function ratios(dsv3: Line[], anchors: Line[]): Line[] {
  const out: Line[] = [];
  for (const m of dsv3.filter((l) => l.kind === 'measure')) {
    // A measurement names its anchor when they differ (f16 decode against torch's bf16 decode).
    const a = anchors.find((l) => l.kind === 'anchor' && l.name === (m.anchor ?? m.name));
    if (!a || typeof a.value !== 'number' || typeof m.value !== 'number') continue;
    // The floors are H200 figures: judged only against a run on a CUDA device.
    const target = a.device === 'cuda' ? TARGETS[m.name] : undefined;
    out.push({
      kind: 'ratio',
      name: m.name,
      dsv3: m.value,
      anchor: a.value,
      anchorWhat: a.what,
      unit: m.unit,
      ratio: m.value / a.value,
      ...(target !== undefined && { target, meetsTarget: m.value >= target }),
    });
  }
  return out;
}

const readLines = (path: string): Line[] =>
  readFileSync(path, 'utf8')
    .split('\n')
    .filter((l) => l.trim().startsWith('{'))
    .map((l) => JSON.parse(l) as Line);

async function main(argv: string[]): Promise<void> {
  const print = (l: Line) => console.log(JSON.stringify(l));
  const ri = argv.indexOf('--ratios');
  if (ri >= 0) {
    for (const l of ratios(readLines(argv[ri + 1]!), readLines(argv[ri + 2]!))) print(l);
    return;
  }
  const small = argv.includes('--small');
  const sizes = small ? SMALL : FULL;
  const ci = argv.indexOf('--config-out');
  if (ci >= 0) writeFileSync(argv[ci + 1]!, `${JSON.stringify(hfConfig(sizes.model), null, 2)}\n`);
  // On the H200 a software fallback adapter would time the wrong thing: refuse it there.
  const be = await createNodeWebGpuBackend({ requireHardware: !small });
  try {
    if (!small && be.adapterInfo.vendor !== 'nvidia')
      throw new Error(`expected the NVIDIA adapter, got vendor '${be.adapterInfo.vendor}' (${be.adapterInfo.device})`);
    await runH200(be, sizes, print);
  } finally {
    be.dispose();
  }
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) await main(process.argv.slice(2));
