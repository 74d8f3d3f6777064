// WGSL building blocks shared by the kernels: the parameter block, storage bindings, per-dtype
// loaders and encoders (bit-exact f16/bf16 codecs with the CPU's round-to-nearest-even), the
// conversions of `cast` (JS semantics: truncation, ToInt32 wrapping, NaN → 0), and float math that
// behaves the same on every adapter (explicit NaN tests, range-reduced sin/cos, tanh, JS pow).
import type { DType } from '../dtype.js';
import { gpuInfo, type ComputeType } from './dtypes.js';

/** WGSL type name of a compute type. */
export const wgslType = (ct: ComputeType): string => ct;

/**
 * WGSL for a GEMM over expert segments whose bounds stay on the device: thread 0 walks the E + 1
 * offsets in `Offs` to the segment and BM-row tile of workgroup row wid.y; the others get it through
 * workgroupUniformLoad (so the early exit and the barriers stay in uniform control flow). Leaves `sg` =
 * [rows, first row, segment] and `M` = rows of this tile; a workgroup past the last tile returns.
 * Needs `var<workgroup> seg: array<u32, 3>`, `tid`, `wid` and `E` in scope.
 */
export function segmentTileWgsl(BM: number): string {
  return `if (tid == 0u) {
    var w = wid.y; var found = array<u32, 3>(0u, 0u, 0u);
    for (var i = 0u; i < E; i++) {
      let a = u32(Offs[i]); let b = u32(Offs[i + 1u]);
      let tiles = (b - a + ${BM - 1}u) / ${BM}u;
      if (w < tiles) { let rs = a + w * ${BM}u; found = array<u32, 3>(min(${BM}u, b - rs), rs, i); break; }
      w -= tiles;
    }
    seg = found;
  }
  let sg = workgroupUniformLoad(&seg);
  let M = sg[0];
  if (M == 0u) { return; }`;
}

/** The uniform parameter block: `n` u32 values read with P(k) (Pi(k) as i32, Pf(k) as f32). */
export function paramsDecl(n: number): string {
  const vecs = Math.max(1, Math.ceil(n / 4));
  return `@group(0) @binding(0) var<uniform> prm: array<vec4<u32>, ${vecs}>;
fn P(k: u32) -> u32 { return prm[k >> 2u][k & 3u]; }
fn Pi(k: u32) -> i32 { return bitcast<i32>(P(k)); }
fn Pf(k: u32) -> f32 { return bitcast<f32>(P(k)); }
`;
}

export interface BindingDecl {
  name: string;
  write?: boolean;
  /** WGSL element type of the runtime array; default u32 */
  type?: string;
  /** a single atomic<u32> (the index-error flag) */
  atomic?: boolean;
}

/** Storage bindings from @binding(1) on (binding 0 is the parameter block). */
export function bindingDecls(list: BindingDecl[]): string {
  return list
    .map((b, i) => {
      const access = b.write || b.atomic ? 'read_write' : 'read';
      const ty = b.atomic ? 'atomic<u32>' : `array<${b.type ?? 'u32'}>`;
      return `@group(0) @binding(${i + 1}) var<storage, ${access}> ${b.name}: ${ty};`;
    })
    .join('\n');
}

/** Layout key of a binding list ('u' for the params, then 'r'/'w' per storage binding). */
export const layoutKey = (list: BindingDecl[]): string =>
  `u${list.map((b) => (b.write || b.atomic ? 'w' : 'r')).join('')}`;

/**
 * Loaders for a binding holding `dtype`: `<name>_raw(i) -> u32` (the element's bits) and
 * `<name>_ld(i) -> CT` (its value in the compute type). `bias` is subtracted from the index first
 * (the element offset of a chunked binding).
 */
export function loaders(name: string, dtype: DType, bias = ''): string {
  const info = gpuInfo(dtype);
  const idx = bias ? `(i - ${bias})` : 'i';
  let raw: string;
  if (info.bits === 32) raw = `return ${name}[${idx}];`;
  else if (info.bits === 16) raw = `let j = ${idx}; return (${name}[j >> 1u] >> ((j & 1u) << 4u)) & 0xffffu;`;
  else raw = `let j = ${idx}; return (${name}[j >> 2u] >> ((j & 3u) << 3u)) & 0xffu;`;
  let out = `fn ${name}_raw(i: u32) -> u32 { ${raw} }\n`;
  if (info.ct) out += `fn ${name}_ld(i: u32) -> ${info.ct} { return ${decodeExpr(dtype, `${name}_raw(i)`)}; }\n`;
  return out;
}

