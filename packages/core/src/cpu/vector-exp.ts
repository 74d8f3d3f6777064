// exp over f32 arrays with WebAssembly SIMD128, four lanes at a time: the exp-bound passes of a
// training step (attention and cross-entropy softmaxes, SiLU / sigmoid / SwiGLU and their backward)
// spend most of their time in Math.exp, a call per element. Range reduction x = n·ln2 + r (|r| ≤ ln2/2,
// ln2 split in two parts), a degree-7 polynomial for e^r, 2^n built in the exponent bits. Relative
// error within 2 f32 ulps of the correctly rounded exp; exp(x) = 0 below -87.34 (where f32 leaves its
// normal range), +Infinity above 88.376 (0.35 before f32's own overflow at 88.72), NaN stays NaN. Without SIMD128 a Math.exp loop does the same job.
// Its bits are fixed (test/vector-exp.test.ts spells the arithmetic out); the instructions are the cheap
// ones that give them: the clamp by pmax / pmin (maxps / minps; wasm's max / min are NaN- and ±0-exact
// sequences, which change nothing here: a NaN x stays NaN, ±0 is inside the range) and 2^n from the bits
// of n + 1.5·2^23 (n is integral) instead of trunc_sat — equal to the earlier form on all 2^32 inputs
// but NaN payloads (checked exhaustively, docs/benchmarks.md's nineteenth session).
import { F32, I32, ModuleBuilder, V128, type FuncBuilder } from './gemm/wasm-emitter.js';
import { privateSimdModule } from './private-simd-module.js';

/** Floats per trip through the module's memory (one 64 KiB page). */
const CHUNK = 16384;
const LO = -87.33654;
// Largest x whose 2^n (n = round(x·log2 e) ≤ 127) stays a normal f32; f32's exp overflows at 88.72.
const HI = 88.37626;

/** Pushes the f32x4 constant v (all lanes). */
const splat = (f: FuncBuilder, v: number) => f.f32c(v).simd(0x13);

/** n + MAGIC (n an integer, |n| < 2^22) has the bits 0x4b400000 + n; + BIAS makes them n + 127. */
const MAGIC = 1.5 * 2 ** 23;
const BIAS = 127 - 0x4b400000;
/** The polynomial's coefficients, Cephes' expf, highest degree first. */
const COEFFS = [1.98756915e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1];
/** Every f32x4 constant the exp uses, and the two integer vectors ((127) and +Infinity's bits). */
const F32_CONSTANTS = [LO, HI, Math.LOG2E, 0.693359375, -2.1219444e-4, ...COEFFS, 1, MAGIC] as const;

/**
 * The exp's constants splatted once into v128 locals (emitted where this is called, before a loop), for
 * emitExpF32x4 to read instead of splatting each inside the loop: the same values, so the same bits.
 */
export interface ExpConstants {
  f32: Map<number, number>;
  bias: number;
  inf: number;
}
export function emitExpConstants(f: FuncBuilder): ExpConstants {
  const f32 = new Map<number, number>();
  for (const c of F32_CONSTANTS) {
    const l = f.local(V128);
    splat(f, c).set(l);
    f32.set(c, l);
  }
  const [bias, inf] = [f.local(V128), f.local(V128)];
  f.v128ConstI32(BIAS, BIAS, BIAS, BIAS).set(bias);
  f.v128ConstI32(0x7f800000, 0x7f800000, 0x7f800000, 0x7f800000).set(inf);
  return { f32, bias, inf };
}

/**
 * Emits p = e^x for the f32x4 in local x (n, r: scratch v128 locals; x is kept): the body of the `exp`
 * export, shared with kernels that fuse it into their own loops (attention-rows-simd.ts); `k`: its
 * constants held in locals (emitExpConstants), or null to splat each where it is used.
 */
export function emitExpF32x4(
  f: FuncBuilder,
  x: number,
  n: number,
  r: number,
  p: number,
  k: ExpConstants | null = null,
): void {
  const c = (v: number) => (k ? f.get(k.f32.get(v)!) : splat(f, v));
  // n = nearest(clamp(x)·log2 e)
  f.get(x);
  c(LO);
  f.simd(0xeb); // f32x4.pmax
  c(HI);
  f.simd(0xea); // f32x4.pmin
  f.tee(r);
  c(Math.LOG2E);
  f.f32x4Mul();
  f.simd(0x6a).set(n); // f32x4.nearest
  // r = x − n·ln2_hi − n·ln2_lo
  f.get(r).get(n);
  c(0.693359375);
  f.f32x4Mul();
  f.simd(0xe5); // f32x4.sub
  f.get(n);
  c(-2.1219444e-4);
  f.f32x4Mul();
  f.simd(0xe5).set(r);
  // p = e^r by Horner: 1 + r + r²·(1/2 + r·(1/6 + …))
  c(COEFFS[0]!);
  for (const v of COEFFS.slice(1)) {
    f.get(r).f32x4Mul();
    c(v);
    f.f32x4Add();
  }
  f.get(r).get(r).f32x4Mul().f32x4Mul();
  f.get(r).f32x4Add();
  c(1);
  f.f32x4Add().set(p);
  // 2^n: (n + 127) << 23 as f32 bits, n + 127 read from the bits of n + 1.5·2^23 (0x4b400000 + n)
  f.get(p).get(n);
  c(MAGIC);
  f.f32x4Add();
  if (k) f.get(k.bias);
  else f.v128ConstI32(BIAS, BIAS, BIAS, BIAS);
  f.simd(0xae); // i32x4.add
  f.i32(23).i32x4Shl();
  f.f32x4Mul().set(p);
  // below LO → 0, above HI → +Infinity (NaN compares false both ways and stays NaN)
  f.v128ConstI32(0, 0, 0, 0).get(p).get(x);
  c(LO);
  f.simd(0x43); // f32x4.lt
  f.simd(0x52).set(p); // v128.bitselect
  if (k) f.get(k.inf);
  else f.v128ConstI32(0x7f800000, 0x7f800000, 0x7f800000, 0x7f800000);
  f.get(p).get(x);
  c(HI);
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
