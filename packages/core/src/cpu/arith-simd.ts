// f32 add / sub / mul / div four lanes at a time with WebAssembly SIMD128: the elementwise passes of
// a training step (residual adds, gradient accumulation, gating products, clipping's scale) ran as
// JavaScript loops at ~1.5–3 ns an element. Bitwise the JavaScript loop's result: that loop computes
// each result in f64 from two f32 values and rounds it once to f32, which for + − × ÷ is the correctly
// rounded f32 result (f64 carries more than 2·24 + 2 bits), and f32x4's lanes round the same way.
// (NaN results are NaN in both; their payload bits may differ.)
import { F32, I32, ModuleBuilder } from './gemm/wasm-emitter.js';
import { effectiveThreads, hasSimd } from './gemm/runtime.js';
import { privateSimdModule } from './private-simd-module.js';
import type { WasmGemm } from './gemm/wasm-engine.js';
import { placeSpans, residentEngine, type Span } from './engine-operands.js';

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

/** The twelve (form, op) pairs in the order of arithRows' kind argument: form-major. */
const KINDS = FORMS.flatMap((form) => (Object.keys(OPCODE) as ArithOp[]).map((op) => [form, op] as const));

/**
 * The same passes as row kernels of the GEMM engine's module (attention-rows-simd.ts), over operands in
 * place in its memory: `arithRows(kind, a, b, o, count4, sBits)`, count4 vectors of o = a op b (kind =
 * KINDS' index; byte addresses; the scalar as its f32 bits), and `fillRows(o, count4, sBits)`, count4
 * vectors of the scalar from o (V8's fill on shared memory is ~5x slower).
 */
export function addArithRows(m: ModuleBuilder): void {
  {
    const [f] = m.func('arithRows', [I32, I32, I32, I32, I32, I32]);
    const [kind, a, b, o, count, bits] = [0, 1, 2, 3, 4, 5];
    const s = f.local(F32);
    f.get(bits).f32ReinterpretI32().set(s);
    KINDS.forEach(([form, op], k) => {
      f.get(kind).i32(k).eq().if_();
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
      f.end();
    });
  }
  const [f] = m.func('fillRows', [I32, I32, I32]);
  const [o, count, bits] = [0, 1, 2];
  f.block().loop();
  f.get(count).eqz().brIf(1);
  f.get(o).get(bits).f32ReinterpretI32().simd(0x13).v128Store();
  f.get(o).i32(16).add().set(o);
  f.get(count).i32(1).sub().set(count);
  f.br(0).end().end();
}

/**
 * How an in-place pass splits over the engine's threads: tasks of at least `taskVectors` vectors (a
 * smaller pass runs on the calling thread alone), and the workers woken only for a pass of at least
 * `wakeVectors` (below it, split only while they are awake). The passes are bound by memory: below ~2M
 * floats a split was level or slower at load ~2-5, and raised the step's CPU (docs/benchmarks.md, issue
 * 11, fourteenth session).
 */
export const ARITH_SPLIT = { taskVectors: 1 << 18, wakeVectors: 1 << 19 };

/** The threads of engine e for a pass of `vectors` vectors. */
function arithThreads(e: WasmGemm, vectors: number): number {
  return e.rowJobThreads(effectiveThreads(e), vectors, ARITH_SPLIT.wakeVectors);
}

const bitsOf = new Float32Array(1);
const bitsView = new Int32Array(bitsOf.buffer);
/** The f32 bits of s (an i32 argument of a row-kernel task). */
function f32Bits(s: number): number {
  bitsOf[0] = s;
  return bitsView[0]!;
}

/** o[from, to) = value (as Float32Array.fill), in SIMD where o lives in a GEMM engine's memory. */
export function fillF32(o: Float32Array, value: number, from = 0, to = o.length): Float32Array {
  const e = to - from >= ARITH_SIMD_MIN && hasSimd() ? residentEngine(o) : null;
  if (!e) return o.fill(value, from, to);
  const whole = (to - from) & ~3;
  const at = o.byteOffset + from * 4;
  const sBits = f32Bits(value);
  e.runRowKernels('fillRows', whole >> 2, ARITH_SPLIT.taskVectors, arithThreads(e, whole >> 2), (v0, v1) => [
    at + 16 * v0,
    v1 - v0,
    sBits,
  ]);
  return o.fill(value, from + whole, to);
}

type Run = (count4: number, s: number) => void;
let engine: { fns: Record<`${Form}_${ArithOp}`, Run>; f32: Float32Array } | null | undefined;

function getEngine() {
  if (engine !== undefined) return engine;
  const mod = privateSimdModule(buildModule, 4);
  engine = mod && {
    fns: mod.exports as unknown as Record<`${Form}_${ArithOp}`, Run>,
    f32: new Float32Array(mod.memory.buffer),
  };
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
  // An operand in a GEMM engine's memory: the job runs there (split over its threads when long), the
  // others copied in (o back out); whole vectors there, the last n % 4 by the loop's rule (one f64
  // operation rounded to f32: the lanes' result, see above).
  const g = residentEngine(o) ?? (as ? residentEngine(a) : null) ?? (bs ? residentEngine(b) : null);
  const whole = n & ~3;
  const spans: Span[] = [];
  if (as) spans.push({ array: a, offset: ao, length: whole });
  if (bs) spans.push({ array: b, offset: bo, length: whole });
  const placed = g && placeSpans(g, spans, [{ array: o, offset: oo, length: whole }], 0);
  if (g && placed) {
    const kind = KINDS.findIndex(([fm, o2]) => fm === form && o2 === op);
    const [a0, b0, o0] = as && bs ? placed.at : as ? [placed.at[0]!, 0, placed.at[1]!] : [0, ...placed.at];
    const sBits = f32Bits(s);
    g.runRowKernels('arithRows', whole >> 2, ARITH_SPLIT.taskVectors, arithThreads(g, whole >> 2), (v0, v1) => [
      kind,
      as ? a0! + 16 * v0 : 0,
      bs ? b0! + 16 * v0 : 0,
      o0! + 16 * v0,
      v1 - v0,
      sBits,
    ]);
    placed.copyOut(whole);
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
