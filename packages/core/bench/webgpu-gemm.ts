// WebGPU GEMM benchmark: the tiled f32 kernel (and f16: the subgroup-matrix kernel where the device
// has one that passed its self-test, else the tiled kernel on f16 inputs) at a few sizes. GPU time
// comes from timestamp queries when the device has them (else wall time over enough repetitions
// that a sample spans tens of milliseconds); warm-up first, median of the samples.
//
//   npx tsx packages/core/bench/webgpu-gemm.ts            (sizes: DSV3_GEMM_SIZES=1024,4096)
//   npx esbuild packages/core/bench/webgpu-gemm.ts --bundle --platform=node --format=esm \
//     --external:webgpu --outfile=.device/gpu.mjs         (then run it on a GPU machine)
import { pathToFileURL } from 'node:url';
import { cpu, fromRaw } from '../src/index.js';
import { encodeF16 } from '../src/dtype.js';
import { exec } from '../src/ops/exec.js';
import { createNodeWebGpuBackend } from '../src/node.js';
import { adapterSummary } from '../src/webgpu/device.js';
import type { WebGpuBackend, WebGpuStorage } from '../src/webgpu/backend.js';
import { tiledGemm, type GemmArgs } from '../src/webgpu/kernels/matmul.js';
import { subgroupMatmul, subgroupMatmulApplies } from '../src/webgpu/kernels/matmul-subgroup.js';

export interface WebGpuGemmResult {
  dtype: 'f32' | 'f16';
  n: number;
  path: string;
  ms: number;
  tflops: number;
  timing: 'timestamp-query' | 'wall';
  samples: number;
  /** max relative error of a few sampled outputs against an f64 dot product */
  check: number;
  /** the CPU backend's f32 matmul (WASM sgemm) at the same size, measured in the same run (n <= 1024) */
  cpuMs?: number;
}

export interface WebGpuGemmBenchOptions {
  sizes?: number[];
  backend?: WebGpuBackend;
  /** samples per size (median reported), default 7 */
  samples?: number;
  log?: (line: string) => void;
}

function defaultSizes(be: WebGpuBackend): number[] {
  const env = typeof process !== 'undefined' ? process.env.DSV3_GEMM_SIZES : undefined;
  if (env)
    return env
      .split(',')
      .map((s) => Number(s.trim()))
      .filter((n) => n > 0);
  const software =
    be.adapterInfo.isFallbackAdapter ||
    /llvmpipe|lavapipe|swiftshader/i.test(`${be.adapterInfo.device} ${be.adapterInfo.description}`);
  return software ? [256, 512] : [1024, 2048, 4096, 8192];
}

function randomValues(n: number, seed: number): Float32Array {
  const a = new Float32Array(n);
  let s = seed >>> 0;
  for (let i = 0; i < n; i++) {
    s = (s * 1664525 + 1013904223) >>> 0;
    a[i] = s / 2 ** 32 - 0.5;
  }
  return a;
}

const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
};

/** Runs the benchmark; prints a table and returns the rows. */
export async function runWebGpuGemmBench(opts: WebGpuGemmBenchOptions = {}): Promise<WebGpuGemmResult[]> {
  const log = opts.log ?? ((l: string) => console.log(l));
  let be = opts.backend;
  let own = false;
  if (!be) {
    try {
      be = await createNodeWebGpuBackend();
      own = true;
    } catch (e) {
      log(`WebGPU GEMM: skipped (${e instanceof Error ? e.message : String(e)})`);
      return [];
    }
  }
  const results: WebGpuGemmResult[] = [];
  try {
    log(`WebGPU GEMM on ${adapterSummary(be.adapterInfo)}`);
    const f = be.features;
    log(
      `  features: shader-f16=${f.shaderF16} subgroups=${f.subgroups} timestamp-query=${f.timestampQuery} subgroup-matrix=${f.subgroupMatrix}; subgroup-matrix GEMM: ${be.subgroupMatrixStatus}`,
    );
    const sizes = opts.sizes ?? defaultSizes(be);
    const dtypes: ('f32' | 'f16')[] = f.shaderF16 ? ['f32', 'f16'] : ['f32'];
    log(
      '  dtype   size      path                 time/GEMM      rate        timing   check    vs CPU sgemm (same run)',
    );
    for (const dtype of dtypes) {
      for (const n of sizes) {
        const r = await benchOne(be, dtype, n, opts.samples ?? 7);
        results.push(r);
        const rate = r.tflops >= 1 ? `${r.tflops.toFixed(2)} TFLOP/s` : `${(r.tflops * 1000).toFixed(1)} GFLOP/s`;
        const anchor = r.cpuMs ? `${(r.cpuMs / r.ms).toFixed(2)}x (cpu ${r.cpuMs.toFixed(1)} ms)` : '';
        log(
          `  ${dtype.padEnd(6)}  ${`${n}³`.padEnd(8)}  ${r.path.padEnd(19)}  ${`${r.ms.toFixed(3)} ms`.padStart(12)}  ${rate.padStart(14)}  ${r.timing === 'wall' ? 'wall' : 'gpu '}  ${r.check.toExponential(1)}  ${anchor}`,
        );
      }
    }
  } finally {
    if (own) be.dispose();
  }
  return results;
}

