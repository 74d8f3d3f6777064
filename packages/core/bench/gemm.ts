// CPU f32 GEMM benchmark: our sgemm vs numpy/OpenBLAS, both multithreaded, measured in one run.
// Standalone: `npx tsx packages/core/bench/gemm.ts`; also called by bench/run.ts (`npm run bench`).
// Env: GEMM_BENCH_SIZES (default "256,1024,2048"), GEMM_BENCH_SECONDS (min seconds per size and
// round, default 1), GEMM_BENCH_ROUNDS (default 3), GEMM_BENCH_THREADS (both sides; default: ours'
// default, i.e. all cores). Ours and numpy alternate round by round so both
// see the same background load; reported: best and median over all rounds' repetitions.
import { spawnSync } from 'node:child_process';
import { availableParallelism } from 'node:os';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { gemmInfo, setGemmThreads, sgemm } from '../src/cpu/gemm/index.js';
import { Rng } from '../src/rng.js';

interface SizeResult {
  n: number;
  reps: number;
  best_gflops: number;
  median_gflops: number;
  gflops?: number[]; // every repetition (numpy_gemm.py prints these too)
}

interface NumpyReport {
  numpy: string;
  blas: {
    source: string;
    library: string | null;
    config: string | null;
    corename: string | null;
    threads: number | null;
  };
  results: SizeResult[];
}

function median(xs: number[]): number {
  const s = [...xs].sort((p, q) => p - q);
  const mid = s.length >> 1;
  return s.length % 2 ? (s[mid] as number) : ((s[mid - 1] as number) + (s[mid] as number)) / 2;
}

function benchOurs(n: number, minSeconds: number, minReps = 5): SizeResult {
  const a = new Float32Array(n * n),
    b = new Float32Array(n * n),
    c = new Float32Array(n * n);
  const rng = new Rng(n);
  rng.fillUniform(a, -0.5, 0.5);
  rng.fillUniform(b, -0.5, 0.5);
  for (let i = 0; i < 2; i++) sgemm({ m: n, n, k: n, a, b, c }); // warm-up: tier-up, workers, heap growth
  const times: number[] = [];
  const start = performance.now();
  while (times.length < minReps || performance.now() - start < minSeconds * 1000) {
    const t = performance.now();
    sgemm({ m: n, n, k: n, a, b, c });
    times.push((performance.now() - t) / 1000);
    if (times.length >= 1000) break;
  }
  const flop = 2 * n ** 3;
  return summarize(
    n,
    times.map((t) => flop / t / 1e9),
  );
}

function summarize(n: number, gflops: number[]): SizeResult {
  return { n, reps: gflops.length, best_gflops: Math.max(...gflops), median_gflops: median(gflops), gflops };
}

/** Pools the repetitions of several rounds per size. */
function merge(rounds: SizeResult[][], n: number): SizeResult | undefined {
  const all = rounds.flatMap((r) => r.filter((x) => x.n === n).flatMap((x) => x.gflops ?? [x.best_gflops]));
  return all.length ? summarize(n, all) : undefined;
}

/** numpy anchor in a subprocess, with the OpenBLAS overrides this environment sets removed. */
function benchNumpy(sizes: number[], minSeconds: number, threads: number): NumpyReport | string {
  const env: NodeJS.ProcessEnv = { ...process.env, OPENBLAS_NUM_THREADS: String(threads) };
  delete env.OPENBLAS_CORETYPE;
  delete env.OPENBLAS_L2_SIZE;
  const script = fileURLToPath(new URL('./numpy_gemm.py', import.meta.url));
  const r = spawnSync('python3', [script, '--sizes', sizes.join(','), '--min-seconds', String(minSeconds)], {
    env,
    encoding: 'utf8',
  });
  if (r.error) return `python3 not runnable: ${r.error.message}`;
  if (r.status !== 0) return `numpy_gemm.py failed: ${r.stderr.trim().split('\n').pop() ?? ''}`;
  try {
    return JSON.parse(r.stdout) as NumpyReport;
  } catch {
    return `numpy_gemm.py printed no JSON: ${r.stdout.slice(0, 200)}`;
  }
}

export async function runGemmBench(): Promise<void> {
  const sizes = (process.env.GEMM_BENCH_SIZES ?? '256,1024,2048').split(',').map(Number);
  const minSeconds = Number(process.env.GEMM_BENCH_SECONDS ?? 1);
  const rounds = Math.max(1, Number(process.env.GEMM_BENCH_ROUNDS ?? 3));
  if (process.env.GEMM_BENCH_THREADS) setGemmThreads(Number(process.env.GEMM_BENCH_THREADS));
  const info = gemmInfo();
  const ours: SizeResult[][] = [];
  const theirs: SizeResult[][] = [];
  let np: NumpyReport | string = 'not run';
  for (let r = 0; r < rounds; r++) {
    ours.push(sizes.map((n) => benchOurs(n, minSeconds)));
    const rep = benchNumpy(sizes, minSeconds, info.threads);
    if (typeof rep === 'string') np = rep;
    else {
      np = rep;
      theirs.push(rep.results);
    }
  }

  console.log(
    `\nCPU f32 GEMM (square, C = A @ B), ${availableParallelism()} cores, node ${process.version}, ${rounds} rounds`,
  );
  console.log(
    `  ours : wasm SIMD128=${info.simd}, native AVX-512 kernels=${info.nativeKernels}, threads=${info.threads}`,
  );
  if (typeof np === 'string') console.log(`  numpy: unavailable (${np})`);
  else {
    const bl = np.blas;
    console.log(
      `  numpy: ${np.numpy}, ${bl.library ?? '?'} core=${bl.corename ?? '?'} threads=${bl.threads ?? '?'} (via ${bl.source})`,
    );
    if (bl.config) console.log(`         ${bl.config}`);
  }
  console.log('  GFLOP/s: best (median) over all timed repetitions of all rounds.');
  console.log('  size | ours GFLOP/s    | numpy GFLOP/s   | ours/numpy (best) | (median)');
  console.log('  -----|-----------------|-----------------|-------------------|---------');
  const fmt = (r: SizeResult): string => `${r.best_gflops.toFixed(1)} (${r.median_gflops.toFixed(1)})`.padEnd(15);
  for (const n of sizes) {
    const o = merge(ours, n) as SizeResult;
    const ref = merge(theirs, n);
    const best = ref ? `${(o.best_gflops / ref.best_gflops).toFixed(3)}x` : 'n/a';
    const med = ref ? `${(o.median_gflops / ref.median_gflops).toFixed(3)}x` : 'n/a';
    console.log(
      `  ${String(n).padStart(4)} | ${fmt(o)} | ${ref ? fmt(ref) : 'n/a'.padEnd(15)} | ${best.padEnd(17)} | ${med}`,
    );
  }
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  await runGemmBench();
}
