// Routed experts in their stored / trained precision, the grouped path against the per-expert one it
// replaces, at the V3-mini MoE shape, interleaved in one run:
//   CPU  W8A8 forward: MoE.useFp8Experts (grouped block-scaled FP8 GEMM) vs each expert a W8A8
//        FP8Linear run on its segment (expertsAsModules, the loader's former CPU path);
//   CPU  fp8 recipe forward + backward: MoE.expertRecipe 'fp8' vs per-expert FP8Linear over the masters
//        (@dsv3/train's former recipe), and the same for 'bf16';
//   WebGPU (when an adapter is present) forward: f32 / bf16 / FP8 expert weights on the grouped path.
//
//   npx tsx --conditions=@dsv3/source bench/experts-precision.ts [--tokens 64] [--iters 5] [--no-webgpu]
//   single core while the machine is shared: taskset -c 1 npx tsx ... (one thread each side)
import { availableParallelism, loadavg } from 'node:os';
import { cast, mul, noGrad, Rng, sum, tensor, type Backend, type Linear, type Tensor } from '@dsv3/core';
import { FP8Linear, quantizeWeightT, type QuantizedTensor } from '@dsv3/fp8';
import { MoE } from '../src/index';
import { V3_MINI_MOE } from './v3-mini-moe';

const args = process.argv.slice(2);
const opt = (name: string, def: number): number => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? Number(args[i + 1]) : def;
};
const T = opt('tokens', 64);
const ITERS = opt('iters', 5);
const cfg = { ...V3_MINI_MOE, nSharedExperts: 0 };
const H = cfg.hiddenSize;

type ExpertLinears = { gateProj: Linear; upProj: Linear; downProj: Linear };
const PROJ = ['gateProj', 'upProj', 'downProj'] as const;
const experts = (m: MoE) => m.experts.items as unknown as ExpertLinears[];

/**
 * Median milliseconds per variant, interleaved within each iteration and in reversed order every other
 * one (whichever runs second pays for the first's garbage: measured 20% on the W8A8 pair).
 */
async function race(variants: Record<string, () => Promise<void>>): Promise<Record<string, number>> {
  const times: Record<string, number[]> = Object.fromEntries(Object.keys(variants).map((k) => [k, []]));
  for (const f of Object.values(variants)) await f(); // warm-up
  for (let i = 0; i < ITERS; i++)
    for (const [k, f] of i % 2 ? Object.entries(variants).reverse() : Object.entries(variants)) {
      const t0 = performance.now();
      await f();
      times[k]!.push(performance.now() - t0);
    }
  return Object.fromEntries(Object.entries(times).map(([k, v]) => [k, v.sort((a, b) => a - b)[v.length >> 1]!]));
}

function report(title: string, r: Record<string, number>, anchor: string): void {
  console.log(`\n${title} (T = ${T}, median of ${ITERS})`);
  for (const [k, ms] of Object.entries(r))
    console.log(`  ${k.padEnd(34)} ${ms.toFixed(1).padStart(9)} ms   ${(r[anchor]! / ms).toFixed(2)}x`);
}

const x = tensor(new Rng(1).fillNormal(new Float64Array(T * H), 0, 1), { shape: [T, H], dtype: 'f32' });
const g = tensor(new Rng(2).fillNormal(new Float64Array(T * H), 0, 1), { shape: [T, H], dtype: 'f32' });

async function cpuW8A8(): Promise<void> {
  const grouped = new MoE(cfg, { seed: 3 });
  const perExpert = new MoE(cfg, { seed: 3 });
  const q = (pick: (m: ExpertLinears) => Linear): QuantizedTensor[] =>
    experts(grouped).map((m) => quantizeWeightT(pick(m).weight.value));
  const w = { gate: q((m) => m.gateProj), up: q((m) => m.upProj), down: q((m) => m.downProj) };
  grouped.useFp8Experts(w);
  perExpert.expertsAsModules = true;
  experts(perExpert).forEach((m, e) => {
    [w.gate, w.up, w.down].forEach((ws, i) => {
      const lin = FP8Linear.fromCheckpoint(ws[e]!.q, ws[e]!.scales);
      m[PROJ[i]!].forward = (v: Tensor) => lin.forward(v);
    });
  });
  const r = await race({
    'per-expert FP8Linear (before)': async () => void noGrad(() => perExpert.forward(x)).dataSync(),
    'grouped FP8 GEMM (after)': async () => void noGrad(() => grouped.forward(x)).dataSync(),
  });
  report('CPU W8A8 routed experts, forward', r, 'per-expert FP8Linear (before)');
}

async function cpuRecipe(precision: 'bf16' | 'fp8'): Promise<void> {
  const grouped = new MoE(cfg, { seed: 3 });
  grouped.expertRecipe = precision;
  const perExpert = new MoE(cfg, { seed: 3 });
  perExpert.expertsAsModules = true;
  const r16 = (t: Tensor): Tensor => cast(cast(t, 'bf16'), 'f32');
  for (const m of experts(perExpert))
    for (const p of PROJ) {
      const lin = m[p];
      if (precision === 'bf16') lin.forward = (v: Tensor) => r16(v).matmul(r16(lin.weight.value), { transB: true });
      else {
        const fp8 = new FP8Linear(lin.inFeatures, lin.outFeatures, { std: 0 });
        Object.defineProperty(fp8, 'weight', { value: lin.weight, writable: false });
        lin.forward = (v: Tensor) => fp8.forward(v);
      }
    }
  const step = (m: MoE) => async () => {
    const xx = x.detach().requireGrad();
    sum(mul(m.forward(xx), g)).backward();
    xx.grad!.dataSync();
    for (const p of m.parameters()) p.value.zeroGrad();
  };
  const r = await race({ 'per-expert layers (before)': step(perExpert), 'grouped recipe (after)': step(grouped) });
  report(`CPU ${precision} recipe, routed experts forward + backward`, r, 'per-expert layers (before)');
}

async function webgpu(): Promise<void> {
  const { webGpuForTests } = await import('@dsv3/core/node');
  const gpu = (await webGpuForTests('moe-bench')) as (Backend & { dispose(): void }) | null;
  if (!gpu) return;
  const make = () => new MoE(cfg, { seed: 3, backend: gpu });
  const f32 = make();
  const bf16 = make();
  for (const m of experts(bf16)) for (const p of PROJ) m[p].weight.value = cast(m[p].weight.value.detach(), 'bf16');
  const fp8 = make();
  const q = (p: (typeof PROJ)[number]) => experts(fp8).map((m) => quantizeWeightT(m[p].weight.value));
  fp8.useFp8Experts({ gate: q('gateProj'), up: q('upProj'), down: q('downProj') });
  const xg = tensor(await x.data(), { shape: [T, H], backend: gpu });
  const run = (m: MoE) => async () => void (await noGrad(() => m.forward(xg)).data());
  const r = await race({ 'f32 weights': run(f32), 'bf16 weights': run(bf16), 'FP8 weights (W8A8)': run(fp8) });
  report('WebGPU routed experts, forward', r, 'f32 weights');
  gpu.dispose();
}

console.log(
  `V3-mini MoE (${cfg.nRoutedExperts} experts, top-${cfg.numExpertsPerTok}, H ${H}, I ${cfg.moeIntermediateSize}); ${availableParallelism()} cores, load ${loadavg()[0]!.toFixed(1)}`,
);
if (!args.includes('--no-cpu')) {
  await cpuW8A8();
  if (!args.includes('--w8a8-only')) {
    await cpuRecipe('bf16');
    await cpuRecipe('fp8');
  }
}
if (!args.includes('--no-webgpu')) await webgpu();
