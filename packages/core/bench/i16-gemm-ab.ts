// The integer weight GEMM against the f32 one on one thread, V3-mini's prefill shapes, the two
// alternating per repetition (process CPU ms, so a pinned run is not charged for time it waits on a
// shared core: medians; G multiply-adds/s):
// - macro: the i16 macro-kernel (i16-gemm-kernel.ts) against the f32 macro-kernel (sgemm-kernel.ts) in
//   the weight GEMM's panel order (A~ for all of k, one NR x KC B~ panel in L1 per call), operands
//   pre-packed (packing not timed);
// - driver: whole products, gemmWI16_<dtype> against gemmW_<dtype> (packing and quantizing included).
// With --native, the wasm i16 kernels against the same module built with the native kernels
// (native/i16-gemm.cc's macro-kernel, native-kernels.ts) instead of f32 against i16.
// usage: taskset -c 1 npx tsx bench/i16-gemm-ab.ts [--reps 7] [--dtype bf16|fp8] [--only macro|driver|packw (--native)] [--native]
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { i16APanelBytes } from '../src/cpu/gemm/i16-gemm-kernel.js';
import { genI16WeightGemm, packI16X } from '../src/cpu/gemm/i16-weight-gemm.js';
import { stageFp8Scales } from '../src/cpu/gemm/fp8-weight.js';
import { buildSgemmModule, DEFAULT_KERNEL, workspaceBytes } from '../src/cpu/gemm/sgemm-kernel.js';
import { NATIVE_IMPORTS, nativeKernels } from '../src/cpu/gemm/native-kernels.js';
import { ModuleBuilder } from '../src/cpu/gemm/wasm-emitter.js';

const { values } = parseArgs({
  options: {
    reps: { type: 'string', default: '7' },
    dtype: { type: 'string', default: 'bf16' },
    only: { type: 'string', default: '' },
    shapes: { type: 'string', default: '' },
    cold: { type: 'string', default: '0' },
    native: { type: 'boolean', default: false },
  },
});
const dtype = values.dtype;
if (dtype !== 'bf16' && dtype !== 'fp8') throw new Error(`i16-gemm-ab: --dtype is bf16 or fp8, got ${dtype}`);
const reps = Number(values.reps);
type Kernel = (...args: number[]) => void;
const PAGES = 4096;
const memory = new WebAssembly.Memory({ initial: PAGES, maximum: PAGES });
const f32Ex = new WebAssembly.Instance(new WebAssembly.Module(buildSgemmModule(DEFAULT_KERNEL, false, PAGES, false)), {
  env: { memory },
}).exports as Record<string, Kernel>;
const f32Macro = f32Ex.macro as Kernel;
const mb = new ModuleBuilder({ module: 'env', name: 'memory', initialPages: 1, maximumPages: PAGES, shared: false });
genI16WeightGemm(mb, DEFAULT_KERNEL);
const i16Ex = new WebAssembly.Instance(new WebAssembly.Module(mb.emit()), { env: { memory } }).exports as Record<
  string,
  Kernel
>;
const i16Macro = i16Ex.macroI16 as Kernel;
/** --native: the i16 kernels of a module importing the native ones, on the same (fixed-size) memory. */
const nativeEx = ((): Record<string, Kernel> | null => {
  if (!values.native) return null;
  const native = nativeKernels();
  if (!native) throw new Error('i16-gemm-ab --native: the native kernels are not built or not supported here');
  const nb = new ModuleBuilder(
    { module: 'env', name: 'memory', initialPages: 1, maximumPages: PAGES, shared: false },
    Object.values(NATIVE_IMPORTS),
  );
  genI16WeightGemm(nb, DEFAULT_KERNEL);
  const env = { memory, ...native.addon.bind(new Uint8Array(memory.buffer)) };
  return new WebAssembly.Instance(new WebAssembly.Module(nb.emit()), { env }).exports as Record<string, Kernel>;
})();

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

