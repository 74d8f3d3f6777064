// The routed experts' weight-product jobs of one MoE layer of a V3-mini prefill, as moe's
// cpuExpertsInference runs them: one job of every active expert's gate and up products (x·Wᵀ, [m_e, 1024]
// · [256, 1024]ᵀ) plus the shared expert's (all tokens), then one of the down products ([m_e, 256] ·
// [1024, 256]ᵀ). Rows per expert from a random top-6 routing of --tokens tokens over 64 experts; weights
// resident in the engine's memory, --layers layers of them (each ~195 MB in f32) used in turn, so each
// job reads its weights from DRAM as a prefill does. Reports, per job and threads, the median ms and G
// multiply-adds/s a thread (multiply-adds / (wall x threads)) and per process CPU second, and on several
// threads the job's split (the caller's work and wait, the worker's join and busy ms; of the last engine job
// the call ran — a list past weightGemmMany's product cap, 128, runs as several: the gate / up call's last
// is then the shared expert's two products). --hot: every expert reads one set of weights, in cache —
// against the default, what streaming them from DRAM costs. bf16 / fp8 weights take the i16 route
// (--activations i16, the default) or widen (--activations f32).
// usage: npx tsx --conditions=@dsv3/source bench/expert-job-rate.ts [--dtype f32|bf16|fp8] [--tokens 512]
//        [--reps 9] [--threads 1,2] [--layers 3] [--hot] [--activations i16|f32]
import { parseArgs } from 'node:util';
import { gemmConfig, type TracedJob } from '../src/cpu/gemm/config.js';
import {
  allocResident,
  setGemmThreads,
  setPrefillActivations,
  type WeightProductArgs,
  weightProducts,
} from '../src/cpu/gemm/index.js';
import { getEngine } from '../src/cpu/gemm/runtime.js';
import { WasmGemm } from '../src/cpu/gemm/wasm-engine.js';
import { routedCounts, seededRandom } from './random-routing.js';

const { values } = parseArgs({
  options: {
    dtype: { type: 'string', default: 'f32' },
    tokens: { type: 'string', default: '512' },
    reps: { type: 'string', default: '9' },
    threads: { type: 'string', default: '1,2' },
    hot: { type: 'boolean', default: false },
    activations: { type: 'string', default: 'i16' },
    layers: { type: 'string', default: '3' },
  },
});
const dtype = values.dtype;
if (dtype !== 'f32' && dtype !== 'bf16' && dtype !== 'fp8')
  throw new Error(`expert-job-rate: --dtype f32, bf16 or fp8, got ${dtype}`);
setPrefillActivations(values.activations === 'f32' ? 'f32' : 'i16');
const T = Number(values.tokens);
const reps = Number(values.reps);
const threadCounts = values.threads.split(',').map(Number);
const L = Number(values.layers);
const [H, I, E] = [1024, 256, 64];

