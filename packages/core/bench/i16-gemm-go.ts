// Go / no-go for the integer weight GEMM: the i16 macro-kernel (i16-gemm-kernel.ts) against the f32
// macro-kernel (sgemm-kernel.ts) on one thread, in the weight GEMM's panel order (A~ for all of k packed
// once, one NR x KC B~ panel in L1 per call), operands pre-packed (packing not timed), V3-mini's prefill
// shapes. Alternates the two kernels per repetition; prints ms (median) and G multiply-adds/s.
// usage: taskset -c 1 npx tsx bench/i16-gemm-go.ts [--reps 7]
import { parseArgs } from 'node:util';
import { genI16Macro, i16PanelBytes } from '../src/cpu/gemm/i16-gemm-kernel.js';
import { buildSgemmModule, DEFAULT_KERNEL } from '../src/cpu/gemm/sgemm-kernel.js';
import { ModuleBuilder } from '../src/cpu/gemm/wasm-emitter.js';

const { values } = parseArgs({ options: { reps: { type: 'string', default: '7' } } });
const reps = Number(values.reps);
type Kernel = (...args: number[]) => void;
const PAGES = 4096;
const memory = new WebAssembly.Memory({ initial: PAGES, maximum: PAGES });
const f32Macro = (
  new WebAssembly.Instance(new WebAssembly.Module(buildSgemmModule(DEFAULT_KERNEL, false, PAGES, false)), {
    env: { memory },
  }).exports as Record<string, Kernel>
).macro as Kernel;
const mb = new ModuleBuilder({ module: 'env', name: 'memory', initialPages: 1, maximumPages: PAGES, shared: false });
genI16Macro(mb, { mr: 4, nr: 8 });
const i16Macro = (
  new WebAssembly.Instance(new WebAssembly.Module(mb.emit()), { env: { memory } }).exports as Record<string, Kernel>
).macroI16 as Kernel;

const { mr: MR, nr: NR, kc: KC } = DEFAULT_KERNEL;
const bytes = new Uint8Array(memory.buffer);
for (let i = 0; i < bytes.length; i += 2) {
  bytes[i] = (i * 2654435761) >>> 24;
  bytes[i + 1] = ((i * 40503) >>> 8) & 0x07; // i16 words of 11 bits; as f32 small finite values
}
const fview = new Float32Array(memory.buffer);
// f32 operands must be finite: fill A~ / B~ areas with small floats.
const A_AT = 1 << 20;
const A_BYTES = 64 << 20;
const B_AT = A_AT + A_BYTES;
const C_AT = B_AT + (1 << 20);
for (let i = A_AT / 4; i < C_AT / 4; i++) fview[i] = ((i % 17) - 8) / 16;

function run(kind: 'f32' | 'i16', m: number, n: number, k: number): void {
  const mPad = Math.ceil(m / MR);
  const ldc = Math.ceil(n / NR) * NR * 4;
  let aPc = A_AT;
  const aAt: number[] = [];
  for (let pc = 0; pc < k; pc += KC) {
    const kc = Math.min(KC, k - pc);
    aAt.push(aPc);
    aPc += kind === 'f32' ? mPad * MR * kc * 4 : mPad * i16PanelBytes(MR, kc);
  }
  for (let j = 0; j < n; j += NR) {
    for (let b = 0, pc = 0; pc < k; pc += KC, b++) {
      const kc = Math.min(KC, k - pc);
      if (kind === 'f32') f32Macro(m, NR, kc, aAt[b]!, B_AT, C_AT + j * 4, ldc, pc === 0 ? 0 : 1);
      else i16Macro(m, NR, kc, aAt[b]!, B_AT, C_AT + j * 4, ldc, pc === 0 ? 0 : 1);
    }
  }
}

const shapes: [string, number, number, number][] = [
  ['q/kv/dense m=512 n=1536 k=1024', 512, 1536, 1024],
  ['m=512 n=512 k=1024', 512, 512, 1024],
  ['m=512 n=256 k=1024', 512, 256, 1024],
  ['expert up m=48 n=256 k=1024', 48, 256, 1024],
  ['expert up m=200 n=256 k=1024', 200, 256, 1024],
  ['expert up m=400 n=256 k=1024', 400, 256, 1024],
  ['expert down m=48 n=1024 k=256', 48, 1024, 256],
  ['expert down m=200 n=1024 k=256', 200, 1024, 256],
  ['expert down m=400 n=1024 k=256', 400, 1024, 256],
];
const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[xs.length >> 1]!;
console.log('shape | f32 ms | i16 ms | f32 GMAC/s | i16 GMAC/s | f32/i16');
for (const [name, m, n, k] of shapes) {
  const macs = m * n * k;
  const inner = Math.max(1, Math.round(2e8 / macs));
  const t: Record<'f32' | 'i16', number[]> = { f32: [], i16: [] };
  for (let r = 0; r < reps + 1; r++)
    for (const kind of ['f32', 'i16'] as const) {
      const t0 = performance.now();
      for (let x = 0; x < inner; x++) run(kind, m, n, k);
      if (r > 0) t[kind].push((performance.now() - t0) / inner);
    }
  const a = median(t.f32);
  const b = median(t.i16);
  console.log(
    `${name} | ${a.toFixed(3)} | ${b.toFixed(3)} | ${(macs / a / 1e6).toFixed(1)} | ${(macs / b / 1e6).toFixed(1)} | ${(a / b).toFixed(2)}x`,
  );
}
