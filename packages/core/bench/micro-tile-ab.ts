// The f32 GEMM's micro-tile shapes (KernelConfig mr x nr) on one thread: each shape's module built and
// run through its single-threaded `gemm` export on the same operands, shapes alternating rep by rep,
// on the tiny training step's product shapes (m = 1,024 tokens, k and n 64-320) and a square one.
// Medians of GFLOP/s, and whether every shape's output sums agree (same k order: the same bits).
// nr must divide 128 (the weight GEMM's FP8 scale blocks). Run pinned: taskset -c 1 npx tsx ...
// usage: npx tsx --conditions=@dsv3/source bench/micro-tile-ab.ts [4x8,5x8,6x8,2x16,3x16,4x4] [--reps 25]
import { buildSgemmModule, type KernelConfig } from '../src/cpu/gemm/sgemm-kernel.js';

const args = process.argv.slice(2);
const reps = args.includes('--reps') ? Number(args[args.indexOf('--reps') + 1]) : 25;
const list = args.find((a) => /^\d+x\d+/.test(a)) ?? '4x8,5x8,6x8,2x16,3x16,4x4';
const cfgs: KernelConfig[] = list.split(',').map((s) => {
  const [mr, nr] = s.split('x').map(Number) as [number, number];
  return { mr, nr, kc: 256, mc: Math.floor(128 / mr) * mr, nc: Math.floor(2048 / nr) * nr };
});
const PAGES = 2048;
const memory = new WebAssembly.Memory({ initial: PAGES, maximum: PAGES });
type Gemm = (...a: number[]) => void;
const kernels = cfgs.map(
  (cfg) =>
    (
      new WebAssembly.Instance(new WebAssembly.Module(buildSgemmModule(cfg, false, PAGES, false)), { env: { memory } })
        .exports as Record<string, Gemm>
    ).gemm!,
);
const f32 = new Float32Array(memory.buffer);
// workspace at 0, A at 8 MiB, B at 24 MiB, C at 40 MiB (bytes)
const [WS, A, B, C] = [0, 8 << 20, 24 << 20, 40 << 20];
for (let i = A / 4; i < C / 4; i++) f32[i] = Math.sin(i);
const median = (a: number[]): number => [...a].sort((p, q) => p - q)[a.length >> 1]!;
for (const [m, n, k] of [
  [1024, 128, 320],
  [1024, 320, 128],
  [1024, 64, 128],
  [512, 512, 512],
] as const) {
  const ms = cfgs.map((): number[] => []);
  const sums = new Set<number>();
  for (let r = 0; r < reps; r++)
    cfgs.forEach((cfg, j) => {
      const nPad = Math.ceil(n / cfg.nr) * cfg.nr;
      const t = performance.now();
      kernels[j]!(0, m, 0, n, k, A, k * 4, 4, B, n * 4, 4, C, nPad * 4, WS);
      ms[j]!.push(performance.now() - t);
      if (r === 0) {
        let s = 0;
        for (let i = 0; i < m; i++) for (let q = 0; q < n; q++) s += f32[C / 4 + i * nPad + q]!;
        sums.add(s);
      }
    });
  const rates = cfgs.map((c, j) => `${c.mr}x${c.nr} ${((2 * m * n * k) / median(ms[j]!) / 1e6).toFixed(1)}`);
  console.log(`${m}x${n}x${k} GFLOP/s: ${rates.join('  ')}  (output sums ${sums.size === 1 ? 'equal' : 'DIFFER'})`);
}
