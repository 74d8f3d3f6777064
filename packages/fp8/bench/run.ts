// Benchmark of @dsv3/fp8: FP8 block-scaled GEMM vs an f32 GEMM of the same shape on the same backend,
// plus codec and quantizer throughput and an FP8Linear training step.
//   npx tsx --conditions=@dsv3/source bench/run.ts [--m 1024 --n 2048 --k 2048 --reps 2]
//        [--gpu-m 512 --gpu-n 1024 --gpu-k 1024 --no-webgpu]
//
// CPU: the typed-array kernels and the Tensor API ('cpu' kernels of the registry) against core's f32
// matmul. WebGPU (Dawn through @dsv3/core/node; lavapipe where there is no GPU): the 'webgpu' kernels
// against core's WebGPU f32 matmul, at a size a software adapter finishes in seconds.
//
// The f32 anchor is core's WASM sgemm (packages/core/src/cpu/gemm/index.ts, `sgemm({m,n,k,a,b,
// transB:true,c})`) when that file exists, else this package's JS gemmF32NT. With core's sgemm the
// FP8 GEMM is also run with it plugged into the slab seam (`slabGemm`).
import { relativeError } from '@dsv3/core/testing';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { decodeE4M3Array, encodeE4M3Array } from '../src/codec/e4m3';
import { fp8GemmBlockScaled, gemmF32NT } from '../src/gemm';
import type { SlabGemm } from '../src/gemm';
import { quantizeActivation, quantizeWeight } from '../src/quant';
import { Linear, Rng, fromRaw, matmul, mul, randn, sum } from '@dsv3/core';
import { createNodeWebGpuBackend } from '@dsv3/core/node';
import { fp8GemmBlockScaledT, quantizeActivationT, quantizeWeightT } from '../src/tensor/ops';
import { FP8Linear } from '../src/linear';
import { enableFp8SubgroupMatrix } from '../src/webgpu/kernels';

function arg(name: string, dflt: number): number {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 && process.argv[i + 1] !== undefined ? Number(process.argv[i + 1]) : dflt;
}

const M = arg('m', 1024);
const N = arg('n', 2048);
const K = arg('k', 2048);
const REPS = arg('reps', 2);

type CoreSgemm = (args: {
  m: number;
  n: number;
  k: number;
  a: Float32Array;
  b: Float32Array;
  transB?: boolean;
  c?: Float32Array;
}) => unknown;

async function loadCoreSgemm(): Promise<SlabGemm | null> {
  const url = new URL('../../core/src/cpu/gemm/index.ts', import.meta.url);
  if (!existsSync(fileURLToPath(url))) return null;
  try {
    const mod = (await import(url.href)) as { sgemm?: CoreSgemm };
    const sgemm = mod.sgemm;
    if (typeof sgemm !== 'function') return null;
    // sgemm overwrites c: c = a · b^T
    return (m, n, k, a, b, c) => {
      sgemm({ m, n, k, a, b, transB: true, c });
    };
  } catch (e) {
    console.log(`(core sgemm present but failed to load: ${(e as Error).message})`);
    return null;
  }
}

function best(f: () => void, reps: number): number {
  let t = Infinity;
  for (let r = 0; r < reps; r++) {
    const t0 = performance.now();
    f();
    t = Math.min(t, performance.now() - t0);
  }
  return t;
}

const rng = new Rng(42);
const rand = (): number => rng.uniform();
const x = new Float32Array(M * K).map(() => rand() * 2 - 1);
const w = new Float32Array(N * K).map(() => (rand() * 2 - 1) * 0.05);
const gflops = (ms: number): string => ((2 * M * N * K) / ms / 1e6).toFixed(2);

console.log(
  `@dsv3/fp8 CPU bench, node ${process.version}, M=${M} N=${N} K=${K} (${((2 * M * N * K) / 1e9).toFixed(2)} GFLOP), best of ${REPS}`,
);

// codecs and quantizers
// Outputs preallocated and touched once: in sandboxed VMs first-touch page faults of fresh typed
// arrays can cost more than the codec itself.
const bytes = encodeE4M3Array(x);
const decoded = decodeE4M3Array(bytes);
const encT = best(() => encodeE4M3Array(x, {}, bytes), 5);
const decT = best(() => decodeE4M3Array(bytes, decoded), 5);
const qaT = best(() => quantizeActivation(x, [M, K]), 3);
const qwT = best(() => quantizeWeight(w, [N, K]), 3);
const qa = quantizeActivation(x, [M, K]);
const qw = quantizeWeight(w, [N, K]);
const meps = (n: number, ms: number): string => `${(n / ms / 1e3).toFixed(0)} M elem/s`;
console.log(`encode e4m3: ${meps(x.length, encT)}; decode e4m3: ${meps(x.length, decT)}`);
console.log(
  `quantizeActivation [${M},${K}]: ${meps(M * K, qaT)}; quantizeWeight [${N},${K}]: ${meps(N * K, qwT)} (including allocation of q)`,
);

