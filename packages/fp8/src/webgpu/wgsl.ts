// WGSL building blocks of the FP8 kernels. FP8 tensors live in GPU buffers packed four bytes to a
// u32 (byte i of the tensor is bits 8*(i%4).. of word i/4, little-endian, as core's WebGPU backend
// stores every 8-bit dtype).
//
// BIT-EXACTNESS WITH THE CPU. Everything that decides an output bit is done on integer bits, so no
// adapter's float shortcuts (flushed subnormals, approximate division, fused multiply-adds) can
// change a result:
// - amax is the integer max of |x|'s bits (the order of non-negative floats is that of their bits);
// - the weight scale amax/448 and the quotient x/s use `div_rn`, a correctly rounded f32 division by
//   restoring long division on the mantissas (WGSL's `/` is only accurate to 2.5 ulp, and one ulp
//   can move an element across an E4M3 rounding midpoint);
// - the activation scale amax * f32(1/448) is one f32 multiplication (correctly rounded in WGSL;
//   no subnormals can occur: amax >= 1e-4);
// - UE8M0 rounding, the E4M3 encode (round to nearest even, saturating) and decode work on bits,
//   exactly like the typed-array codec (codec/e4m3.ts) they mirror.

/** The FP8_LIB function decoding a byte of `dtype` to f32. */
export function decodeFn(dtype: string): string {
  return dtype === 'fp8-e5m2' ? 'e5m2_to_f32' : 'e4m3_to_f32';
}

export const FP8_LIB = /* wgsl */ `
// byte i of a packed FP8 array
fn byte_at(w: u32, i: u32) -> u32 { return (w >> ((i & 3u) << 3u)) & 0xffu; }

// E4M3 (e4m3fn) byte -> f32, exact; 0x7f / 0xff -> NaN.
fn e4m3_to_f32(b: u32) -> f32 {
  let s = (b & 0x80u) << 24u;
  let e = (b >> 3u) & 0xfu;
  let m = b & 7u;
  if (e == 0u) { return bitcast<f32>(bitcast<u32>(f32(m) * 0.001953125) | s); }
  if (e == 15u && m == 7u) { return bitcast<f32>(s | 0x7fc00000u); }
  return bitcast<f32>(s | ((e + 120u) << 23u) | (m << 20u));
}

// E5M2 byte -> f32, exact (the top byte of an IEEE binary16); 0x7c -> inf, 0x7d..0x7f -> NaN.
fn e5m2_to_f32(b: u32) -> f32 {
  let s = (b & 0x80u) << 24u;
  let e = (b >> 2u) & 0x1fu;
  let m = b & 3u;
  if (e == 0u) { return bitcast<f32>(bitcast<u32>(f32(m) * 0.0000152587890625) | s); }
  if (e == 31u) { return bitcast<f32>(s | 0x7f800000u | (m << 21u)); }
  return bitcast<f32>(s | ((e + 112u) << 23u) | (m << 21u));
}

// f32 -> E4M3 byte: round to nearest even on the bits, saturating (|x| > 464 and +-inf -> +-448),
// NaN -> 0x7f with the sign kept. Mirrors encodeE4M3Array.
fn f32_to_e4m3(x: f32) -> u32 {
  let u = bitcast<u32>(x);
  let s = (u >> 24u) & 0x80u;
  let a = u & 0x7fffffffu;
  if (a > 0x7f800000u) { return s | 0x7fu; }
  if (a >= 0x3c800000u) {
    if (a > 0x43e80000u) { return s | 0x7eu; }
    return s | (((a + 0x7ffffu + ((a >> 20u) & 1u)) >> 20u) - 960u);
  }
  // |x| < 2^-6: the code is |x| * 2^9 rounded to an integer, ties to even (8 = 2^-6 itself).
  let e = a >> 23u;
  if (e < 116u) { return s; }
  let mant = (a & 0x7fffffu) | 0x800000u;
  let sh = 141u - e;
  let q = mant >> sh;
  let rem = mant & ((1u << sh) - 1u);
  let half = 1u << (sh - 1u);
  return s | select(q, q + 1u, rem > half || (rem == half && (q & 1u) == 1u));
}

// Correctly rounded f32 division of magnitudes: bits of |x| / |s| for finite x and finite s > 0,
// round to nearest even. Quotients below 2^-126 give 0 (the callers encode to E4M3, where anything
// below 2^-10 is 0); quotients of 2^128 and more give +inf.
fn div_rn_mag(ax: u32, as_: u32) -> u32 {
  if (ax == 0u) { return 0u; }
  var ex = i32(ax >> 23u);
  var mx = ax & 0x7fffffu;
  if (ex == 0) { let sh = countLeadingZeros(mx) - 8u; mx = mx << sh; ex = 1 - i32(sh); } else { mx = mx | 0x800000u; }
  var es = i32(as_ >> 23u);
  var ms = as_ & 0x7fffffu;
  if (es == 0) { let sh = countLeadingZeros(ms) - 8u; ms = ms << sh; es = 1 - i32(sh); } else { ms = ms | 0x800000u; }
  var e = ex - es + 127;
  if (mx < ms) { mx = mx << 1u; e = e - 1; }
  // mx / ms in [1, 2): 25 quotient bits (24 of the significand + 1 rounding bit), sticky remainder
  var r = mx;
  var q = 0u;
  for (var i = 0u; i < 25u; i = i + 1u) {
    q = q << 1u;
    if (r >= ms) { r = r - ms; q = q | 1u; }
    r = r << 1u;
  }
  if (e <= 0) { return 0u; }
  if (e >= 255) { return 0x7f800000u; }
  let qm = q >> 1u;
  var bits = (u32(e) << 23u) + (qm - 0x800000u);
  if ((q & 1u) == 1u && (r != 0u || (qm & 1u) == 1u)) { bits = bits + 1u; }
  return bits;
}

// 2^ceil(log2 s) for a positive finite s, from its bits (UE8M0 scales).
fn ue8m0_ceil_bits(b: u32) -> u32 {
  let e = b >> 23u;
  let m = b & 0x7fffffu;
  if (e == 0u) { return 1u << (32u - countLeadingZeros(m - 1u)); }
  if (m == 0u) { return b; }
  return (e + 1u) << 23u;
}

// E4M3 byte of f32(x / s) (x finite, s > 0 finite), as the CPU quantizers compute it.
fn quant_e4m3(x: f32, s_bits: u32) -> u32 {
  let u = bitcast<u32>(x);
  let q = div_rn_mag(u & 0x7fffffffu, s_bits);
  return f32_to_e4m3(bitcast<f32>(q | (u & 0x80000000u)));
}
`;
