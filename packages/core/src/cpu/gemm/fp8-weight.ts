// E4M3 weights with 128x128 block scales (DeepSeek-V3's FP8 format) on the CPU: the f32 value of each
// code, a weight widened whole, and the block scales as the weight GEMM's packing reads them.

/** f32 value of every E4M3 byte (S.EEEE.MMM, bias 7; 0x7f/0xff read as 480, never in quantized weights: see fp8NaNIndex). */
const E4M3 = Float32Array.from({ length: 256 }, (_, b) => {
  const u = new Uint32Array([((b & 0x7f) << 20) | ((b & 0x80) << 24)]);
  return new Float32Array(u.buffer)[0]! * 2 ** 120;
});

/** W [n, k] of E4M3 bytes and 128x128 block scales, widened to f32. */
export function dequantizeFp8Weight(w: Uint8Array, scales: Float32Array, n: number, k: number): Float32Array {
  const out = new Float32Array(n * k);
  const sc = Math.ceil(k / 128);
  for (let i = 0; i < n; i++) {
    const srow = (i >> 7) * sc;
    for (let j = 0; j < k; j++) out[i * k + j] = E4M3[w[i * k + j]!]! * scales[srow + (j >> 7)]!;
  }
  return out;
}

/** The exponent offset of the kernels' E4M3 decode: `(b << 4) & 0x87f0` as a bf16 is the value times 2^-120. */
const DECODE_OFFSET = 2 ** 120;
const F32_MAX = 3.4028234663852886e38;

/**
 * Whether the first `count` block scales can be staged times 2^120 (stageFp8Scales): each finite one
 * below 2^8 in magnitude, so that s · 2^120 is itself an f32. The packing then multiplies a decoded
 * code c (exact) once, c · (s · 2^120), where it multiplied (c · 2^120) · s: one rounding of the same
 * real product either way, so the same bits. A quantized checkpoint's scales are far below 2^8.
 */
export function fp8ScalesFold(scales: Float32Array, count: number): boolean {
  for (let i = 0; i < count; i++) if (Math.abs(scales[i]!) * DECODE_OFFSET > F32_MAX) return false;
  return true; // NaN compares false: a NaN or infinite scale gives the same NaN / infinities folded
}

/** dst[at + i] = scales[i] · 2^120 for the first `count` scales (exact when fp8ScalesFold holds). */
export function stageFp8Scales(scales: Float32Array, count: number, dst: Float32Array, at: number): void {
  for (let i = 0; i < count; i++) dst[at + i] = scales[i]! * DECODE_OFFSET;
}
