// quantizeE4M3Weight(w, rows, cols, block, floor, q, scales): the fp8 package's quantizeWeight
// (packages/fp8/src/quant.ts, fp32 scales) in AVX-512, bit for bit: per block x block tile the scale
// s = f32(max(amax, floor) / 448), then every element's f32 quotient w / s rounded to E4M3 (to nearest,
// ties to even, on its bits; saturating at 448) — f32 division is correctly rounded, as the f64 division
// JS rounds to f32 is. Returns false, having written nothing reliable, when w holds a NaN or an infinity:
// the caller's JavaScript path then names the element.
#include <immintrin.h>

#include "kernels.h"

namespace dsv3 {
namespace {

constexpr uint32_t ABS_MASK = 0x7fffffff;
constexpr uint32_t INF_BITS = 0x7f800000;
// E4M3 as the fp8 package's codec derives it: 3 mantissa bits (shift 20), exponent bias 7.
constexpr uint32_t SHIFT = 20;
constexpr uint32_t REBIAS = (127 - 7) << 3;
constexpr uint32_t MIN_NORMAL_BITS = (128 - 7) << 23;
constexpr uint32_t MAX_CODE = 0x7e;
constexpr uint32_t NAN_CODE = 0x7f;
constexpr uint32_t OVERFLOW_BITS = ((MAX_CODE + REBIAS) << SHIFT) + (1u << (SHIFT - 1)) + ((MAX_CODE & 1) ? 0 : 1);
constexpr float SUBNORMAL_SCALE = 512.0f;  // 2^(bias - 1 + mantissa bits)

// Codes of the f32 values x (any finite or not), 16 at a time.
DSV3_AVX512 __m512i encode16(__m512 x) {
  const __m512i u = _mm512_castps_si512(x);
  const __m512i sign = _mm512_and_si512(_mm512_srli_epi32(u, 24), _mm512_set1_epi32(0x80));
  const __m512i a = _mm512_and_si512(u, _mm512_set1_epi32(ABS_MASK));
  // normal: round the mantissa to 3 bits, ties to even, then rebias
  const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(a, SHIFT), _mm512_set1_epi32(1));
  const __m512i rounded = _mm512_add_epi32(_mm512_add_epi32(a, _mm512_set1_epi32((1 << (SHIFT - 1)) - 1)), odd);
  __m512i c = _mm512_sub_epi32(_mm512_srli_epi32(rounded, SHIFT), _mm512_set1_epi32(REBIAS));
  // subnormal: |x| * 2^9 (exact), rounded to the nearest integer, ties to even
  const __m512 sub = _mm512_roundscale_ps(_mm512_mul_ps(_mm512_castsi512_ps(a), _mm512_set1_ps(SUBNORMAL_SCALE)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __mmask16 isSub = _mm512_cmplt_epu32_mask(a, _mm512_set1_epi32(MIN_NORMAL_BITS));
  c = _mm512_mask_mov_epi32(c, isSub, _mm512_cvtps_epi32(sub));
  // overflow saturates to 448; NaN keeps its sign with the NaN code
  const __mmask16 over = _mm512_cmpge_epu32_mask(a, _mm512_set1_epi32(OVERFLOW_BITS));
  const __mmask16 nan = _mm512_cmpgt_epu32_mask(a, _mm512_set1_epi32(INF_BITS));
  c = _mm512_mask_mov_epi32(c, over, _mm512_set1_epi32(MAX_CODE));
  c = _mm512_mask_mov_epi32(c, nan, _mm512_set1_epi32(NAN_CODE));
  return _mm512_or_si512(sign, c);
}

DSV3_AVX512 __mmask16 tailMask(uint32_t n) { return n >= 16 ? __mmask16(0xffff) : __mmask16((1u << n) - 1); }

// Quantizes one band of up to `block` rows; false when it holds a non-finite value.
DSV3_AVX512 bool quantizeBand(const float* w, uint32_t r0, uint32_t r1, uint32_t cols, uint32_t block, float floor,
                              uint8_t* q, float* scales, uint32_t cb) {
  float* s = scales + size_t(r0 / block) * cb;
  const __m512i absMask = _mm512_set1_epi32(ABS_MASK);
  for (uint32_t bj = 0; bj < cb; bj++) {
    const uint32_t j0 = bj * block, j1 = j0 + block < cols ? j0 + block : cols;
    __m512i amax = _mm512_setzero_si512();  // |x| bits: finite magnitudes order as their bits do
    for (uint32_t r = r0; r < r1; r++)
      for (uint32_t j = j0; j < j1; j += 16) {
        const __m512i v = _mm512_maskz_loadu_epi32(tailMask(j1 - j), w + size_t(r) * cols + j);
        amax = _mm512_max_epu32(amax, _mm512_and_si512(v, absMask));
      }
    const uint32_t m = _mm512_reduce_max_epu32(amax);
    if (m >= INF_BITS) return false;
    float mf;
    __builtin_memcpy(&mf, &m, 4);
    s[bj] = (mf > floor ? mf : floor) / 448.0f;
  }
  for (uint32_t r = r0; r < r1; r++) {
    const float* row = w + size_t(r) * cols;
    uint8_t* out = q + size_t(r) * cols;
    for (uint32_t bj = 0; bj < cb; bj++) {
      const uint32_t j0 = bj * block, j1 = j0 + block < cols ? j0 + block : cols;
      const __m512 scale = _mm512_set1_ps(s[bj]);
      for (uint32_t j = j0; j < j1; j += 16) {
        const __mmask16 k = tailMask(j1 - j);
        const __m512i c = encode16(_mm512_div_ps(_mm512_maskz_loadu_ps(k, row + j), scale));
        _mm_mask_storeu_epi8(out + j, k, _mm512_cvtepi32_epi8(c));
      }
    }
  }
  return true;
}

// `value` as a typed array of `want` elements: its first element and length.
bool typedArray(napi_env env, napi_value value, napi_typedarray_type want, void** data, size_t* length) {
  TypedView view;
  if (!typedView(env, value, &view) || view.type != want) return false;
  *data = view.data;
  *length = view.length;
  return true;
}

}  // namespace

napi_value QuantizeE4M3Weight(napi_env env, napi_callback_info info) {
  napi_value argv[7];
  size_t argc = 7;
  uint32_t rows = 0, cols = 0, block = 0;
  double floor = 0;
  void *w, *q, *scales;
  size_t wLen, qLen, sLen;
  if (napi_get_cb_info(env, info, &argc, argv, nullptr, nullptr) != napi_ok || argc != 7 ||
      !typedArray(env, argv[0], napi_float32_array, &w, &wLen) ||
      napi_get_value_uint32(env, argv[1], &rows) != napi_ok || napi_get_value_uint32(env, argv[2], &cols) != napi_ok ||
      napi_get_value_uint32(env, argv[3], &block) != napi_ok || napi_get_value_double(env, argv[4], &floor) != napi_ok ||
      !typedArray(env, argv[5], napi_uint8_array, &q, &qLen) ||
      !typedArray(env, argv[6], napi_float32_array, &scales, &sLen)) {
    throwError(env,
               "quantizeE4M3Weight: expected (w: Float32Array, rows, cols, block, floor, q: Uint8Array, scales: "
               "Float32Array)");
    return nullptr;
  }
  const uint64_t n = uint64_t(rows) * cols;
  const uint64_t rb = block ? (uint64_t(rows) + block - 1) / block : 0, cb = block ? (uint64_t(cols) + block - 1) / block : 0;
  if (block == 0 || wLen < n || qLen < n || sLen < rb * cb || !(floor > 0)) {
    throwError(env, "quantizeE4M3Weight: arrays shorter than rows x cols (scales: the block grid), or block / floor not positive");
    return nullptr;
  }
  if (!cpuHasAvx512()) {
    throwError(env, "quantizeE4M3Weight: this CPU lacks AVX-512 (F / VL / DQ / BW)");
    return nullptr;
  }
  bool finite = true;
  for (uint32_t r0 = 0; r0 < rows && finite; r0 += block)
    finite = quantizeBand(static_cast<const float*>(w), r0, r0 + block < rows ? r0 + block : rows, cols, block,
                          static_cast<float>(floor), static_cast<uint8_t*>(q), static_cast<float*>(scales),
                          static_cast<uint32_t>(cb));
  napi_value out;
  napi_get_boolean(env, finite, &out);
  return out;
}

}  // namespace dsv3