function run(kind: 'f32' | 'i16' | 'native', m: number, n: number, k: number): void {
  const mPad = Math.ceil(m / MR);
  const ldc = Math.ceil(n / NR) * NR * 4;
  let aPc = A_AT;
  const aAt: number[] = [];
  for (let pc = 0; pc < k; pc += KC) {
    const kc = Math.min(KC, k - pc);
    aAt.push(aPc);
    aPc += kind === 'f32' ? mPad * MR * kc * 4 : mPad * i16APanelBytes(MR, kc);
  }
  for (let j = 0; j < n; j += NR) {
    for (let b = 0, pc = 0; pc < k; pc += KC, b++) {
      const kc = Math.min(KC, k - pc);
      if (kind === 'f32') f32Macro(m, NR, kc, aAt[b]!, B_AT, C_AT + j * 4, ldc, pc === 0 ? 0 : 1);
      else
        (kind === 'i16' ? i16Macro : (nativeEx as Record<string, Kernel>).macroI16!)(
          m,
          NR,
          kc,
          aAt[b]!,
          B_AT,
          C_AT + j * 4,
          ldc,
          pc === 0 ? 0 : 1,
        );
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
  // small products (where the i16 route starts to pay: gemmConfig.i16MinRows)
  ...[5, 8, 12, 16, 24].flatMap((m): [string, number, number, number][] => [
    [`m=${m} n=1536 k=1024`, m, 1536, 1024],
    [`m=${m} n=1024 k=256`, m, 1024, 256],
  ]),
];
const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[xs.length >> 1]!;

function compare(
  title: string,
  label: [string, string],
  time: (variant: 0 | 1, m: number, n: number, k: number) => void,
): void {
  console.log(
    `${title}\nshape | ${label[0]} ms | ${label[1]} ms | ${label[0]} GMAC/s | ${label[1]} GMAC/s | ${label[0]}/${label[1]}`,
  );
  for (const [name, m, n, k] of shapes) {
    const macs = m * n * k;
    const inner = Math.max(1, Math.round(2e8 / macs));
    const t: [number[], number[]] = [[], []];
    for (let r = 0; r < reps + 1; r++)
      for (const v of [0, 1] as const) {
        const t0 = process.cpuUsage();
        for (let x = 0; x < inner; x++) time(v, m, n, k);
        const dt = process.cpuUsage(t0);
        if (r > 0) t[v].push((dt.user + dt.system) / 1000 / inner);
      }
    const a = median(t[0]);
    const b = median(t[1]);
    console.log(
      `${name} | ${a.toFixed(3)} | ${b.toFixed(3)} | ${(macs / a / 1e6).toFixed(1)} | ${(macs / b / 1e6).toFixed(1)} | ${(a / b).toFixed(2)}x`,
    );
  }
}

if ((values.only === '' || values.only === 'macro') && !nativeEx)
  compare('macro-kernel, packed operands', ['f32', 'i16'], (v, m, n, k) => run(v === 0 ? 'f32' : 'i16', m, n, k));
if ((values.only === '' || values.only === 'macro') && nativeEx)
  compare('i16 macro-kernel, packed operands', ['wasm', 'native'], (v, m, n, k) =>
    run(v === 0 ? 'i16' : 'native', m, n, k),
  );

// Whole products: x [m, k] f32, W [n, k] stored bf16 / E4M3 with block scales, C [m, n] (n a multiple of NR).
const WS = 1 << 20;
const X_AT = WS + workspaceBytes(DEFAULT_KERNEL);
const W_AT = X_AT + 512 * 2048 * 4;
const S_AT = W_AT + 2048 * 2048 * 2;
const Y_AT = S_AT + 64 * 1024;
{
  const f32 = new Float32Array(memory.buffer);
  for (let i = 0; i < 512 * 2048; i++) f32[X_AT / 4 + i] = Math.sin(i) * 2;
  const u16 = new Uint16Array(memory.buffer);
  const u8 = new Uint8Array(memory.buffer);
  for (let i = 0; i < 2048 * 2048; i++)
    if (dtype === 'bf16') u16[W_AT / 2 + i] = new Uint32Array(new Float32Array([Math.cos(i) * 0.05]).buffer)[0]! >>> 16;
    else u8[W_AT + i] = (i * 2654435761) >>> 24 === 0x7f ? 0x7e : ((i * 2654435761) >>> 24) & 0xef;
  stageFp8Scales(
    Float32Array.from({ length: 256 }, (_, i) => 0.001 + i * 1e-5),
    256,
    f32,
    S_AT / 4,
  );
}
const eb = dtype === 'bf16' ? 2 : 1;
const AQ_AT = Y_AT + (8 << 20); // x's A~ (quantized x)
/** A whole i16 product as the engine runs it: x quantized (packI16X), then the driver. */
function i16Product(m: number, n: number, k: number, x: number, w: number, y: number, ex = i16Ex): void {
  packI16X(ex.packAI16!, DEFAULT_KERNEL, x, k * 4, m, k, AQ_AT);
  ex[`gemmWI16_${dtype}`]!(m, 0, n, k, AQ_AT, w, k * eb, y, n * 4, WS, S_AT, Math.ceil(k / 128) * 4);
}
/** All of weight w [n, k] packed into B~ panels by `packW` (packWI16_<dtype>), panel by panel, depth block by block. */
function packWeightPanels(packW: Kernel, w: number, n: number, k: number): void {
  for (let j = 0; j < n; j += NR)
    for (let pc = 0; pc < k; pc += KC)
      packW(
        w + (j * k + pc) * eb,
        k * eb,
        Math.min(NR, n - j),
        Math.min(KC, k - pc),
        WS,
        S_AT,
        Math.ceil(k / 128) * 4,
        j,
        pc,
      );
}

if (values.only === 'packw' && nativeEx)
  compare(
    `i16 weight packing (packWI16_${dtype}), 2^24 weights (GMAC/s columns: not meaningful)`,
    ['wasm', 'native'],
    (v, _m, n, k) => {
      const packW = (v === 0 ? i16Ex : nativeEx)[`packWI16_${dtype}`] as Kernel;
      // all of W 2^24 / (n·k) times a call (compare's repeat count goes by m·n·k): ms per 2^24 weights
      for (let rep = (1 << 24) / (n * k); rep > 0; rep--) packWeightPanels(packW, W_AT, n, k);
    },
  );
if (values.only !== 'macro' && values.only !== 'packw' && nativeEx)
  compare(`whole i16 products, ${dtype} weights (packing included)`, ['wasm', 'native'], (v, m, n, k) =>
    i16Product(m, n, k, X_AT, W_AT, Y_AT, v === 0 ? i16Ex : nativeEx),
  );
if (values.only !== 'macro' && !nativeEx)
  compare(`whole products, ${dtype} weights (packing included)`, ['f32', 'i16'], (v, m, n, k) => {
    const sCols = Math.ceil(k / 128) * 4;
    if (v === 0) f32Ex[`gemmW_${dtype}`]!(0, m, 0, n, k, X_AT, k * 4, 4, W_AT, k * eb, Y_AT, n * 4, WS, S_AT, sCols);
    else i16Product(m, n, k, X_AT, W_AT, Y_AT);
  });

// A workload's products (--shapes FILE: JSON [[m, n, k], ...], e.g. a prefill's i16 products) replayed
// one after another: the whole drivers against their parts timed alone on the same shapes — the
// macro-kernel on pre-packed operands, packing x (packAI16) and the weight panels (packWI16_<dtype>).
if (values.shapes) {
  const list = JSON.parse(readFileSync(values.shapes, 'utf8')) as [number, number, number][];
  const macs = list.reduce((t, [m, n, k]) => t + m * n * k, 0);
  const packA = i16Ex.packAI16 as Kernel;
  const packW = i16Ex[`packWI16_${dtype}`] as Kernel;
  // --cold MiB: each product's weight, x and y at their own places in a region of that size (up to 160;
  // past the caches, as a model's weights are; never-written pages read as the zero page, so only the
  // outputs, written, are truly cold)
  const COLD_AT = 80 << 20;
  const coldMiB = Math.min(160, Number(values.cold));
  let coldAt = COLD_AT;
  const coldOr = (hot: number, bytes: number): number => {
    if (coldMiB === 0) return hot;
    if (coldAt + bytes > COLD_AT + coldMiB * 2 ** 20) coldAt = COLD_AT;
    const at = coldAt;
    coldAt += Math.ceil(bytes / 64) * 64;
    return at;
  };
  const parts: Record<string, () => void> = {
    driver: () => {
      for (const [m, n, k] of list)
        i16Product(m, n, k, coldOr(X_AT, m * k * 4), coldOr(W_AT, n * k * eb), coldOr(Y_AT, m * n * 4));
    },
    macro: () => {
      for (const [m, n, k] of list) run('i16', m, n, k);
    },
    packA: () => {
      for (const [m, , k] of list)
        for (let pc = 0; pc < k; pc += KC) packA(X_AT + pc * 4, k * 4, m, Math.min(KC, k - pc), WS);
    },
    packW: () => {
      for (const [, n, k] of list) packWeightPanels(packW, coldOr(W_AT, n * k * eb), n, k);
    },
  };
  const t: Record<string, number[]> = Object.fromEntries(Object.keys(parts).map((p) => [p, []]));
  for (let r = 0; r < reps + 1; r++)
    for (const [name, f] of Object.entries(parts)) {
      const t0 = process.cpuUsage();
      f();
      const dt = process.cpuUsage(t0);
      if (r > 0) t[name]!.push((dt.user + dt.system) / 1000);
    }
  console.log(`${list.length} products, ${(macs / 1e9).toFixed(2)} G multiply-adds (${values.shapes})`);
  for (const [name, ts] of Object.entries(t)) {
    const ms = median(ts);
    console.log(`${name} | ${ms.toFixed(1)} ms | ${(macs / ms / 1e6).toFixed(1)} G/s`);
  }
}
