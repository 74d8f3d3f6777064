// exp over f32 arrays with WebAssembly SIMD128, four lanes at a time: the exp-bound passes of a
// training step (attention and cross-entropy softmaxes, SiLU / sigmoid / SwiGLU and their backward)
// spend most of their time in Math.exp, a call per element. Range reduction x = n·ln2 + r (|r| ≤ ln2/2,
// ln2 split in two parts), a degree-7 polynomial for e^r, 2^n built in the exponent bits. Relative
// error within 2 f32 ulps of the correctly rounded exp; exp(x) = 0 below -87.34 (where f32 leaves its
// normal range), +Infinity above 88.376 (0.35 before f32's own overflow at 88.72), NaN stays NaN. Without SIMD128 a Math.exp loop does the same job.
import { F32, I32, ModuleBuilder, V128, type FuncBuilder } from './gemm/wasm-emitter.js';
import { privateSimdModule } from './private-simd-module.js';

/** Floats per trip through the module's memory (one 64 KiB page). */
const CHUNK = 16384;
const LO = -87.33654;
// Largest x whose 2^n (n = round(x·log2 e) ≤ 127) stays a normal f32; f32's exp overflows at 88.72.
const HI = 88.37626;

/** Pushes the f32x4 constant v (all lanes). */
const splat = (f: FuncBuilder, v: number) => f.f32c(v).simd(0x13);

/**
 * Emits p = e^x for the f32x4 in local x (n, r: scratch v128 locals; x is kept): the body of the `exp`
 * export, shared with kernels that fuse it into their own loops (attention-rows-simd.ts).
 */
export function emitExpF32x4(f: FuncBuilder, x: number, n: number, r: number, p: number): void {
  // n = nearest(clamp(x)·log2 e)
  f.get(x);
  splat(f, LO);
  f.simd(0xe9); // f32x4.max
  splat(f, HI);
  f.simd(0xe8); // f32x4.min
  f.tee(r);
  splat(f, Math.LOG2E);
  f.f32x4Mul();
  f.simd(0x6a).set(n); // f32x4.nearest
  // r = x − n·ln2_hi − n·ln2_lo
  f.get(r).get(n);
  splat(f, 0.693359375);
  f.f32x4Mul();
  f.simd(0xe5); // f32x4.sub
  f.get(n);
  splat(f, -2.1219444e-4);
  f.f32x4Mul();
  f.simd(0xe5).set(r);
  // p = e^r by Horner: 1 + r + r²·(1/2 + r·(1/6 + …)), coefficients of Cephes' expf
  const coeffs = [1.98756915e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1];
  splat(f, coeffs[0]!);
  for (const c of coeffs.slice(1)) {
    f.get(r).f32x4Mul();
    splat(f, c);
    f.f32x4Add();
  }
  f.get(r).get(r).f32x4Mul().f32x4Mul();
  f.get(r).f32x4Add();
  splat(f, 1);
  f.f32x4Add().set(p);
  // 2^n: (n + 127) << 23 as f32 bits
  f.get(p).get(n);
  f.simd(0xf8); // i32x4.trunc_sat_f32x4_s
  f.v128ConstI32(127, 127, 127, 127);
  f.simd(0xae); // i32x4.add
  f.i32(23).i32x4Shl();
  f.f32x4Mul().set(p);
  // below LO → 0, above HI → +Infinity (NaN compares false both ways and stays NaN)
  f.v128ConstI32(0, 0, 0, 0).get(p).get(x);
  splat(f, LO);
  f.simd(0x43); // f32x4.lt
  f.simd(0x52).set(p); // v128.bitselect
  f.v128ConstI32(0x7f800000, 0x7f800000, 0x7f800000, 0x7f800000).get(p).get(x);
  splat(f, HI);
  f.simd(0x44); // f32x4.gt
  f.simd(0x52);
  f.set(p);
}

/** Adds the `exp(ptr, count4, scale, shift)` export (see buildExpModule) to module m. */
export function addExpFunction(m: ModuleBuilder): void {
  const [f] = m.func('exp', [I32, I32, F32, F32]);
  const [ptr, count, scale, shift] = [0, 1, 2, 3];
  const [x, n, r, p] = f.locals(V128, 4) as [number, number, number, number];
  f.block().loop();
  f.get(count).eqz().brIf(1);
  f.get(ptr).v128Load();
  f.get(scale).simd(0x13);
  f.f32x4Mul();
  f.get(shift).simd(0x13);
  f.f32x4Add().set(x);
  emitExpF32x4(f, x, n, r, p);
  f.get(ptr).get(p).v128Store();
  f.get(ptr).i32(16).add().set(ptr);
  f.get(count).i32(1).sub().set(count);
  f.br(0).end().end();
}

/**
 * exp(ptr, count4, scale, shift): count4 vectors of 4 floats at byte address ptr, replaced by exp(scale·x + shift).
 * The memory it imports: this file's own page by default (the GEMM engine builds its own module with
 * this export over its memory: attention-rows-simd.ts).
 */
export function buildExpModule(shared = false, maximumPages = 1): Uint8Array<ArrayBuffer> {
  const m = new ModuleBuilder({ module: 'env', name: 'memory', initialPages: 1, maximumPages, shared });
  addExpFunction(m);
  return m.emit();
}

let engine:
  | { run: (ptr: number, count4: number, scale: number, shift: number) => void; mem: Float32Array }
  | null
  | undefined;

function getEngine() {
  if (engine !== undefined) return engine;
  const mod = privateSimdModule(() => buildExpModule(), 1);
  engine = mod && {
    run: mod.exports.exp as (p: number, c: number, s: number, t: number) => void,
    mem: new Float32Array(mod.memory.buffer),
  };
  return engine;
}

/**
 * dst[dstAt + i] = exp(scale · src[srcAt + i] + shift) for i < n, in f32 (the argument rounded to f32
 * too); src and dst may be the same span.
 */
export function expF32(
  src: Float32Array,
  srcAt: number,
  dst: Float32Array,
  dstAt: number,
  n: number,
  scale = 1,
  shift = 0,
): void {
  const e = getEngine();
  if (!e) {
    for (let i = 0; i < n; i++) dst[dstAt + i] = Math.exp(Math.fround(Math.fround(scale * src[srcAt + i]!) + shift));
    return;
  }
  for (let s = 0; s < n; s += CHUNK) {
    const len = Math.min(CHUNK, n - s);
    e.mem.set(src.subarray(srcAt + s, srcAt + s + len));
    e.run(0, (len + 3) >> 2, scale, shift);
    dst.set(e.mem.subarray(0, len), dstAt + s);
  }
}

/** a[at .. at + n) = exp(a[at .. at + n)) in f32. */
export function expInPlace(a: Float32Array, at: number, n: number): void {
  expF32(a, at, a, at, n);
}

/** Whether expF32 runs the SIMD kernel (false: the Math.exp loop). */
export function vectorExpAvailable(): boolean {
  return getEngine() !== null;
}