/** WGSL expression decoding raw bits `e` (u32) of `dtype` to its compute type. */
export function decodeExpr(dtype: DType, e: string): string {
  switch (dtype) {
    case 'f32':
      return `bitcast<f32>(${e})`;
    case 'f16':
      return `f16_to_f32(${e})`;
    case 'bf16':
      return `bitcast<f32>((${e}) << 16u)`;
    case 'i32':
      return `bitcast<i32>(${e})`;
    case 'bool':
      return `select(0u, 1u, (${e}) != 0u)`;
    default:
      return `(${e})`;
  }
}

/** WGSL expression encoding a compute-type value `e` as the raw bits of `dtype` (low bits of a u32). */
export function encodeExpr(dtype: DType, e: string): string {
  switch (dtype) {
    case 'f32':
      return `bitcast<u32>(${e})`;
    case 'f16':
      return `f32_to_f16(${e})`;
    case 'bf16':
      return `f32_to_bf16(${e})`;
    case 'i32':
      return `bitcast<u32>(${e})`;
    case 'u32':
      return `(${e})`;
    case 'u8':
      return `((${e}) & 0xffu)`;
    case 'bool':
      return `select(0u, 1u, (${e}) != 0u)`;
    default:
      throw new TypeError(`webgpu: cannot encode values as ${dtype}`);
  }
}

/**
 * WGSL expression converting a value `e` of `from` (in its compute type) to the compute type of
 * `to`, with the CPU's `cast` semantics.
 */
export function convertExpr(e: string, from: DType, to: DType): string {
  const fi = gpuInfo(from);
  const ti = gpuInfo(to);
  const fc = fi.ct!;
  if (to === 'bool') {
    if (fc === 'f32') return `f32_truthy(${e})`;
    return `select(0u, 1u, (${e}) != ${fc === 'i32' ? '0i' : '0u'})`;
  }
  const tc = ti.ct!;
  if (tc === 'f32') {
    if (fc === 'f32') return e;
    if (fc === 'i32') return `i32_to_f32(${e})`;
    return `u32_to_f32(${e})`;
  }
  if (tc === 'i32') {
    if (fc === 'f32') return `bitcast<i32>(f32_to_u32_wrap(${e}))`;
    if (fc === 'i32') return e;
    return `bitcast<i32>(${e})`;
  }
  // u32 (u32 and u8; the encoder masks u8)
  if (fc === 'f32') return `f32_to_u32_wrap(${e})`;
  if (fc === 'i32') return `bitcast<u32>(${e})`;
  return e;
}

/** A WGSL literal of a compute type. */
export function literal(ct: ComputeType, v: number): string {
  if (ct === 'f32') {
    if (Number.isNaN(v)) return 'nan_f32()';
    if (v === Infinity) return 'inf_f32()';
    if (v === -Infinity) return '(-inf_f32())';
    const f = Math.fround(v);
    return `bitcast<f32>(${f32Bits(f)}u)`;
  }
  if (ct === 'i32') return `${v | 0}i`;
  return `${v >>> 0}u`;
}

const f32buf = new Float32Array(1);
const u32buf = new Uint32Array(f32buf.buffer);
/** The bits of a number rounded to f32 (for passing floats through u32 parameters). */
export function f32Bits(v: number): number {
  f32buf[0] = v;
  return u32buf[0]!;
}

