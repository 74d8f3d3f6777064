// quantizeE4M3Tiles(x, rows, cols, tileRows, tileCols, floor, rule, q, scales): the fp8 package's
// block-scaled quantizers (packages/fp8/src/quant.ts, fp32 scales) in AVX-512, bit for bit — quantizeWeight
// (128 x 128 tiles, scale m / 448), quantizeActivation (1 x 128, scale m * f32(1/448)) and
// quantizeActivationColumnwise (128 x 1): per tile the scale from its amax raised to the floor, then every
// element's f32 quotient x / s rounded to E4M3 (to nearest, ties to even, on its bits; saturating at 448).
// f32 division and multiplication are correctly rounded, as the f64 results JS rounds to f32 are. Returns
// false, having written nothing reliable, when x holds a NaN or an infinity: the caller's JavaScript path
// then names the element.
#include <immintrin.h>

#include <string>

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

// How a tile's scale follows from its amax m (already raised to the floor): the fp8 package's weight
// rule, m / 448 correctly rounded, or its activation rule, m times 1/448 rounded to f32, correctly rounded.
enum ScaleRule : uint32_t { DIVIDE_448 = 0, TIMES_INV_448 = 1 };

DSV3_AVX512 inline float tileScale(float m, float floor, ScaleRule rule) {
  const float a = m > floor ? m : floor;
  return rule == DIVIDE_448 ? a / 448.0f : a * (1.0f / 448.0f);
}

