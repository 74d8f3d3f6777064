// The SiLU-gated elementwise passes of a training step with WebAssembly SIMD128: SwiGLU's forward and
// backward (@dsv3/moe's fused kernels), SiLU's backward (train-kernels.ts) and SiLU's f32 forward
// (fast-paths.ts; not bitwise its old Math.exp loop, see siluF32). Each JavaScript kernel
// ran vector-exp.ts's e^−x pass, then a loop of f64 divisions and products one element at a time; here
// the same exp (emitExpF32x4, operation for operation: e^(−1·x + 0) rounded to f32) feeds f64x2 lanes
// that do the loop's f64 operations in its order (no fused multiply-add in WebAssembly; division
// correctly rounded in both; f32 values widened exactly, results rounded to nearest like a
// Float32Array store), so the results are the JavaScript kernels' bits:
//   swiglu          h = (g / (1 + e)) · u
//   swigluBackward  s = 1 / (1 + e); dg = ((dh · u) · s) · (1 + g · (1 − s)); du = (dh · g) · s
//   siluBackward    s = 1 / (1 + e); dx = (dy · s) · (1 + x · (1 − s))
//   silu            y = x / (1 + e)
// Operands that all live in one GEMM engine's memory (a prefill's resident expert activations) are
// processed there in place, the same module instantiated over that memory; others are staged through
// this module's own pages.
import { type FuncBuilder, I32, type ModuleBuilder, V128, whileLoop } from './gemm/wasm-emitter.js';
import { effectiveThreads, engineOwning } from './gemm/runtime.js';
import { moduleOf, privateSimdModule } from './private-simd-module.js';
import { emitExpF32x4 } from './vector-exp.js';

/** Fewest floats a task of a resident pass gets (a smaller pass stays on the calling thread). */
const RESIDENT_TASK = 8192;
/** Floats of each operand per trip through the module's memory. */
const CHUNK = 16384;
/** x (g), u, the incoming gradient, then the two outputs. */
const [X_AT, U_AT, D_AT, O1_AT, O2_AT] = [0, 1, 2, 3, 4].map((i) => i * CHUNK * 4) as [
  number,
  number,
  number,
  number,
  number,
];
const PAGES = (5 * CHUNK * 4) / 65536;

const KINDS = ['swiglu', 'swigluBackward', 'siluBackward', 'silu'] as const;
type Kind = (typeof KINDS)[number];

const OP = { splat: 0x14, add: 0xf0, sub: 0xf1, mul: 0xf2, div: 0xf3, promote: 0x5f, demote: 0x5e };
const f64x2 = (f: FuncBuilder, name: keyof typeof OP) => f.simd(OP[name]);

/**
 * `${kind}(x, u, d, o1, o2, count4)`: count4 vectors of 4 elements from the operands at byte addresses
 * x, u, d (the incoming gradient) into o1 (and o2).
 */
function addKernel(m: ModuleBuilder, kind: Kind): void {
  const [f] = m.func(kind, [I32, I32, I32, I32, I32, I32]);
  const [X, U, D, O1, O2, count] = [0, 1, 2, 3, 4, 5];
  const at = f.local(I32);
  const [arg, n, r, e4, x4, u4, d4] = f.locals(V128, 7) as number[] as [
    number,
    number,
    number,
    number,
    number,
    number,
    number,
  ];
  const [one, e, x, u, d, s] = f.locals(V128, 6) as number[] as [number, number, number, number, number, number];
  const outs = f.locals(V128, 4) as number[] as [number, number, number, number]; // [output][half]
  f.op(0x44, ...new Uint8Array(new Float64Array([1]).buffer)); // f64.const 1
  f64x2(f, 'splat').set(one);
  /** local dst = lanes (2h, 2h + 1) of the f32x4 in local v, widened. */
  const half = (v: number, h: number, dst: number) => {
    f.get(v);
    if (h === 1) f.get(v).shuffle32(2, 3, 2, 3);
    f64x2(f, 'promote').set(dst);
  };
  whileLoop(
    f,
    () => f.get(count),
    () => {
      f.get(at).get(X).add().v128Load().set(x4);
      // vector-exp.ts's exp(ptr, n, scale −1, shift 0)
      f.get(x4).f32c(-1).f32x4Splat().f32x4Mul();
      f.f32c(0).f32x4Splat().f32x4Add().set(arg);
      emitExpF32x4(f, arg, n, r, e4);
      const gated = kind === 'swiglu' || kind === 'swigluBackward';
      if (gated) f.get(at).get(U).add().v128Load().set(u4);
      if (kind.endsWith('Backward')) f.get(at).get(D).add().v128Load().set(d4);
      for (let h = 0; h < 2; h++) {
        half(e4, h, e);
        half(x4, h, x);
        if (gated) half(u4, h, u);
        if (kind.endsWith('Backward')) half(d4, h, d);
        if (kind === 'swiglu' || kind === 'silu') {
          f.get(x).get(one).get(e);
          f64x2(f, 'add');
          f64x2(f, 'div');
          if (kind === 'swiglu') f.get(u).simd(OP.mul);
          f.set(outs[h]!);
          continue;
        }
        f.get(one).get(one).get(e);
        f64x2(f, 'add');
        f64x2(f, 'div').set(s);
        // (…) · (1 + x · (1 − s)), after dh · u · s (swiglu) or dy · s (silu)
        f.get(d);
        if (kind === 'swigluBackward') {
          f.get(u);
          f64x2(f, 'mul');
        }
        f.get(s);
        f64x2(f, 'mul').get(one).get(x).get(one).get(s);
        f64x2(f, 'sub');
        f64x2(f, 'mul');
        f64x2(f, 'add');
        f64x2(f, 'mul').set(outs[h]!);
        if (kind === 'swigluBackward') {
          f.get(d).get(x);
          f64x2(f, 'mul').get(s);
          f64x2(f, 'mul').set(outs[2 + h]!);
        }
      }
      const store = (region: number, lo: number, hi: number) => {
        f.get(at).get(region).add();
        f.get(lo);
        f64x2(f, 'demote').get(hi);
        f64x2(f, 'demote').shuffle32(0, 1, 4, 5).v128Store();
      };
      store(O1, outs[0]!, outs[1]!);
      if (kind === 'swigluBackward') store(O2, outs[2]!, outs[3]!);
      f.get(at).i32(16).add().set(at);
      f.get(count).i32(1).sub().set(count);
    },
  );
}

