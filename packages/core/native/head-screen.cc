// The screened greedy head (src/cpu/gemm/head-screen.ts): the LM head's rows quantized to 8 bits once,
// then, at each greedy decode step, approximate logits from integer dot products read at one byte a
// weight, and the rows whose approximation cannot rule them out. The caller computes those rows' logits
// exactly, so the step's token is the full product's argmax; the screen only decides which rows to skip.
//
// Packed layout: 16-row blocks; within one, k / 4 groups of 64 bytes, each the 16 rows' 4 consecutive
// weights (row-major inside the group), stored as q + 128 (u8, q in [-127, 127]). One 512-bit load then
// feeds VNNI's vpdpbusd (u8 weights x s8 activations, 4 products into each row's i32 lane) with the 4
// activations broadcast, so no horizontal sums. Every dot product is an exact integer (|sum| < 2^23), so
// the VNNI path and the widening AVX-512BW path give the same bits: for each 128-element block, the i32
// dot minus 128 x the block's activation sum, converted to f32 (exact), times the block's activation
// scale (rounded), added to the row's f32 sum (rounded); at the end times the row's weight scale.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "kernels.h"

namespace dsv3 {
namespace {

constexpr uint32_t ROWS = 16;    // rows of a packed block
constexpr uint32_t KBLOCK = 128;  // activations sharing one scale
constexpr uint32_t GROUP = 64;    // bytes of one group: 16 rows x 4 weights

bool hasVnni() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512vnni");
}
const bool VNNI = hasVnni();

// A float at least `v` (the bounds must never round down).
float roundUp(double v) {
  float f = static_cast<float>(v);
  return static_cast<double>(f) < v ? std::nextafter(f, INFINITY) : f;
}

// Rows [r0, r1) of the bf16 head [n, k] at `src` (pitch k) into the packed blocks at `dst`, with each
// row's scale (sw), and its two bound terms: a = ||w - w~|| + max(2^-12, k 2^-23) ||w||, b = ||w~|| (w~ = q sw, the
// quantized row's value), both rounded up. The sums are of exact terms in f64 (w, q and sw widened: q sw
// and w - q sw are exact there), each square rounded at 2^-53: the 2^-20 factor covers them. Rows past n
// (a last block's padding) are zero weights. 16 weights a step (k is a multiple of 128).
// 16 bf16 values widened to f32.
DSV3_AVX512 inline __m512 loadBf16(const uint16_t* p) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)p)), 16));
}

DSV3_AVX512 void pack(const uint16_t* src, uint32_t n, uint32_t k, uint8_t* dst, float* sw, float* a, float* b,
                      uint32_t r0, uint32_t r1) {
  const uint32_t groups = k / 4;
  // the f32 roundings' share of the bound, relative to ||x|| ||w||: a k-term f32 dot product is off by at
  // most k 2^-24 of it whatever the summation order (the full product's kernel), the screen's own sum by far
  // less; twice that, and never under 2^-12
  const double margin = std::max(0x1p-12, double(k) * 0x1p-23);
  for (uint32_t r = r0; r < r1; r++) {
    uint8_t* block = dst + size_t(r / ROWS) * groups * GROUP + (r % ROWS) * 4;
    if (r >= n) {
      for (uint32_t g = 0; g < groups; g++) std::memset(block + size_t(g) * GROUP, 128, 4);
      sw[r] = a[r] = b[r] = 0;
      continue;
    }
    const uint16_t* row = src + size_t(r) * k;
    __m512 amax = _mm512_setzero_ps();
    for (uint32_t c = 0; c < k; c += 16) amax = _mm512_max_ps(amax, _mm512_abs_ps(loadBf16(row + c)));
    const float s = _mm512_reduce_max_ps(amax) / 127.0f;
    const __m512 sv = _mm512_set1_ps(s), lim = _mm512_set1_ps(127.0f), nlim = _mm512_set1_ps(-127.0f);
    const __m512d sd = _mm512_set1_pd(double(s));
    __m512d err = _mm512_setzero_pd(), norm = err, normQ = err;
    for (uint32_t c = 0; c < k; c += 16) {
      const __m512 w = loadBf16(row + c);
      const __m512 q = s > 0 ? _mm512_min_ps(lim, _mm512_max_ps(nlim, _mm512_roundscale_ps(_mm512_div_ps(w, sv),
                                                                                          _MM_FROUND_TO_NEAREST_INT |
                                                                                              _MM_FROUND_NO_EXC)))
                             : _mm512_setzero_ps();
      for (int h = 0; h < 2; h++) {
        const __m256 wh = h ? _mm512_extractf32x8_ps(w, 1) : _mm512_castps512_ps256(w);
        const __m256 qh = h ? _mm512_extractf32x8_ps(q, 1) : _mm512_castps512_ps256(q);
        const __m512d wd = _mm512_cvtps_pd(wh), wq = _mm512_mul_pd(_mm512_cvtps_pd(qh), sd);
        const __m512d d = _mm512_sub_pd(wd, wq);
        err = _mm512_fmadd_pd(d, d, err);
        norm = _mm512_fmadd_pd(wd, wd, norm);
        normQ = _mm512_fmadd_pd(wq, wq, normQ);
      }
      const __m128i bytes = _mm512_cvtepi32_epi8(_mm512_add_epi32(_mm512_cvtps_epi32(q), _mm512_set1_epi32(128)));
      uint32_t four[4];
      _mm_storeu_si128(reinterpret_cast<__m128i*>(four), bytes);
      for (uint32_t j = 0; j < 4; j++) std::memcpy(block + size_t(c / 4 + j) * GROUP, &four[j], 4);
    }
    sw[r] = s;
    const double e = std::sqrt(_mm512_reduce_add_pd(err)), wn = std::sqrt(_mm512_reduce_add_pd(norm));
    a[r] = roundUp((e + margin * wn) * (1 + 0x1p-20));
    b[r] = roundUp(std::sqrt(_mm512_reduce_add_pd(normQ)) * (1 + 0x1p-20));
  }
}