const rand = seededRandom();
const counts = routedCounts(T, E, 6, rand);
const N = counts.reduce((s, c) => s + c, 0);
const f32Of = (n: number): Float32Array => {
  const a = allocResident('f32', n, false) as Float32Array;
  for (let i = 0; i < n; i++) a[i] = rand();
  return a;
};
interface Weight {
  w: Float32Array | Uint16Array | Uint8Array;
  scales?: Float32Array;
}
const weight = (n: number, k: number): Weight => {
  if (dtype === 'f32') return { w: f32Of(n * k) };
  if (dtype === 'bf16') {
    const a = allocResident('bf16', n * k, false) as Uint16Array;
    for (let i = 0; i < n * k; i++) a[i] = 0x3c00 + Math.floor((rand() + 0.5) * 510) - 0x100;
    return { w: a };
  }
  const a = allocResident('fp8-e4m3', n * k, false) as Uint8Array;
  for (let i = 0; i < n * k; i++) {
    const b = Math.floor((rand() + 0.5) * 254);
    a[i] = (b & 0x7f) === 0x7f ? b - 1 : b; // no NaN codes
  }
  return { w: a, scales: new Float32Array(Math.ceil(n / 128) * Math.ceil(k / 128)).fill(0.01) };
};
// per layer: E + 1 experts' [gate, up, down] (the last the shared one)
const weights = Array.from({ length: L }, () =>
  Array.from({ length: E + 1 }, () => [weight(I, H), weight(I, H), weight(H, I)] as const),
);
const x = f32Of(T * H);
const xs = f32Of(N * H);
const [g, u] = [f32Of(N * I), f32Of(N * I)];
const [sg, su] = [f32Of(T * I), f32Of(T * I)];
const sOut = f32Of(T * H);
const jobsOf = (l: number): [WeightProductArgs[], WeightProductArgs[]] => {
  const first: WeightProductArgs[] = [];
  const second: WeightProductArgs[] = [];
  for (let e = 0, r0 = 0; e < E; r0 += counts[e]!, e++) {
    const c = counts[e]!;
    if (c === 0) continue;
    const [wg, wu, wd] = weights[l]![values.hot ? 0 : e]!;
    const xa = xs.subarray(r0 * H, (r0 + c) * H);
    const ga = g.subarray(r0 * I, (r0 + c) * I);
    first.push({ m: c, n: I, k: H, x: xa, ...wg, y: ga });
    first.push({ m: c, n: I, k: H, x: xa, ...wu, y: u.subarray(r0 * I, (r0 + c) * I) });
    second.push({ m: c, n: H, k: I, x: ga, ...wd, y: xs.subarray(r0 * H, (r0 + c) * H) });
  }
  const [wg, wu, wd] = weights[l]![values.hot ? 0 : E]!;
  first.push({ m: T, n: I, k: H, x, ...wg, y: sg }, { m: T, n: I, k: H, x, ...wu, y: su });
  second.push({ m: T, n: H, k: I, x: sg, ...wd, y: sOut });
  return [first, second];
};
const macsOf = (job: WeightProductArgs[]): number => job.reduce((t, a) => t + a.m * a.n * a.k, 0);
const [m1, m2] = jobsOf(0).map(macsOf) as [number, number];
const median = (a: number[]): number => [...a].sort((p, q) => p - q)[Math.floor(a.length / 2)]!;
console.log(
  `${dtype}${dtype === 'f32' ? '' : ` (${values.activations} activations)`}${values.hot ? ', one hot weight' : ''}, ${T} tokens: rows per expert ${Math.min(...counts)}–${Math.max(...counts)} (mean ${(N / E).toFixed(1)}); ` +
    `gate/up job ${(m1 / 1e9).toFixed(2)} G multiply-adds, down job ${(m2 / 1e9).toFixed(2)} G; ${L} layers of weights`,
);
const names = ['gate/up', 'down'];
// on several threads: the job as the caller saw it (working, waiting for the worker's last tasks, the
// worker's join) and the worker's busy ms in it
let traced: TracedJob | null = null;
gemmConfig.jobTrace = (j) => {
  traced = j;
};
const engine = getEngine();
const timing = engine instanceof WasmGemm ? engine : null;
const split = threadCounts.map(() => [[] as number[][], [] as number[][]]);
const wall = threadCounts.map(() => [[] as number[], [] as number[]]);
const cpu = threadCounts.map(() => [[] as number[], [] as number[]]);
for (let r = -2, l = 0; r < reps; r++)
  // the thread counts alternate, their order reversed every other repetition
  (r % 2 === 0
    ? threadCounts.map((t, i) => [t, i] as const)
    : threadCounts.map((t, i) => [t, i] as const).reverse()
  ).forEach(([t, i]) => {
    setGemmThreads(t);
    const jobs = jobsOf(l++ % L);
    jobs.forEach((job, j) => {
      timing?.workerBusy(true);
      traced = null;
      const c0 = process.cpuUsage();
      const t0 = performance.now();
      weightProducts(job);
      const ms = performance.now() - t0;
      const c = process.cpuUsage(c0);
      const busy = timing?.workerBusy(false);
      const tj = traced as TracedJob | null;
      if (r >= 0 && tj && busy)
        split[i]![j]!.push([tj.workMs, tj.waitMs, tj.joinMs, busy.jobMs, tj.callerTasks, tj.tasks]);
      if (r >= 0) {
        wall[i]![j]!.push(ms);
        cpu[i]![j]!.push((c.user + c.system) / 1000);
      }
    });
  });
threadCounts.forEach((t, i) => {
  names.forEach((name, j) => {
    const macs = j === 0 ? m1 : m2;
    const [w, c] = [median(wall[i]![j]!), median(cpu[i]![j]!)];
    console.log(
      `${t} thread(s) ${name.padEnd(8)} ${w.toFixed(2).padStart(7)} ms (min ${Math.min(...wall[i]![j]!).toFixed(2)}), ` +
        `${(macs / w / t / 1e6).toFixed(1)} G/s a thread, CPU ${c.toFixed(1)} ms: ${(macs / c / 1e6).toFixed(1)} G/s per CPU-s`,
    );
    const sp = split[i]![j]!;
    if (sp.length > 0) {
      const col = (q: number): string => median(sp.map((e) => e[q]!)).toFixed(2);
      console.log(
        `    caller work ${col(0)} + wait ${col(1)} ms, join ${col(2)} ms, worker busy ${col(3)} ms, caller ran ${col(4)} of ${col(5)} tasks` +
          ` -> ${(macs / (Number(col(0)) + Number(col(3))) / 1e6).toFixed(1)} G/s of busy thread-ms`,
      );
    }
  });
});
process.exit(0);