// Tiles of tileRows x tileCols (tileCols >= 2): one band of up to tileRows rows [r0, r1), scales[band][bj];
// false when the band holds a non-finite value.
DSV3_AVX512 bool quantizeBand(const float* w, uint32_t r0, uint32_t r1, uint32_t cols, uint32_t tileCols, float floor,
                              ScaleRule rule, uint8_t* q, float* s) {
  const uint32_t cb = (cols + tileCols - 1) / tileCols;
  const __m512i absMask = _mm512_set1_epi32(ABS_MASK);
  for (uint32_t bj = 0; bj < cb; bj++) {
    const uint32_t j0 = bj * tileCols, j1 = j0 + tileCols < cols ? j0 + tileCols : cols;
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
    s[bj] = tileScale(mf, floor, rule);
  }
  for (uint32_t r = r0; r < r1; r++) {
    const float* row = w + size_t(r) * cols;
    uint8_t* out = q + size_t(r) * cols;
    for (uint32_t bj = 0; bj < cb; bj++) {
      const uint32_t j0 = bj * tileCols, j1 = j0 + tileCols < cols ? j0 + tileCols : cols;
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

// Tiles of tileRows x 1 (one scale per column of the band, s[j]): the columns 16 at a time.
DSV3_AVX512 bool quantizeBandColumns(const float* w, uint32_t r0, uint32_t r1, uint32_t cols, float floor,
                                     ScaleRule rule, uint8_t* q, float* s) {
  const __m512i absMask = _mm512_set1_epi32(ABS_MASK);
  for (uint32_t j = 0; j < cols; j += 16) {
    const __mmask16 k = tailMask(cols - j);
    __m512i amax = _mm512_setzero_si512();
    for (uint32_t r = r0; r < r1; r++)
      amax = _mm512_max_epu32(amax, _mm512_and_si512(_mm512_maskz_loadu_epi32(k, w + size_t(r) * cols + j), absMask));
    if (_mm512_cmpge_epu32_mask(amax, _mm512_set1_epi32(INF_BITS))) return false;
    alignas(64) float m[16];
    _mm512_store_ps(m, _mm512_castsi512_ps(amax));
    for (uint32_t l = 0; l < 16 && j + l < cols; l++) s[j + l] = tileScale(m[l], floor, rule);
  }
  for (uint32_t r = r0; r < r1; r++) {
    const float* row = w + size_t(r) * cols;
    uint8_t* out = q + size_t(r) * cols;
    for (uint32_t j = 0; j < cols; j += 16) {
      const __mmask16 k = tailMask(cols - j);
      const __m512 scale = _mm512_mask_loadu_ps(_mm512_set1_ps(1.0f), k, s + j);
      const __m512i c = encode16(_mm512_div_ps(_mm512_maskz_loadu_ps(k, row + j), scale));
      _mm_mask_storeu_epi8(out + j, k, _mm512_cvtepi32_epi8(c));
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

napi_value QuantizeE4M3Tiles(napi_env env, napi_callback_info info) {
  napi_value argv[9];
  size_t argc = 9;
  uint32_t rows = 0, cols = 0, tileRows = 0, tileCols = 0;
  char ruleName[16] = {0};
  size_t ruleLength = 0;
  double floor = 0;
  void *w, *q, *scales;
  size_t wLen, qLen, sLen;
  if (napi_get_cb_info(env, info, &argc, argv, nullptr, nullptr) != napi_ok || argc != 9 ||
      !typedArray(env, argv[0], napi_float32_array, &w, &wLen) ||
      napi_get_value_uint32(env, argv[1], &rows) != napi_ok || napi_get_value_uint32(env, argv[2], &cols) != napi_ok ||
      napi_get_value_uint32(env, argv[3], &tileRows) != napi_ok ||
      napi_get_value_uint32(env, argv[4], &tileCols) != napi_ok ||
      napi_get_value_double(env, argv[5], &floor) != napi_ok ||
      napi_get_value_string_utf8(env, argv[6], ruleName, sizeof ruleName, &ruleLength) != napi_ok ||
      !typedArray(env, argv[7], napi_uint8_array, &q, &qLen) ||
      !typedArray(env, argv[8], napi_float32_array, &scales, &sLen)) {
    throwError(env,
               "quantizeE4M3Tiles: expected (x: Float32Array, rows, cols, tileRows, tileCols, floor, rule, q: "
               "Uint8Array, scales: Float32Array)");
    return nullptr;
  }
  const uint64_t n = uint64_t(rows) * cols;
  const uint64_t rb = tileRows ? (uint64_t(rows) + tileRows - 1) / tileRows : 0;
  const uint64_t cb = tileCols ? (uint64_t(cols) + tileCols - 1) / tileCols : 0;
  const std::string ruleText(ruleName, ruleLength);
  if (ruleText != "weight" && ruleText != "activation") {
    throwError(env, "quantizeE4M3Tiles: the scale rule must be 'weight' or 'activation'");
    return nullptr;
  }
  const ScaleRule rule = ruleText == "weight" ? DIVIDE_448 : TIMES_INV_448;
  if (tileRows == 0 || tileCols == 0 || wLen < n || qLen < n || sLen < rb * cb || !(floor > 0)) {
    throwError(env,
               "quantizeE4M3Tiles: arrays shorter than rows x cols (scales: the tile grid), or tiles or floor not "
               "positive");
    return nullptr;
  }
  if (!cpuHasAvx512()) {
    throwError(env, "quantizeE4M3Tiles: this CPU lacks AVX-512 (F / VL / DQ / BW)");
    return nullptr;
  }
  const float* x = static_cast<const float*>(w);
  uint8_t* codes = static_cast<uint8_t*>(q);
  float* s = static_cast<float*>(scales);
  bool finite = true;
  for (uint32_t r0 = 0; r0 < rows && finite; r0 += tileRows) {
    const uint32_t r1 = r0 + tileRows < rows ? r0 + tileRows : rows;
    float* band = s + size_t(r0 / tileRows) * cb;
    finite = tileCols == 1
                 ? quantizeBandColumns(x, r0, r1, cols, static_cast<float>(floor), rule, codes, band)
                 : quantizeBand(x, r0, r1, cols, tileCols, static_cast<float>(floor), rule, codes, band);
  }
  napi_value out;
  napi_get_boolean(env, finite, &out);
  return out;
}

}  // namespace dsv3