// One block's 16 i32 dots (minus the offset's 128 x sum), scaled into the rows' f32 sums.
DSV3_AVX512 inline __m512 addBlock(__m512 sum, __m512i dot, int32_t xsum, float sx) {
  const __m512i exact = _mm512_sub_epi32(dot, _mm512_set1_epi32(128 * xsum));
  return _mm512_add_ps(sum, _mm512_mul_ps(_mm512_cvtepi32_ps(exact), _mm512_set1_ps(sx)));
}

// Approximate logits of packed blocks [rb0, rb1) into y (16 a block): VNNI, one block at a time read
// straight through (one stream), its groups spread over four accumulators (integers: any order is exact).
__attribute__((target("avx512f,avx512vl,avx512dq,avx512bw,avx512vnni"))) void screenVnni(
    const uint8_t* packed, uint32_t k, const int8_t* xq, const float* sx, const int32_t* xsum, const float* sw,
    float* y, uint32_t rb0, uint32_t rb1) {
  const size_t blockBytes = size_t(k) * ROWS;
  const uint32_t kb = k / KBLOCK;
  for (uint32_t rb = rb0; rb < rb1; rb++) {
    const uint8_t* g = packed + rb * blockBytes;
    __m512 s = _mm512_setzero_ps();
    for (uint32_t b = 0; b < kb; b++) {
      const __m512i z = _mm512_setzero_si512();
      __m512i d0 = z, d1 = z, d2 = z, d3 = z;
      const int32_t* x = reinterpret_cast<const int32_t*>(xq + b * KBLOCK);
      for (uint32_t j = 0; j < KBLOCK / 4; j += 4, g += 4 * GROUP) {
        d0 = _mm512_add_epi32(d0, _mm512_dpbusd_epi32(z, _mm512_loadu_si512(g), _mm512_set1_epi32(x[j])));
        d1 = _mm512_add_epi32(d1, _mm512_dpbusd_epi32(z, _mm512_loadu_si512(g + GROUP), _mm512_set1_epi32(x[j + 1])));
        d2 = _mm512_add_epi32(d2, _mm512_dpbusd_epi32(z, _mm512_loadu_si512(g + 2 * GROUP), _mm512_set1_epi32(x[j + 2])));
        d3 = _mm512_add_epi32(d3, _mm512_dpbusd_epi32(z, _mm512_loadu_si512(g + 3 * GROUP), _mm512_set1_epi32(x[j + 3])));
      }
      s = addBlock(s, _mm512_add_epi32(_mm512_add_epi32(d0, d1), _mm512_add_epi32(d2, d3)), xsum[b], sx[b]);
    }
    _mm512_storeu_ps(y + rb * ROWS, _mm512_mul_ps(s, _mm512_loadu_ps(sw + rb * ROWS)));
  }
}

