// AdamW's update of f32 weights (moments f32 or bf16) two elements at a time with WebAssembly SIMD128
// (f64x2 lanes). The scalar loop
// is bound by its three f64 divisions and square root per element; f64x2 does two for about the price of
// one. Bitwise the JavaScript loop's result: the same f64 operations in the same order (no fused
// multiply-add in WebAssembly; division and square root correctly rounded in both), f32 values widened
// exactly and the results rounded to nearest like a Float32Array store.
import { I32, ModuleBuilder, V128, type FuncBuilder } from './gemm/wasm-emitter.js';
import { privateSimdModule } from './private-simd-module.js';
import type { AdamWKernelAttrs } from '../optim/adamw.js';

/** Floats of each operand per trip through the module's memory. */
const CHUNK = 4096;
const W_AT = 0;
const G_AT = CHUNK * 4;
const M_AT = 2 * CHUNK * 4;
const V_AT = 3 * CHUNK * 4;
/** Byte address of the update's f64 constants, after the four operand regions. */
const CONST_AT = 4 * CHUNK * 4;
/** Byte addresses of the bf16 moments' bits (a chunk each), past the constants. */
const MB_AT = CONST_AT + 1024;
const VB_AT = MB_AT + CHUNK * 2;
const CONSTANTS = ['b1', 'oneMinusB1', 'b2', 'oneMinusB2', 'c1', 'c2', 'eps', 'lr', 'decay', 'scale'] as const;

/** A SIMD memory instruction on 8 bytes at the address on the stack plus `offset`. */
const mem64 = (f: FuncBuilder, opcode: number, offset: number) => {
  f.simd(opcode).code.u32(3).u32(offset);
  return f;
};
const load2 = (f: FuncBuilder, offset: number) => mem64(f, 0x5d, offset).simd(0x5f); // load64_zero, promote_low
const f64x2 = { add: 0xf0, sub: 0xf1, mul: 0xf2, div: 0xf3, sqrt: 0xef } as const;

/** adamw(pairs): w, g, m, v at W_AT.. (f32), `pairs` pairs of elements updated in place. */
function buildModule(): Uint8Array<ArrayBuffer> {
  const m = new ModuleBuilder({ module: 'env', name: 'memory', initialPages: 2, maximumPages: 2, shared: false });
  const [f] = m.func('adamw', [I32]);
  const pairs = 0;
  // each constant splat into a local once
  const k = {} as Record<(typeof CONSTANTS)[number], number>;
  CONSTANTS.forEach((name, i) => {
    k[name] = f.local(V128);
    mem64(f.i32(0), 0x0a, CONST_AT + 8 * i).set(k[name]); // v128.load64_splat
  });
  const { b1, oneMinusB1: omb1, b2, oneMinusB2: omb2, c1, c2, eps, lr, decay, scale } = k;
  const [g, mi, vi] = f.locals(V128, 3) as [number, number, number];
  const at = f.local(I32);
  // f32x4.demote_f64x2_zero, then v128.store64_lane of lane 0
  const store2 = (offset: number) => mem64(f.simd(0x5e), 0x5b, offset).op(0);
  f.block().loop();
  f.get(pairs).eqz().brIf(1);
  // g = f32(g·scale): the f32 product a separate `g *= scale` pass stores (exact in f64, rounded once)
  load2(f.get(at), G_AT).get(scale).simd(f64x2.mul).simd(0x5e).simd(0x5f).set(g);
  // m = b1·m + (1 − b1)·g;  v = b2·v + ((1 − b2)·g)·g  (JavaScript's operand order; × and + commute exactly)
  load2(f.get(at), M_AT).get(b1).simd(f64x2.mul);
  f.get(omb1).get(g).simd(f64x2.mul);
  f.simd(f64x2.add).set(mi);
  load2(f.get(at), V_AT).get(b2).simd(f64x2.mul);
  f.get(omb2).get(g).simd(f64x2.mul).get(g).simd(f64x2.mul);
  f.simd(f64x2.add).set(vi);
  f.get(at).get(mi);
  store2(M_AT);
  f.get(at).get(vi);
  store2(V_AT);
  // w = w·decay − (lr·(m / c1)) / (sqrt(v / c2) + eps), from the unrounded m and v
  f.get(at);
  load2(f.get(at), W_AT).get(decay).simd(f64x2.mul);
  f.get(lr).get(mi).get(c1).simd(f64x2.div).simd(f64x2.mul);
  f.get(vi).get(c2).simd(f64x2.div).simd(f64x2.sqrt).get(eps).simd(f64x2.add);
  f.simd(f64x2.div).simd(f64x2.sub);
  store2(W_AT);
  f.get(at).i32(8).add().set(at);
  f.get(pairs).i32(1).sub().set(pairs);
  f.br(0).end().end();
  addBf16Codecs(m);
  return m.emit();
}

/**
 * widen(src, dst, count8): count8 groups of 8 bf16 at byte address src into f32 at dst (the bits
 * shifted up, as decodeBf16). narrow(src, dst, count8): f32 at src rounded to bf16 bits at dst as
 * encodeBf16 does: to nearest even, NaN kept a quiet NaN (its top bits | 0x40).
 */
