// CPU benchmark of @dsv3/fp8: FP8 block-scaled GEMM vs an f32 GEMM of the same shape, plus codec and
// quantizer throughput.   npx tsx bench/run.ts [--m 1024 --n 2048 --k 2048 --reps 2]
//
// The f32 anchor is core's WASM sgemm (packages/core/src/cpu/gemm/index.ts, `sgemm({m,n,k,a,b,
// transB:true,c})`) when that file exists, else this package's JS gemmF32NT. With core's sgemm the
// FP8 GEMM is also run with it plugged into the slab seam (`slabGemm`).
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { decodeE4M3Array, encodeE4M3Array } from '../src/codec/e4m3';
import { fp8GemmBlockScaled, gemmF32NT } from '../src/gemm';
import type { SlabGemm } from '../src/gemm';
import { mulberry32 } from '../src/accum-study';
import { quantizeActivation, quantizeWeight } from '../src/quant';

function arg(name: string, dflt: number): number {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 && process.argv[i + 1] !== undefined ? Number(process.argv[i + 1]) : dflt;
}

const M = arg('m', 1024);
const N = arg('n', 2048);
const K = arg('k', 2048);
const REPS = arg('reps', 2);

type CoreSgemm = (args: { m: number; n: number; k: number; a: Float32Array; b: Float32Array; transB?: boolean; c?: Float32Array }) => unknown;

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

function relL2(x: Float32Array, y: Float32Array): number {
  let a = 0;
  let b = 0;
  for (let i = 0; i < x.length; i++) {
    a += (x[i]! - y[i]!) ** 2;
    b += y[i]! ** 2;
  }
  return Math.sqrt(a / b);
}

const rand = mulberry32(42);
const x = new Float32Array(M * K).map(() => rand() * 2 - 1);
const w = new Float32Array(N * K).map(() => (rand() * 2 - 1) * 0.05);
const gflops = (ms: number): string => ((2 * M * N * K) / ms / 1e6).toFixed(2);

console.log(`@dsv3/fp8 CPU bench, node ${process.version}, M=${M} N=${N} K=${K} (${((2 * M * N * K) / 1e9).toFixed(2)} GFLOP), best of ${REPS}`);

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
console.log(`quantizeActivation [${M},${K}]: ${meps(M * K, qaT)}; quantizeWeight [${N},${K}]: ${meps(N * K, qwT)} (including allocation of q)`);

const core = await loadCoreSgemm();
const cF32 = new Float32Array(M * N);
const rows: [string, number][] = [];

const tJs = best(() => gemmF32NT(M, N, K, x, w, cF32), REPS);
rows.push(['f32 GEMM, JS (gemmF32NT)', tJs]);
if (core) {
  const c2 = new Float32Array(M * N);
  const tCore = best(() => core(M, N, K, x, w, c2), REPS);
  console.log(`core sgemm vs JS f32: rel L2 ${relL2(c2, cF32).toExponential(2)}`);
  rows.push(['f32 GEMM, core WASM sgemm', tCore]);
} else {
  console.log('core sgemm (packages/core/src/cpu/gemm/index.ts) not found: f32 anchor is the JS loop');
}

let c8: Float32Array = new Float32Array(M * N);
const t8 = best(() => {
  c8 = fp8GemmBlockScaled(qa.q, qa.scales, qw.q, qw.scales, M, N, K);
}, REPS);
rows.push(['FP8 block-scaled GEMM, JS kernel', t8]);
console.log(`FP8 vs f32 result (quantization error): rel L2 ${relL2(c8, cF32).toExponential(2)}`);
if (core) {
  let c9: Float32Array = new Float32Array(M * N);
  const t9 = best(() => {
    c9 = fp8GemmBlockScaled(qa.q, qa.scales, qw.q, qw.scales, M, N, K, { slabGemm: core });
  }, REPS);
  console.log(`FP8 with core sgemm slabs vs JS kernel: rel L2 ${relL2(c9, c8).toExponential(2)}`);
  rows.push(['FP8 block-scaled GEMM, core sgemm per 128-slab', t9]);
  let c10: Float32Array = new Float32Array(M * N);
  const t10 = best(() => {
    c10 = fp8GemmBlockScaled(qa.q, qa.scales, qw.q, qw.scales, M, N, K, { slabGemm: core, dequantizeFirst: true });
  }, REPS);
  console.log(`FP8 dequantizeFirst + core sgemm vs JS kernel: rel L2 ${relL2(c10, c8).toExponential(2)}`);
  rows.push(['FP8 block-scaled GEMM, dequantizeFirst + one core sgemm', t10]);
}

console.log('');
console.log('| kernel | time (ms) | GFLOP/s |');
console.log('|---|---:|---:|');
for (const [name, ms] of rows) console.log(`| ${name} | ${ms.toFixed(0)} | ${gflops(ms)} |`);