// The same without VNNI: the weights widened to i16 and multiplied pairwise (vpmaddwd) against the
// activations repeated (x0 x1 x2 x3) along the lanes; each row's two partial sums added at the block's end.
DSV3_AVX512 void screenBw(const uint8_t* packed, uint32_t k, const int8_t* xq, const float* sx, const int32_t* xsum,
                          const float* sw, float* y, uint32_t rb0, uint32_t rb1) {
  const size_t blockBytes = size_t(k) * ROWS;
  const uint32_t kb = k / KBLOCK;
  const __m512i evens = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
  const __m512i odds = _mm512_add_epi32(evens, _mm512_set1_epi32(1));
  for (uint32_t rb = rb0; rb < rb1; rb++) {
    const uint8_t* p = packed + rb * blockBytes;
    __m512 s = _mm512_setzero_ps();
    for (uint32_t b = 0; b < kb; b++) {
      __m512i lo = _mm512_setzero_si512(), hi = lo;  // rows 0-7 / 8-15, two partial sums a row
      const uint8_t* g = p + size_t(b) * (KBLOCK / 4) * GROUP;
      for (uint32_t j = 0; j < KBLOCK / 4; j++, g += GROUP) {
        const int8_t* x = xq + b * KBLOCK + 4 * j;
        const int x10 = int((uint32_t(uint16_t(x[1])) << 16) | uint16_t(x[0]));
        const int x32 = int((uint32_t(uint16_t(x[3])) << 16) | uint16_t(x[2]));
        const __m512i xv = _mm512_set4_epi32(x32, x10, x32, x10);
        lo = _mm512_add_epi32(lo, _mm512_madd_epi16(_mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i*)g)), xv));
        hi = _mm512_add_epi32(hi,
                              _mm512_madd_epi16(_mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i*)(g + 32))), xv));
      }
      const __m512i d =
          _mm512_add_epi32(_mm512_permutex2var_epi32(lo, evens, hi), _mm512_permutex2var_epi32(lo, odds, hi));
      s = addBlock(s, d, xsum[b], sx[b]);
    }
    _mm512_storeu_ps(y + rb * ROWS, _mm512_mul_ps(s, _mm512_loadu_ps(sw + rb * ROWS)));
  }
}

// headCandidates' two passes, 16 rows a step (the last step masked), the bound computed alike in both:
// lo ignores a NaN row (max_ps returns its second operand when one is NaN), and the test keeps any row
// not below lo, NaN included (the caller's exact pass then decides).
DSV3_AVX512 inline __m512 boundAt(__m512 nx, __m512 ndx, const float* a, const float* b, uint32_t r, __mmask16 m) {
  return _mm512_add_ps(_mm512_mul_ps(nx, _mm512_maskz_loadu_ps(m, a + r)), _mm512_mul_ps(ndx, _mm512_maskz_loadu_ps(m, b + r)));
}
inline __mmask16 maskFrom(uint32_t r, uint32_t n) {
  return n - r >= 16 ? __mmask16(0xffff) : __mmask16((1u << (n - r)) - 1);
}

DSV3_AVX512 uint32_t candidates(const float* y, const float* a, const float* b, uint32_t n, const float* params,
                                int32_t* out, uint32_t most) {
  const __m512 nx = _mm512_set1_ps(params[0]), ndx = _mm512_set1_ps(params[1]);
  __m512 lo = _mm512_set1_ps(-INFINITY);
  for (uint32_t r = 0; r < n; r += 16) {
    const __mmask16 m = maskFrom(r, n);
    const __m512 v = _mm512_sub_ps(_mm512_maskz_loadu_ps(m, y + r), boundAt(nx, ndx, a, b, r, m));
    lo = _mm512_mask_max_ps(lo, m, v, lo);
  }
  const __m512 top = _mm512_set1_ps(_mm512_reduce_max_ps(lo));
  __m512i idx = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
  const __m512i step = _mm512_set1_epi32(16);
  uint32_t count = 0;
  for (uint32_t r = 0; r < n; r += 16, idx = _mm512_add_epi32(idx, step)) {
    const __mmask16 m = maskFrom(r, n);
    const __m512 v = _mm512_add_ps(_mm512_maskz_loadu_ps(m, y + r), boundAt(nx, ndx, a, b, r, m));
    const __mmask16 keep = _mm512_mask_cmp_ps_mask(m, v, top, _CMP_NLT_UQ);
    if (keep == 0) continue;
    const uint32_t c = uint32_t(__builtin_popcount(keep));
    if (count + c <= most) _mm512_mask_compressstoreu_epi32(out + count, keep, idx);
    count += c;
  }
  return count;
}

