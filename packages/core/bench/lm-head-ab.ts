// Interleaved A/B for the rule that keeps small-m products against bf16 / FP8 weights on the GEMV
// (gemmConfig.gemvMaxM, gemvMaxMLarge): for each row count m, the same product on the GEMV (forced by
// gemvMaxM = m) and on the GEMM that widens the weight inside its packing (gemvMaxM = gemvMaxMLarge = 4),
// back to back in every repetition; medians of ms per product. The default weight is V3-mini's LM head.
// usage: npx tsx --conditions=@dsv3/source bench/lm-head-ab.ts [--threads 2] [--reps 9] [--dtype bf16]
//        [--rows 5,8,12,16,24,32] [--n 129280] [--k 1024]
import { parseArgs } from 'node:util';
import { gemmConfig } from '../src/cpu/gemm/config.js';
import { allocResident, setGemmThreads, weightProduct } from '../src/cpu/gemm/index.js';

const { values } = parseArgs({
  options: {
    threads: { type: 'string', default: '2' },
    reps: { type: 'string', default: '9' },
    dtype: { type: 'string', default: 'bf16' },
    rows: { type: 'string', default: '5,8,12,16,24,32' },
    n: { type: 'string', default: '129280' },
    k: { type: 'string', default: '1024' },
  },
});
const kind = values.dtype;
if (kind !== 'bf16' && kind !== 'fp8') throw new Error(`lm-head-ab: --dtype is bf16 or fp8, got ${kind}`);
const [n, k, reps] = [Number(values.n), Number(values.k), Number(values.reps)];
setGemmThreads(Number(values.threads));

let seed = 7;
const rand = (): number => {
  seed = (seed * 1103515245 + 12345) >>> 0;
  return seed / 2 ** 32 - 0.5;
};
const w = allocResident(kind === 'bf16' ? 'bf16' : 'fp8-e4m3', n * k) as Uint16Array | Uint8Array | null;
if (!w) throw new Error('lm-head-ab: no resident storage for the weight');
for (let i = 0; i < w.length; i++) {
  const b = Math.floor((rand() + 0.5) * 254);
  w[i] = kind === 'bf16' ? 0x3c00 + (b & 0x1ff) - 0x100 : (b & 0x7f) === 0x7f ? b - 1 : b;
}
const scales =
  kind === 'fp8' ? Float32Array.from({ length: Math.ceil(n / 128) * Math.ceil(k / 128) }, () => 0.01) : undefined;
const median = (a: number[]): number => [...a].sort((p, q) => p - q)[Math.floor(a.length / 2)]!;
const saved = { ...gemmConfig };
for (const m of values.rows.split(',').map(Number)) {
  const x = Float32Array.from({ length: m * k }, rand);
  const y = new Float32Array(m * n);
  const run = (gemv: boolean): number => {
    gemmConfig.gemvMaxM = gemv ? m : 4;
    gemmConfig.gemvMaxMLarge = 4;
    const t = performance.now();
    weightProduct({ m, n, k, x, w, ...(scales && { scales }), y });
    return performance.now() - t;
  };
  run(true);
  run(false);
  const ms = { gemv: [] as number[], gemm: [] as number[] };
  for (let r = 0; r < reps; r++) {
    ms.gemv.push(run(true));
    ms.gemm.push(run(false));
  }
  const [a, b] = [median(ms.gemv), median(ms.gemm)];
  console.log(
    `m=${String(m).padStart(2)}  GEMV ${a.toFixed(2).padStart(7)} ms  GEMM (in packing) ${b.toFixed(2).padStart(7)} ms  GEMM/GEMV time ${(b / a).toFixed(2)}`,
  );
}
Object.assign(gemmConfig, saved);