async function benchOne(
  be: WebGpuBackend,
  dtype: 'f32' | 'f16',
  n: number,
  samples: number,
): Promise<WebGpuGemmResult> {
  const av = randomValues(n * n, 1);
  const bv = randomValues(n * n, 2);
  const a: WebGpuStorage = dtype === 'f32' ? be.upload('f32', av) : be.upload('f16', encodeF16(av));
  const b: WebGpuStorage = dtype === 'f32' ? be.upload('f32', bv) : be.upload('f16', encodeF16(bv));
  const args: GemmArgs = {
    a,
    b,
    aType: dtype,
    bType: dtype,
    aShape: [n, n],
    bShape: [n, n],
    transA: false,
    transB: false,
  };
  const sgmm = dtype === 'f16' && subgroupMatmulApplies(be, args);
  const path = sgmm
    ? `subgroup-matrix ${be.subgroupMatrixGemm!.config.M}x${be.subgroupMatrixGemm!.config.N}x${be.subgroupMatrixGemm!.config.K}`
    : 'tiled';
  const gemm = (): WebGpuStorage => (sgmm ? subgroupMatmul(be, args) : tiledGemm(be, args)).out;
  // Warm-up (compiles the pipeline) and a correctness spot check against f64 dot products.
  const first = gemm();
  const c = (await be.read(first, 'f32', n * n)) as Float32Array;
  be.free(first);
  const ar = dtype === 'f16' ? Float32Array.from(av, (x) => Math.fround(x)) : av;
  let check = 0;
  const round16 = (x: number): number => (dtype === 'f16' ? decodeHalf(encodeF16([x])[0]!) : x);
  for (let t = 0; t < 16; t++) {
    const i = (t * 7919) % n;
    const j = (t * 104729) % n;
    let ref = 0;
    let mag = 0;
    for (let k = 0; k < n; k++) {
      const p = round16(ar[i * n + k]!) * round16(bv[k * n + j]!);
      ref += p;
      mag += Math.abs(p);
    }
    check = Math.max(check, Math.abs(c[i * n + j]! - ref) / Math.max(mag, 1e-30));
  }
  // Repetitions per sample so that a sample spans ~30 ms.
  const once = await be.timeGpu(() => be.free(gemm()));
  const perGemm = Math.max(once?.ms ?? 1, 1e-3);
  const reps = Math.min(200, Math.max(1, Math.ceil(30 / perGemm)));
  const times: number[] = [];
  let timing: WebGpuGemmResult['timing'] = 'wall';
  for (let s = 0; s < samples; s++) {
    // Freeing each output right away lets the next GEMM of the same pass write that buffer again.
    const r = await be.timeGpu(() => {
      for (let i = 0; i < reps; i++) be.free(gemm());
    });
    if (!r) continue;
    timing = r.timestamps ? 'timestamp-query' : 'wall';
    times.push(r.ms / reps);
  }
  be.free(a);
  be.free(b);
  const ms = median(times);
  const out: WebGpuGemmResult = {
    dtype,
    n,
    path,
    ms,
    tflops: (2 * n * n * n) / (ms * 1e-3) / 1e12,
    timing,
    samples: times.length,
    check,
  };
  if (n <= 1024) {
    // Anchor: the CPU backend's f32 matmul on the same operands.
    const ta = fromRaw('f32', [n, n], av, cpu);
    const tb = fromRaw('f32', [n, n], bv, cpu);
    const cpuTimes: number[] = [];
    exec('matmul', [ta, tb], { transA: false, transB: false }, cpu); // warm-up
    for (let s = 0; s < 3; s++) {
      const t0 = performance.now();
      exec('matmul', [ta, tb], { transA: false, transB: false }, cpu);
      cpuTimes.push(performance.now() - t0);
    }
    out.cpuMs = median(cpuTimes);
  }
  return out;
}

function decodeHalf(h: number): number {
  const s = h & 0x8000 ? -1 : 1;
  const e = (h >> 10) & 0x1f;
  const m = h & 0x3ff;
  if (e === 0) return s * m * 2 ** -24;
  if (e === 31) return m ? NaN : s * Infinity;
  return s * (1 + m / 1024) * 2 ** (e - 15);
}

// Standalone: `npx tsx packages/core/bench/webgpu-gemm.ts` or the esbuild bundle.
if (typeof process !== 'undefined' && process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  await runWebGpuGemmBench();
}