/** Helpers every kernel may call. Tint drops what an entry point does not use. */
export const LIB = /* wgsl */ `
fn is_nan(x: f32) -> bool { return (bitcast<u32>(x) & 0x7fffffffu) > 0x7f800000u; }
fn is_inf(x: f32) -> bool { return (bitcast<u32>(x) & 0x7fffffffu) == 0x7f800000u; }
// (read from private variables: constant expressions may not produce NaN or infinity)
var<private> NAN_BITS: u32 = 0x7fc00000u;
var<private> INF_BITS: u32 = 0x7f800000u;
fn nan_f32() -> f32 { return bitcast<f32>(NAN_BITS); }
fn inf_f32() -> f32 { return bitcast<f32>(INF_BITS); }
fn f32_truthy(x: f32) -> u32 { return select(0u, 1u, x != 0.0 && !is_nan(x)); }

// IEEE binary16 bits -> f32 (exact; subnormals scaled by 2^-24, which stays normal in f32; NaNs
// come out quiet, as the host's conversion makes them).
fn f16_to_f32(h: u32) -> f32 {
  let s = (h & 0x8000u) << 16u;
  let e = (h >> 10u) & 0x1fu;
  let m = h & 0x3ffu;
  if (e == 0u) { return bitcast<f32>(bitcast<u32>(f32(m) * 5.9604644775390625e-8) | s); }
  if (e == 31u) { return bitcast<f32>(s | 0x7f800000u | select(0u, 0x400000u | (m << 13u), m != 0u)); }
  return bitcast<f32>(s | ((e + 112u) << 23u) | (m << 13u));
}

// f32 -> binary16 bits, round to nearest even, on the bits (so no adapter flushes subnormals);
// NaN keeps its top payload bits like @petamoriken/float16 does.
fn f32_to_f16(x: f32) -> u32 {
  let u = bitcast<u32>(x);
  let s = (u >> 16u) & 0x8000u;
  let a = u & 0x7fffffffu;
  if (a > 0x7f800000u) { return s | 0x7c00u | ((a & 0x7fffffu) >> 13u); }
  if (a >= 0x477ff000u) { return s | 0x7c00u; }
  if (a >= 0x38800000u) {
    let r = a - 0x38000000u;
    return s | ((r + 0xfffu + ((r >> 13u) & 1u)) >> 13u);
  }
  let e = a >> 23u;
  if (e < 102u) { return s; }
  let m = (a & 0x7fffffu) | 0x800000u;
  let sh = 126u - e;
  let q = m >> sh;
  let rem = m & ((1u << sh) - 1u);
  let half = 1u << (sh - 1u);
  return s | select(q, q + 1u, rem > half || (rem == half && (q & 1u) == 1u));
}

// f32 -> bfloat16 bits, round to nearest even; NaN becomes a quiet NaN (as the CPU codec).
fn f32_to_bf16(x: f32) -> u32 {
  let u = bitcast<u32>(x);
  if ((u & 0x7f800000u) == 0x7f800000u && (u & 0x7fffffu) != 0u) { return ((u >> 16u) | 0x40u) & 0xffffu; }
  return ((u + 0x7fffu + ((u >> 16u) & 1u)) >> 16u) & 0xffffu;
}

// ToUint32(trunc(x)) as JS typed arrays do: NaN/inf -> 0, otherwise the integer modulo 2^32.
fn f32_to_u32_wrap(x: f32) -> u32 {
  let u = bitcast<u32>(x);
  let e = (u >> 23u) & 0xffu;
  if (e == 255u || e < 127u) { return 0u; }
  let m = (u & 0x7fffffu) | 0x800000u;
  let sh = e - 127u;
  var mag = 0u;
  if (sh <= 23u) { mag = m >> (23u - sh); } else if (sh < 55u) { mag = m << (sh - 23u); }
  return select(mag, 0u - mag, (u >> 31u) != 0u);
}

// Integer -> f32 rounded to nearest even: both halves are exact, the one addition rounds once.
fn i32_to_f32(v: i32) -> f32 { return f32(v >> 16u) * 65536.0 + f32(v & 0xffffi); }
fn u32_to_f32(v: u32) -> f32 { return f32(v >> 16u) * 65536.0 + f32(v & 0xffffu); }

fn sign_f32(x: f32) -> f32 { return select(select(x, -1.0, x < 0.0), 1.0, x > 0.0); }

// sin / cos with Cody-Waite reduction by pi/2 and minimax polynomials on [-pi/4, pi/4]; accurate
// to a few ulp for |x| < 1e5 on every adapter (the WGSL builtins only promise 2^-11 absolute).
fn sin_poly(r: f32) -> f32 {
  let z = r * r;
  return ((-1.9515295891e-4 * z + 8.3321608736e-3) * z - 1.6666654611e-1) * z * r + r;
}
fn cos_poly(r: f32) -> f32 {
  let z = r * r;
  return ((2.443315711809948e-5 * z - 1.388731625493765e-3) * z + 4.166664568298827e-2) * z * z - 0.5 * z + 1.0;
}
fn sincos_q(x: f32, shift: u32) -> f32 {
  if (is_nan(x) || is_inf(x)) { return nan_f32(); }
  let j = round(x * 0.63661977236758134);
  var r = x - j * 1.5703125;
  r = r - j * 4.837512969970703125e-4;
  r = r - j * 7.54978995489188216e-8;
  let q = (u32(i32(j) & 3i) + shift) & 3u;
  if (q == 0u) { return sin_poly(r); }
  if (q == 1u) { return cos_poly(r); }
  if (q == 2u) { return -sin_poly(r); }
  return -cos_poly(r);
}
fn sin_acc(x: f32) -> f32 { return sincos_q(x, 0u); }
fn cos_acc(x: f32) -> f32 { return sincos_q(x, 1u); }

fn tanh_acc(x: f32) -> f32 {
  if (is_nan(x)) { return x; }
  let a = abs(x);
  if (a < 0.625) {
    let z = x * x;
    return ((((-5.70498872745e-3 * z + 2.06390887954e-2) * z - 5.37397155531e-2) * z + 1.33314422036e-1) * z - 3.33332819422e-1) * z * x + x;
  }
  if (a > 9.0) { return sign_f32(x); }
  let r = 1.0 - 2.0 / (exp(2.0 * a) + 1.0);
  return select(r, -r, x < 0.0);
}

// Math.pow semantics (negative bases with integer exponents, zeros, infinities, NaN).
fn pow_js(a: f32, b: f32) -> f32 {
  if (b == 0.0) { return 1.0; }
  if (is_nan(a) || is_nan(b)) { return nan_f32(); }
  let ab = abs(a);
  var r: f32;
  if (ab == 0.0) { r = select(inf_f32(), 0.0, b > 0.0); }
  else if (is_inf(ab)) { r = select(0.0, inf_f32(), b > 0.0); }
  else if (is_inf(b)) {
    if (ab == 1.0) { return nan_f32(); }
    r = select(0.0, inf_f32(), (ab > 1.0) == (b > 0.0));
    return r;
  } else { r = exp2(b * log2(ab)); }
  let neg = (bitcast<u32>(a) >> 31u) != 0u;
  if (neg) {
    let bi = floor(b);
    if (bi != b) { return select(nan_f32(), r, ab == 0.0 || is_inf(ab)); }
    let odd = abs(b) < 16777216.0 && (i32(bi) & 1i) == 1i;
    if (odd) { return -r; }
  }
  return r;
}

// Integer powers wrap modulo 2^32; negative exponents follow Math.pow then truncation.
fn pow_i32(a: i32, b: i32) -> i32 {
  if (b < 0i) {
    if (a == 1i) { return 1i; }
    if (a == -1i) { return select(1i, -1i, (b & 1i) == 1i); }
    return 0i;
  }
  var r = 1i; var base = a; var e = b;
  loop { if (e == 0i) { break; } if ((e & 1i) == 1i) { r = r * base; } base = base * base; e = e >> 1u; }
  return r;
}
fn pow_u32(a: u32, b: u32) -> u32 {
  var r = 1u; var base = a; var e = b;
  loop { if (e == 0u) { break; } if ((e & 1u) == 1u) { r = r * base; } base = base * base; e = e >> 1u; }
  return r;
}
`;

/** Workgroup counts for `groups` workgroups, split over x and y when over the per-dimension limit. */
export function grid(groups: number, maxPerDim = 65535): [number, number, number] {
  if (groups <= maxPerDim) return [Math.max(groups, 1), 1, 1];
  const y = Math.ceil(groups / maxPerDim);
  if (y > maxPerDim)
    throw new RangeError(`webgpu: ${groups} workgroups exceed the dispatch limit of ${maxPerDim}² per dispatch`);
  return [maxPerDim, y, 1];
}