function addBf16Codecs(m: ModuleBuilder): void {
  const [wf] = m.func('widen', [I32, I32, I32]);
  const [src, dst, count] = [0, 1, 2];
  wf.block().loop();
  wf.get(count).eqz().brIf(1);
  wf.get(dst).get(src).v128Load().i32x4ExtendLowI16x8U().i32(16).i32x4Shl().v128Store();
  wf.get(dst).get(src).v128Load().i32x4ExtendHighI16x8U().i32(16).i32x4Shl().v128Store(16);
  wf.get(src).i32(16).add().set(src);
  wf.get(dst).i32(32).add().set(dst);
  wf.get(count).i32(1).sub().set(count);
  wf.br(0).end().end();

  const [nf] = m.func('narrow', [I32, I32, I32]);
  const u = nf.local(V128);
  const splatI32 = (v: number) => nf.i32(v).simd(0x11); // i32x4.splat
  const shrU16 = () => nf.i32(16).simd(0xad); // i32x4.shr_u by 16
  /** The bf16 bits of the four f32 at src + offset, one per i32 lane. */
  const round4 = (offset: number) => {
    nf.get(src).v128Load(offset).set(u);
    nf.get(u);
    shrU16();
    splatI32(0x40);
    nf.simd(0x50); // v128.or: the NaN case
    nf.get(u);
    splatI32(0x7fff);
    nf.simd(0xae); // i32x4.add
    nf.get(u);
    shrU16();
    splatI32(1);
    nf.v128And();
    nf.simd(0xae);
    shrU16(); // rounded to nearest even
    nf.get(u).get(u);
    nf.simd(0x42); // f32x4.ne: NaN lanes
    nf.simd(0x52); // v128.bitselect
  };
  nf.block().loop();
  nf.get(count).eqz().brIf(1);
  nf.get(dst);
  round4(0);
  round4(16);
  nf.simd(0x86); // i16x8.narrow_i32x4_u (every lane is in [0, 0xffff])
  nf.v128Store();
  nf.get(src).i32(32).add().set(src);
  nf.get(dst).i32(16).add().set(dst);
  nf.get(count).i32(1).sub().set(count);
  nf.br(0).end().end();
}

let engine:
  | {
      run: (pairs: number) => void;
      widen: (src: number, dst: number, count8: number) => void;
      narrow: (src: number, dst: number, count8: number) => void;
      f32: Float32Array;
      u16: Uint16Array;
      f64: Float64Array;
    }
  | null
  | undefined;

function getEngine() {
  if (engine !== undefined) return engine;
  const mod = privateSimdModule(buildModule, 2);
  engine = mod && {
    run: mod.exports.adamw as (pairs: number) => void,
    widen: mod.exports.widen as (src: number, dst: number, count8: number) => void,
    narrow: mod.exports.narrow as (src: number, dst: number, count8: number) => void,
    u16: new Uint16Array(mod.memory.buffer),
    f32: new Float32Array(mod.memory.buffer),
    f64: new Float64Array(mod.memory.buffer, CONST_AT, CONSTANTS.length),
  };
  return engine;
}

/**
 * The in-place AdamW update of elements [0, n) of f32 weights w from f32 gradients g, pairs in SIMD,
 * with moments m and v in f32 or as bf16 bits (Uint16Array: decoded to f32 on the way in, rounded to
 * bf16 from the stored f32 on the way out, as the scalar loop's chunks do); returns how many elements it
 * updated (0 without SIMD128, n rounded down to even otherwise: the caller finishes). Each gradient is
 * read as f32(g · scale) (scale an f32 value; 1: g itself).
 */
export function adamwPairs(
  w: Float32Array,
  g: Float32Array,
  m: Float32Array | Uint16Array,
  v: Float32Array | Uint16Array,
  n: number,
  a: AdamWKernelAttrs,
  scale: number,
): number {
  const e = getEngine();
  if (!e) return 0;
  e.f64.set([a.b1, 1 - a.b1, a.b2, 1 - a.b2, a.c1, a.c2, a.eps, a.lr, a.decay, scale]);
  const even = n - (n % 2);
  const [w0, g0, m0, v0] = [W_AT, G_AT, M_AT, V_AT].map((b) => b / 4) as [number, number, number, number];
  // bf16 bits pass through their own regions, widened to (rounded from) the f32 the update reads (stores)
  const bitsAt = (at: number) => (at === m0 ? MB_AT : VB_AT);
  const stageIn = (x: Float32Array | Uint16Array, s: number, len: number, at: number) => {
    if (x instanceof Uint16Array) {
      e.u16.set(x.subarray(s, s + len), bitsAt(at) / 2);
      e.widen(bitsAt(at), at * 4, (len + 7) >> 3);
    } else e.f32.set(x.subarray(s, s + len), at);
  };
  const stageOut = (x: Float32Array | Uint16Array, s: number, len: number, at: number) => {
    if (x instanceof Uint16Array) {
      e.narrow(at * 4, bitsAt(at), (len + 7) >> 3);
      x.set(e.u16.subarray(bitsAt(at) / 2, bitsAt(at) / 2 + len), s);
    } else x.set(e.f32.subarray(at, at + len), s);
  };
  for (let s = 0; s < even; s += CHUNK) {
    const len = Math.min(CHUNK, even - s);
    e.f32.set(w.subarray(s, s + len), w0);
    e.f32.set(g.subarray(s, s + len), g0);
    stageIn(m, s, len, m0);
    stageIn(v, s, len, v0);
    e.run(len / 2);
    w.set(e.f32.subarray(w0, w0 + len), s);
    stageOut(m, s, len, m0);
    stageOut(v, s, len, v0);
  }
  return even;
}