// headScreenPack(src, n, k, dst, sw, a, b, r0, r1, pages): rows [r0, r1) (whole 16-row blocks) of the
// bf16 head at src into the packed blocks at dst and the per-row arrays sw, a, b (f32, one per padded row).
napi_value Pack(napi_env env, napi_callback_info info) {
  uint32_t v[10];
  uint8_t* base;
  if (!readArgs(env, info, v, 10, &base)) return nullptr;
  const uint32_t src = v[0], n = v[1], k = v[2], dst = v[3], sw = v[4], a = v[5], b = v[6], r0 = v[7], r1 = v[8],
                 pages = v[9];
  const uint32_t padded = (n + ROWS - 1) / ROWS * ROWS;
  if (k == 0 || k % KBLOCK != 0 || r0 % ROWS != 0 || r1 % ROWS != 0 || r0 > r1 || r1 > padded) {
    throwError(env, "native headScreenPack: k must be a positive multiple of 128 and the rows whole 16-row blocks");
    return nullptr;
  }
  if (src % 2 != 0 || (sw | a | b) % 4 != 0 || !inside(src, uint64_t(n) * k * 2, pages) ||
      !inside(dst, uint64_t(padded) * k, pages) || !inside(sw, padded * 4ull, pages) ||
      !inside(a, padded * 4ull, pages) || !inside(b, padded * 4ull, pages)) {
    throwError(env, "native headScreenPack: an operand is misaligned or lies outside the memory");
    return nullptr;
  }
  pack(reinterpret_cast<const uint16_t*>(base + src), n, k, base + dst, reinterpret_cast<float*>(base + sw),
       reinterpret_cast<float*>(base + a), reinterpret_cast<float*>(base + b), r0, r1);
  return nullptr;
}

// headScreen(packed, k, xq, sx, xsum, sw, y, rb0, rb1, widen, pages): approximate logits of blocks
// [rb0, rb1); widen != 0 takes the path without VNNI even where the CPU has it (the tests compare both).
napi_value Screen(napi_env env, napi_callback_info info) {
  uint32_t v[11];
  uint8_t* base;
  if (!readArgs(env, info, v, 11, &base)) return nullptr;
  const uint32_t packed = v[0], k = v[1], xq = v[2], sx = v[3], xsum = v[4], sw = v[5], y = v[6], rb0 = v[7],
                 rb1 = v[8], widen = v[9], pages = v[10];
  if (k == 0 || k % KBLOCK != 0 || rb0 > rb1) {
    throwError(env, "native headScreen: k must be a positive multiple of 128, the blocks an ascending range");
    return nullptr;
  }
  const uint64_t kb = k / KBLOCK;
  if ((sx | xsum | sw | y) % 4 != 0 || !inside(packed, uint64_t(rb1) * ROWS * k, pages) || !inside(xq, k, pages) ||
      !inside(sx, kb * 4, pages) || !inside(xsum, kb * 4, pages) || !inside(sw, uint64_t(rb1) * ROWS * 4, pages) ||
      !inside(y, uint64_t(rb1) * ROWS * 4, pages)) {
    throwError(env, "native headScreen: an operand is misaligned or lies outside the memory");
    return nullptr;
  }
  const auto run = VNNI && widen == 0 ? screenVnni : screenBw;
  run(base + packed, k, reinterpret_cast<const int8_t*>(base + xq), reinterpret_cast<const float*>(base + sx),
      reinterpret_cast<const int32_t*>(base + xsum), reinterpret_cast<const float*>(base + sw),
      reinterpret_cast<float*>(base + y), rb0, rb1);
  return nullptr;
}

// headCandidates(y, a, b, n, params, out, most, pages) -> count: with bound_r = nx a_r + ndx b_r (params:
// f32 nx, ndx), lo = max_r (y_r - bound_r); writes the rows r < n with y_r + bound_r >= lo to out (i32, at
// most `most` of them) and returns how many there are (more than `most`: the caller runs the full head).
napi_value Candidates(napi_env env, napi_callback_info info) {
  uint32_t v[8];
  uint8_t* base;
  if (!readArgs(env, info, v, 8, &base)) return nullptr;
  const uint32_t y = v[0], a = v[1], b = v[2], n = v[3], params = v[4], out = v[5], most = v[6], pages = v[7];
  if ((y | a | b | params | out) % 4 != 0 || !inside(y, n * 4ull, pages) || !inside(a, n * 4ull, pages) ||
      !inside(b, n * 4ull, pages) || !inside(params, 8, pages) || !inside(out, most * 4ull, pages)) {
    throwError(env, "native headCandidates: an operand is misaligned or lies outside the memory");
    return nullptr;
  }
  const uint32_t count = candidates(reinterpret_cast<const float*>(base + y), reinterpret_cast<const float*>(base + a),
                                    reinterpret_cast<const float*>(base + b), n,
                                    reinterpret_cast<const float*>(base + params), reinterpret_cast<int32_t*>(base + out),
                                    most);
  napi_value result;
  napi_create_uint32(env, count, &result);
  return result;
}

}  // namespace

void registerHeadScreen(napi_env env, napi_value target, uint8_t* base) {
  addKernel(env, target, "headScreenPack", Pack, base);
  addKernel(env, target, "headScreen", Screen, base);
  addKernel(env, target, "headCandidates", Candidates, base);
}

}  // namespace dsv3
