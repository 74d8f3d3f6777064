// The routed experts' f32 weight products of a prefill, one pinned thread, taken apart: gemmW_f32 on
// each expert's rows (a random top-6 routing of --tokens tokens over 64 experts, as
// weight-gemm-kernel-ab.ts) with the weights cold (a pool of --pool MB, larger than the last-level
// cache, walked round-robin so each repetition reads weights no earlier one left in cache) and hot (every
// expert reading one weight); then the driver's parts alone in the same order — packW_f32 of every NR x KC
// panel (cold / hot), packA, and the macro-kernel on one packed panel (no weight traffic at all).
// Reports ms per job and G multiply-adds/s; what the parts add up to against the whole says where the
// gap to the macro-kernel's own rate goes.
// usage: taskset -c 1 npx tsx --conditions=@dsv3/source bench/expert-kernel-parts.ts [--tokens 512] [--reps 9]
//        [--pool 512] [--only gate|down] [--each M: every expert M rows]
import { parseArgs } from 'node:util';
import { buildSgemmModule, DEFAULT_KERNEL, workspaceBytes } from '../src/cpu/gemm/sgemm-kernel.js';
import { routedCounts, seededRandom } from './random-routing.js';

const { values } = parseArgs({
  options: {
    tokens: { type: 'string', default: '512' },
    reps: { type: 'string', default: '9' },
    pool: { type: 'string', default: '512' },
    only: { type: 'string', default: '' },
    each: { type: 'string', default: '' },
  },
});
const tokens = Number(values.tokens);
const reps = Number(values.reps);
const cfg = DEFAULT_KERNEL;
const { mr: MR, nr: NR, kc: KC } = cfg;
const PAGE = 65536;
const poolBytes = Number(values.pool) * 2 ** 20;
const pages = Math.ceil((poolBytes + 64 * 2 ** 20) / PAGE);
const memory = new WebAssembly.Memory({ initial: pages, maximum: pages });
type Fn = (...args: number[]) => void;
const ex = new WebAssembly.Instance(new WebAssembly.Module(buildSgemmModule(cfg, false, pages, false)), {
  env: { memory },
}).exports as Record<string, Fn>;
const [gemmW, packW, packA, macro] = [ex.gemmW_f32!, ex.packW_f32!, ex.packA!, ex.macro!];

const rand = seededRandom();
const routed = routedCounts(tokens, 64, 6, rand);
const rows = values.each ? routed.map(() => Number(values.each)) : routed.filter((c) => c > 4);
const mMax = Math.max(...rows);

const f32 = new Float32Array(memory.buffer);
let at = 0;
const take = (bytes: number): number => {
  const a = at;
  at += Math.ceil(bytes / 4096) * 4096;
  return a;
};
const ws = take(workspaceBytes(cfg));
const aCapacity = workspaceBytes(cfg) / 4 - NR * KC;
const panel = ws + aCapacity * 4;
const median = (a: number[]): number => [...a].sort((p, q) => p - q)[Math.floor(a.length / 2)]!;
console.log(
  `${rows.length} experts, rows ${Math.min(...rows)}–${mMax} (mean ${(rows.reduce((s, m) => s + m, 0) / rows.length).toFixed(1)})`,
);

for (const [name, n, k] of [
  ['gate/up 256x1024', 256, 1024],
  ['down 1024x256', 1024, 256],
] as const) {
  if (!name.includes(values.only)) continue;
  at = ws + workspaceBytes(cfg);
  const x = take(mMax * k * 4);
  for (let i = 0; i < mMax * k; i++) f32[x / 4 + i] = rand();
  const nPad = Math.ceil(n / NR) * NR;
  const c = take((mMax + MR) * nPad * 4);
  const wBytes = n * k * 4;
  const count = Math.floor((memory.buffer.byteLength - at) / wBytes);
  const w0 = take(count * wBytes);
  for (let i = 0; i < (count * wBytes) / 4; i++) f32[w0 / 4 + i] = rand();
  let next = 0; // the pool's next cold weight
  const weightOf = (hot: boolean): number => (hot ? w0 : w0 + (next++ % count) * wBytes);
  const macs = rows.reduce((t, m) => t + m * n * k, 0);
  const mPadOf = (m: number): number => Math.ceil(m / MR) * MR;
  const parts: Record<string, (hot: boolean) => void> = {
    whole: (hot) => {
      for (const m of rows) gemmW(0, m, 0, n, k, x, k * 4, 4, weightOf(hot), k * 4, c, nPad * 4, ws, 0, 0);
    },
    packW: (hot) => {
      for (const _ of rows) {
        const w = weightOf(hot);
        for (let j = 0; j < n; j += NR)
          for (let pc = 0; pc < k; pc += KC)
            packW(w + (j * k + pc) * 4, k * 4, NR, Math.min(KC, k - pc), panel, 0, 0, j, pc);
      }
    },
    packA: () => {
      for (const m of rows)
        for (let pc = 0, aPc = ws; pc < k; pc += KC, aPc += mPadOf(m) * KC * 4)
          packA(x + pc * 4, k * 4, 4, m, Math.min(KC, k - pc), aPc);
    },
    macro: () => {
      for (const m of rows)
        for (let j = 0; j < n; j += NR)
          for (let pc = 0, aPc = ws; pc < k; pc += KC, aPc += mPadOf(m) * KC * 4)
            macro(m, NR, Math.min(KC, k - pc), aPc, panel, c + j * 4, nPad * 4, pc === 0 ? 0 : 1);
    },
    // the same without each expert's last partial row panel (its rate is per its own multiply-adds)
    'macro, whole panels': () => {
      for (const m0 of rows) {
        const m = m0 - (m0 % MR);
        for (let j = 0; j < n; j += NR)
          for (let pc = 0, aPc = ws; pc < k; pc += KC, aPc += mPadOf(m0) * KC * 4)
            macro(m, NR, Math.min(KC, k - pc), aPc, panel, c + j * 4, nPad * 4, pc === 0 ? 0 : 1);
      }
    },
  };
  const wholePanelMacs = rows.reduce((t, m) => t + (m - (m % MR)) * n * k, 0);
  const runs: [string, boolean][] = [
    ['whole', false],
    ['whole', true],
    ['packW', false],
    ['packW', true],
    ['packA', true],
    ['macro', true],
    ['macro, whole panels', true],
  ];
  const ms = runs.map(() => [] as number[]);
  for (let r = -2; r < reps; r++)
    runs.forEach(([part, hot], i) => {
      const t = performance.now();
      parts[part]!(hot);
      if (r >= 0) ms[i]!.push(performance.now() - t);
    });
  for (const [i, [part, hot]] of runs.entries()) {
    const med = median(ms[i]!);
    const min = Math.min(...ms[i]!);
    const own = part === 'macro, whole panels' ? wholePanelMacs : macs;
    console.log(
      `f32 ${name} ${`${part}${part.startsWith('pack') || part === 'whole' ? (hot ? ' hot' : ' cold') : ''}`.padEnd(19)} ${med.toFixed(2).padStart(7)} ms (min ${min.toFixed(2)})  ${(own / med / 1e6).toFixed(1).padStart(5)} G/s of ${own === macs ? "the job's" : 'its'} multiply-adds`,
    );
  }
}
