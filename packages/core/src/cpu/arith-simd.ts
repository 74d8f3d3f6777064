// f32 add / sub / mul / div four lanes at a time with WebAssembly SIMD128: the elementwise passes of
// a training step (residual adds, gradient accumulation, gating products, clipping's scale) ran as
// JavaScript loops at ~1.5–3 ns an element. Bitwise the JavaScript loop's result: that loop computes
// each result in f64 from two f32 values and rounds it once to f32, which for + − × ÷ is the correctly
// rounded f32 result (f64 carries more than 2·24 + 2 bits), and f32x4's lanes round the same way.
// (NaN results are NaN in both; their payload bits may differ.)
import { F32, I32, ModuleBuilder } from './gemm/wasm-emitter.js';
import { createdEngine, hasSimd } from './gemm/runtime.js';
import type { WasmGemm } from './gemm/wasm-engine.js';

export type ArithOp = 'add' | 'sub' | 'mul' | 'div';

/** Floats of each operand per trip through the module's memory. */
const CHUNK = 16384;
const A_AT = 0;
const B_AT = CHUNK * 4;
const O_AT = 2 * CHUNK * 4;
/** Below this many elements the JavaScript loop is as quick as staging the operands. */
export const ARITH_SIMD_MIN = 256;

const OPCODE: Record<ArithOp, number> = { add: 0xe4, sub: 0xe5, mul: 0xe6, div: 0xe7 };
/** One element as the JavaScript loop computes it (f64, rounded to f32 by the store). */
const SCALAR: Record<ArithOp, (x: number, y: number) => number> = {
  add: (x, y) => x + y,
  sub: (x, y) => x - y,
  mul: (x, y) => x * y,
  div: (x, y) => x / y,
};
/** The three operand layouts: both vectors, vector op scalar, scalar op vector. */
const FORMS = ['vv', 'vs', 'sv'] as const;
type Form = (typeof FORMS)[number];

/**
 * `${form}_${op}(count4, s)`: count4 vectors of O = A op B (vv), A op s (vs) or s op B (sv), A, B and
 * O at A_AT, B_AT and O_AT.
 */
function buildModule(): Uint8Array<ArrayBuffer> {
  const m = new ModuleBuilder({ module: 'env', name: 'memory', initialPages: 4, maximumPages: 4, shared: false });
  for (const form of FORMS) {
    for (const op of Object.keys(OPCODE) as ArithOp[]) {
      const [f] = m.func(`${form}_${op}`, [I32, F32]);
      const [count, s] = [0, 1];
      const at = f.local(I32);
      f.block().loop();
      f.get(count).eqz().brIf(1);
      f.get(at); // the store's address
      if (form === 'sv')
        f.get(s).simd(0x13); // f32x4.splat
      else f.get(at).v128Load(A_AT);
      if (form === 'vs') f.get(s).simd(0x13);
      else f.get(at).v128Load(B_AT);
      f.simd(OPCODE[op]);
      f.v128Store(O_AT);
      f.get(at).i32(16).add().set(at);
      f.get(count).i32(1).sub().set(count);
      f.br(0).end().end();
    }
  }
  return m.emit();
}

/**
 * The same functions over the GEMM engine's memory, on operands in place: `${form}_${op}(a, b, o,
 * count4, s)` with byte addresses a, b, o (a kernel output that lives there, resident-outputs.ts).
 */
function buildInPlaceModule(shared: boolean, maximumPages: number): Uint8Array<ArrayBuffer> {
  const m = new ModuleBuilder({ module: 'env', name: 'memory', initialPages: 1, maximumPages, shared });
  for (const form of FORMS) {
    for (const op of Object.keys(OPCODE) as ArithOp[]) {
      const [f] = m.func(`${form}_${op}`, [I32, I32, I32, I32, F32]);
      const [a, b, o, count, s] = [0, 1, 2, 3, 4];
      f.block().loop();
      f.get(count).eqz().brIf(1);
      f.get(o); // the store's address
      if (form === 'sv') f.get(s).simd(0x13);
      else f.get(a).v128Load();
      if (form === 'vs') f.get(s).simd(0x13);
      else f.get(b).v128Load();
      f.simd(OPCODE[op]);
      f.v128Store();
      for (const p of [a, b, o]) f.get(p).i32(16).add().set(p);
      f.get(count).i32(1).sub().set(count);
      f.br(0).end().end();
    }
  }
  // fill(o, count4, s): count4 vectors of s from o (V8's fill on shared memory is ~5x slower)
  const [f] = m.func('fill', [I32, I32, F32]);
  const [o, count, s] = [0, 1, 2];
  f.block().loop();
  f.get(count).eqz().brIf(1);
  f.get(o).get(s).simd(0x13).v128Store();
  f.get(o).i32(16).add().set(o);
  f.get(count).i32(1).sub().set(count);
  f.br(0).end().end();
  return m.emit();
}