const core = await loadCoreSgemm();
const cF32 = new Float32Array(M * N);
const rows: [string, number][] = [];

const tJs = best(() => gemmF32NT(M, N, K, x, w, cF32), REPS);
rows.push(['f32 GEMM, JS (gemmF32NT)', tJs]);
if (core) {
  const c2 = new Float32Array(M * N);
  const tCore = best(() => core(M, N, K, x, w, c2), REPS);
  console.log(`core sgemm vs JS f32: rel L2 ${relativeError(c2, cF32).toExponential(2)}`);
  rows.push(['f32 GEMM, core WASM sgemm', tCore]);
} else {
  console.log('core sgemm (packages/core/src/cpu/gemm/index.ts) not found: f32 anchor is the JS loop');
}

let c8: Float32Array = new Float32Array(M * N);
const t8 = best(() => {
  c8 = fp8GemmBlockScaled(qa.q, qa.scales, qw.q, qw.scales, M, N, K);
}, REPS);
rows.push(['FP8 block-scaled GEMM, JS kernel', t8]);
console.log(`FP8 vs f32 result (quantization error): rel L2 ${relativeError(c8, cF32).toExponential(2)}`);
if (core) {
  let c9: Float32Array = new Float32Array(M * N);
  const t9 = best(() => {
    c9 = fp8GemmBlockScaled(qa.q, qa.scales, qw.q, qw.scales, M, N, K, { slabGemm: core });
  }, REPS);
  console.log(`FP8 with core sgemm slabs vs JS kernel: rel L2 ${relativeError(c9, c8).toExponential(2)}`);
  rows.push(['FP8 block-scaled GEMM, core sgemm per 128-slab', t9]);
  let c10: Float32Array = new Float32Array(M * N);
  const t10 = best(() => {
    c10 = fp8GemmBlockScaled(qa.q, qa.scales, qw.q, qw.scales, M, N, K, { slabGemm: core, dequantizeFirst: true });
  }, REPS);
  console.log(`FP8 dequantizeFirst + core sgemm vs JS kernel: rel L2 ${relativeError(c10, c8).toExponential(2)}`);
  rows.push(['FP8 block-scaled GEMM, dequantizeFirst + one core sgemm', t10]);
}

// ---- Tensor API on the CPU backend (the registry's 'cpu' kernels) vs core's f32 matmul ----
{
  const xt = fromRaw('f32', [M, K], x);
  const wt = fromRaw('f32', [N, K], w);
  const tq = best(() => quantizeActivationT(xt), REPS);
  const xq = quantizeActivationT(xt);
  const wq = quantizeWeightT(wt);
  rows.push(['Tensor API: core f32 matmul (x · wᵀ, cpu backend)', best(() => matmul(xt, wt, { transB: true }), REPS)]);
  let yt = fp8GemmBlockScaledT(xq.q, xq.scales, wq.q, wq.scales);
  rows.push([
    'Tensor API: fp8GemmBlockScaledT (cpu kernel: scales folded per block + core sgemm)',
    best(() => (yt = fp8GemmBlockScaledT(xq.q, xq.scales, wq.q, wq.scales)), REPS),
  ]);
  console.log(
    `Tensor API fp8GemmBlockScaledT vs typed-array JS kernel: rel L2 ${relativeError(yt.dataSync() as Float32Array, c8).toExponential(2)}; quantizeActivationT [${M},${K}]: ${meps(M * K, tq)}`,
  );
}

console.log('');
console.log('| kernel (CPU) | time (ms) | GFLOP/s |');
console.log('|---|---:|---:|');
for (const [name, ms] of rows) console.log(`| ${name} | ${ms.toFixed(0)} | ${gflops(ms)} |`);