type Kernels = Record<Kind, (x: number, u: number, d: number, o1: number, o2: number, count4: number) => void>;

/** Every kind's kernel (into the engine's row-kernels module too: attention-rows-simd.ts). */
export function addGatedKernels(m: ModuleBuilder): void {
  for (const kind of KINDS) addKernel(m, kind);
}

let engine: { run: Kernels; f32: Float32Array } | null | undefined;

function getEngine() {
  if (engine !== undefined) return engine;
  const mod = privateSimdModule(moduleOf(addGatedKernels, PAGES), PAGES);
  engine = mod && { run: mod.exports as unknown as Kernels, f32: new Float32Array(mod.memory.buffer) };
  return engine;
}

/**
 * Runs the whole vectors of `kind` in place when every operand lives in one GEMM engine's memory and
 * each output is an input or overlaps none; returns the elements done (a multiple of 4; 0: none).
 */
function runResident(kind: Kind, inputs: (Float32Array | null)[], outputs: Float32Array[], n: number): number {
  const e = engineOwning(outputs[0]!);
  const all = [...inputs.filter((t): t is Float32Array => t !== null), ...outputs];
  if (!e || n < 4 || all.some((t) => engineOwning(t) !== e)) return 0;
  for (const o of outputs)
    for (const t of all)
      if (
        t !== o &&
        t.byteOffset !== o.byteOffset &&
        t.byteOffset < o.byteOffset + 4 * n &&
        o.byteOffset < t.byteOffset + 4 * n
      )
        return 0;
  // vectors split into tasks of at least RESIDENT_TASK floats, shared with the GEMM workers
  const at = (t: Float32Array | null | undefined, v: number) => (t ? t.byteOffset + 16 * v : 0);
  const [x, u, d] = inputs;
  e.runRowKernels(kind, n >> 2, RESIDENT_TASK / 4, effectiveThreads(e), (v0, v1) => [
    at(x, v0),
    at(u, v0),
    at(d, v0),
    at(outputs[0], v0),
    at(outputs[1], v0),
    v1 - v0,
  ]);
  return n & ~3;
}

/** Runs `kind` over the inputs' n elements into the outputs (in place or staged); false: no SIMD. */
function run(
  kind: Kind,
  inputs: [Float32Array | null, Float32Array | null, Float32Array | null],
  outputs: Float32Array[],
): boolean {
  const e = getEngine();
  if (!e) return false;
  const n = outputs[0]!.length;
  for (const t of [...inputs, ...outputs])
    if (t && t.length !== n)
      throw new RangeError(`${kind}: every operand needs ${n} elements (the first output's), got ${t.length}`);
  for (let s = runResident(kind, inputs, outputs, n); s < n; s += CHUNK) {
    const len = Math.min(CHUNK, n - s);
    inputs.forEach((t, i) => t && e.f32.set(t.subarray(s, s + len), [X_AT, U_AT, D_AT][i]! / 4));
    e.run[kind](X_AT, U_AT, D_AT, O1_AT, O2_AT, (len + 3) >> 2);
    outputs.forEach((o, i) => o.set(e.f32.subarray([O1_AT, O2_AT][i]! / 4, [O1_AT, O2_AT][i]! / 4 + len), s));
  }
  return true;
}

/** h = silu(g) · u with e^−g from vector-exp.ts (see the header); false where SIMD128 is missing (nothing written). */
export function swigluF32(g: Float32Array, u: Float32Array, h: Float32Array): boolean {
  return run('swiglu', [g, u, null], [h]);
}

/** SwiGLU's gradients dg and du from dh (see the header); false where SIMD128 is missing. */
export function swigluBackwardF32(
  dh: Float32Array,
  g: Float32Array,
  u: Float32Array,
  dg: Float32Array,
  du: Float32Array,
): boolean {
  return run('swigluBackward', [g, u, dh], [dg, du]);
}

/** SiLU's input gradient dx from x and the output's gradient dy (see the header); false where SIMD128 is missing. */
export function siluBackwardF32(x: Float32Array, dy: Float32Array, dx: Float32Array): boolean {
  return run('siluBackward', [x, null, dy], [dx]);
}

/**
 * y = silu(x) = x / (1 + e^−x) in f32 with e^−x from vector-exp.ts (within 2 f32 ulps of the correctly
 * rounded exp) where the JavaScript loop used Math.exp: each y is within 2^−22 + 2^−23 relative of
 * silu's exact value (e's error passes to 1 + e at most relatively, then two roundings), and below
 * x = −88.37 (e^−x past f32's range) y is −0 where the exact value's magnitude is under 4e−37.
 * False where SIMD128 is missing (nothing written).
 */
export function siluF32(x: Float32Array, y: Float32Array): boolean {
  return run('silu', [x, null, null], [y]);
}

/** silu over f32 arrays (y may be x): siluF32 where SIMD128 is, else the Math.exp loop. */
export function siluInto(x: Float32Array, y: Float32Array): void {
  if (!siluF32(x, y)) for (let i = 0; i < x.length; i++) y[i] = x[i]! / (1 + Math.exp(-x[i]!));
}