type InPlaceRun = (a: number, b: number, o: number, count4: number, s: number) => void;
type InPlaceFns = Record<`${Form}_${ArithOp}`, InPlaceRun> & {
  fill: (o: number, count4: number, s: number) => void;
};
const inPlace = new WeakMap<WasmGemm, InPlaceFns>();

/** The in-place functions over engine g's memory (instantiated on first use). */
function inPlaceFns(g: WasmGemm): InPlaceFns {
  let fns = inPlace.get(g);
  if (!fns) inPlace.set(g, (fns = g.instantiate(buildInPlaceModule) as unknown as InPlaceFns));
  return fns;
}

/** o[from, to) = value (as Float32Array.fill), in SIMD where o lives in the GEMM engine's memory. */
export function fillF32(o: Float32Array, value: number, from = 0, to = o.length): Float32Array {
  const g = createdEngine();
  if (to - from < ARITH_SIMD_MIN || !g?.arena.owns(o) || !hasSimd()) return o.fill(value, from, to);
  const whole = (to - from) & ~3;
  inPlaceFns(g).fill(o.byteOffset + from * 4, whole >> 2, value);
  return o.fill(value, from + whole, to);
}

type Run = (count4: number, s: number) => void;
let engine: { fns: Record<`${Form}_${ArithOp}`, Run>; f32: Float32Array } | null | undefined;

function getEngine() {
  if (engine !== undefined) return engine;
  engine = null;
  if (!hasSimd()) return engine;
  try {
    const memory = new WebAssembly.Memory({ initial: 4, maximum: 4 });
    const inst = new WebAssembly.Instance(new WebAssembly.Module(buildModule()), { env: { memory } });
    engine = {
      fns: inst.exports as unknown as Record<`${Form}_${ArithOp}`, Run>,
      f32: new Float32Array(memory.buffer),
    };
  } catch {
    engine = null;
  }
  return engine;
}

/**
 * o[oo + i] = a[ao + i·as] op b[bo + i·bs] for i < n, with as and bs each 1 (a vector) or 0 (a scalar,
 * not both), in SIMD; false where it does not run (no SIMD128, other strides, fewer than
 * ARITH_SIMD_MIN elements): the caller's loop does the job. o may be a or b (the same span).
 */
export function arithF32(
  op: ArithOp,
  a: Float32Array,
  ao: number,
  as: number,
  b: Float32Array,
  bo: number,
  bs: number,
  o: Float32Array,
  oo: number,
  n: number,
): boolean {
  if (n < ARITH_SIMD_MIN || (as !== 0 && as !== 1) || (bs !== 0 && bs !== 1) || as + bs === 0) return false;
  const e = getEngine();
  if (!e) return false;
  const form: Form = as && bs ? 'vv' : as ? 'vs' : 'sv';
  const s = as ? (bs ? 0 : b[bo]!) : a[ao]!;
  const g = createdEngine();
  if (g?.arena.owns(o) && (!as || g.arena.owns(a)) && (!bs || g.arena.owns(b))) {
    // All in the engine's memory: in place, whole vectors there, the last n % 4 by the loop's rule
    // (one f64 operation rounded to f32: the lanes' result, see above).
    const whole = n & ~3;
    inPlaceFns(g)[`${form}_${op}`](a.byteOffset + ao * 4, b.byteOffset + bo * 4, o.byteOffset + oo * 4, whole >> 2, s);
    const f = SCALAR[op];
    for (let i = whole; i < n; i++) o[oo + i] = f(as ? a[ao + i]! : s, bs ? b[bo + i]! : s);
    return true;
  }
  const run = e.fns[`${form}_${op}`];
  const mem = e.f32;
  for (let c = 0; c < n; c += CHUNK) {
    const len = Math.min(CHUNK, n - c);
    if (as) mem.set(a.subarray(ao + c, ao + c + len), A_AT / 4);
    if (bs) mem.set(b.subarray(bo + c, bo + c + len), B_AT / 4);
    // whole vectors: the lanes past len compute on stale values and are not copied out
    run((len + 3) >> 2, s);
    o.set(mem.subarray(O_AT / 4, O_AT / 4 + len), oo + c);
  }
  return true;
}