// ---- FP8Linear training step (forward + backward: Fprop, Dgrad, Wgrad) vs core Linear ----
{
  const [T, IN, OUT] = [M, K, N];
  const xs = randn([T, IN], { seed: 3 });
  const gs = randn([T, OUT], { seed: 4 });
  const lin = new Linear(IN, OUT, { seed: 5 });
  const fp8 = new FP8Linear(IN, OUT, { seed: 5 });
  const step = (layer: Linear | FP8Linear): void => {
    layer.zeroGrad();
    const xl = xs.detach().requireGrad();
    sum(mul(layer.forward(xl), gs)).backward();
  };
  const tl = best(() => step(lin), REPS);
  const tf = best(() => step(fp8), REPS);
  const flop = 3 * 2 * T * IN * OUT;
  console.log('');
  console.log(`| layer step, ${T} tokens, ${IN} → ${OUT} (fwd + bwd, 3 GEMMs, CPU) | time (ms) | GFLOP/s |`);
  console.log('|---|---:|---:|');
  console.log(`| core Linear (f32) | ${tl.toFixed(0)} | ${(flop / tl / 1e6).toFixed(2)} |`);
  console.log(`| FP8Linear (quantize + 3 FP8 GEMMs) | ${tf.toFixed(0)} | ${(flop / tf / 1e6).toFixed(2)} |`);
}

// ---- WebGPU ----
if (!process.argv.includes('--no-webgpu')) await benchWebGpu();

async function benchWebGpu(): Promise<void> {
  const gm = arg('gpu-m', 512);
  const gn = arg('gpu-n', 1024);
  const gk = arg('gpu-k', 1024);
  let be: Awaited<ReturnType<typeof createNodeWebGpuBackend>>;
  try {
    be = await createNodeWebGpuBackend();
  } catch (e) {
    console.log(`\nWebGPU: skipped (${(e as Error).message})`);
    return;
  }
  try {
    const info = be.adapterInfo;
    const name =
      [info.vendor, info.architecture, info.device].filter(Boolean).join(' / ') +
      (info.isFallbackAdapter ? ' [software/fallback adapter]' : '');
    const rng7 = new Rng(7);
    const r = (): number => rng7.uniform();
    const xg = new Float32Array(gm * gk).map(() => r() * 2 - 1);
    const wg = new Float32Array(gn * gk).map(() => (r() * 2 - 1) * 0.05);
    const xt = fromRaw('f32', [gm, gk], xg, be);
    const wt = fromRaw('f32', [gn, gk], wg, be);
    const xq = quantizeActivationT(xt);
    const wq = quantizeWeightT(wt);
    const gfl = (ms: number): string => ((2 * gm * gn * gk) / ms / 1e6).toFixed(2);
    /** GPU time of one call (timestamp queries when the adapter has them, else wall time to completion), best of reps. */
    const time = async (f: () => { dispose(): void }): Promise<number> => {
      const warm = f();
      await be.sync();
      warm.dispose();
      let t = Infinity;
      for (let i = 0; i < REPS; i++) {
        let out: { dispose(): void } | null = null;
        const r2 = await be.timeGpu(() => {
          out = f();
        });
        out!.dispose();
        if (r2) t = Math.min(t, r2.ms);
      }
      return t;
    };
    const gRows: [string, number][] = [];
    gRows.push(['core f32 matmul (x · wᵀ)', await time(() => matmul(xt, wt, { transB: true }))]);
    for (const f16 of be.features.shaderF16 ? [false, true] : [false]) {
      gRows.push([
        `fp8GemmBlockScaledT, ${f16 ? 'f16' : 'f32'} workgroup tiles`,
        await time(() => fp8GemmBlockScaledT(xq.q, xq.scales, wq.q, wq.scales, { webgpu: { f16 } })),
      ]);
    }
    const tq = await time(() => quantizeActivationT(xt).q);
    console.log('');
    console.log(
      `WebGPU: ${name}; shader-f16 ${be.features.shaderF16}, subgroup-matrix ${be.features.subgroupMatrix}; timing by ${be.features.timestampQuery ? 'timestamp queries' : 'wall clock'}`,
    );
    console.log(`subgroup-matrix FP8 path: ${await enableFp8SubgroupMatrix(be)}`);
    console.log(`quantizeActivationT [${gm},${gk}] on WebGPU: ${tq.toFixed(1)} ms (${meps(gm * gk, tq)})`);
    console.log('');
    console.log(`| kernel (WebGPU, M=${gm} N=${gn} K=${gk}) | time (ms) | GFLOP/s |`);
    console.log('|---|---:|---:|');
    for (const [n, ms] of gRows) console.log(`| ${n} | ${ms.toFixed(1)} | ${gfl(ms)} |`);
  } finally {
    be.dispose();
  }
  console.log('');
  console.log(
    "Not measured (no GPU lent to this session): H200 shape 4096x7168x7168; anchor: DeepSeek's Triton block-scaled fp8_gemm",
  );
  console.log("at 682 TFLOP/s on the project's H200 (shared/docs/webgpu-on-h200.md).");
}
