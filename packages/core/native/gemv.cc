// The bf16 and FP8 GEMV kernels (gemv-kernel.ts's gemv_bf16 / gemv_fp8: decode's weight products) at
// AVX-512 width, where decoding the weights is the work (f32 weights are a stream of loads the wasm
// kernel keeps up with: a native gemv_f32 measured ~12% slower from memory, so it stays wasm).
//
// Each output gets the wasm kernel's operations in its order, so its bits: the wasm kernel keeps per = 8 /
// MB four-lane accumulators per x row (MB = 4, 2, 1 x rows at a time) and adds chunk c (4 consecutive
// elements of the staged x, against the weights decoded in the same order) into accumulator c % per along
// the unrolled trips, restarting at accumulator 0 at each single load after them (and FP8's lone 8-block);
// the elements left go one by one into a scalar; at the end the accumulators are added in order, the lanes
// as (l0 + l1) + (l2 + l3), then the scalar (FP8: then times 2^e, times 2^t). Here one 512-bit vector holds
// 4 chunks, so 1 (per = 4) or 2 (per = 8) registers hold the same accumulators lane for lane; per = 2 adds
// a vector's two halves in turn. Multiply-add is fused exactly where the wasm kernel's relaxed madd is (V8
// emits an FMA on x64); otherwise products are rounded, then added (-ffp-contract=off).

// GCC 12's AVX-512 headers warn that their own _mm512_undefined_* placeholders "may be used
// uninitialized" wherever a shuffle or shift is inlined; they are placeholders by design.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <cstring>

#include "kernels.h"

namespace dsv3 {
namespace {

enum class Kind { BF16, FP8 };

constexpr int FP8_BLOCK = 128;
constexpr uint32_t E4M3_MASK = 0x87f00000u;  // sign, E4M3's exponent and mantissa, placed in an f32

template <Kind K>
constexpr int elemBytes() {
  return K == Kind::BF16 ? 2 : 1;
}
// Elements one wasm v128 load yields (a "single load" after the unrolled trips).
template <Kind K>
constexpr int perLoad() {
  return K == Kind::BF16 ? 8 : 16;
}
// The wasm kernel's unrolled trip for MB x rows, in elements (gemv-kernel.ts `span`).
template <Kind K, int MB>
constexpr int tripElems() {
  constexpr int per = 8 / MB;
  constexpr int unroll = K == Kind::BF16 ? (per / 2 > 1 ? per / 2 : 1) : (per / 4 > 1 ? per / 4 : 1);
  return unroll * perLoad<K>();
}

// Staged position p of a 16-element block holds element src16[p] (bf16: per 8-block [0 2 4 6 1 3 5 7];
// FP8: 8b + 4h + q <- 4q + 2h + b, see gemv-kernel.ts's header).
constexpr int srcBf16(int p) { return (p & ~7) + ((p & 7) < 4 ? 2 * (p & 3) : 2 * (p & 3) + 1); }
constexpr int srcFp8(int p) { return 4 * (p & 3) + 2 * ((p >> 2) & 1) + (p >> 3); }

// E4M3 byte -> its value times 2^-120 as f32 bits (the wasm decode: sign, then exponent and mantissa).
inline float e4m3(uint8_t b) {
  const uint32_t bits = (uint32_t(b & 0x7f) << 20) | (uint32_t(b & 0x80) << 24);
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}
inline float bf16(uint16_t h) {
  const uint32_t bits = uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

// One weight element (natural index i of the row) as the wasm kernel decodes it.
template <Kind K>
inline float weightAt(const uint8_t* row, size_t i) {
  if constexpr (K == Kind::BF16) {
    uint16_t h;
    std::memcpy(&h, row + 2 * i, 2);
    return bf16(h);
  } else {
    return e4m3(row[i]);
  }
}

// 16 weights from element `at` of the row, in the staged x's order.
template <Kind K>
DSV3_AVX512 inline __m512 weights16(const uint8_t* row, size_t at) {
  if constexpr (K == Kind::BF16) {
    // Each 8-block's words into the staged order (a shuffle inside each 128-bit lane), then widened:
    // dword p = bf16 << 16.
    const __m256i w = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + 2 * at));
    const __m256i idx = _mm256_setr_epi8(0, 1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7, 10, 11, 14, 15,  //
                                         0, 1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7, 10, 11, 14, 15);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_shuffle_epi8(w, idx)), 16));
  } else {
    // The 16 bytes in every 128-bit lane; each lane's shuffle puts its 4 staged bytes on top of their
    // dwords (b << 24), then (arithmetic >> 4) & 0x87f00000 is sign | (b & 0x7f) << 20.
    const __m512i w = _mm512_broadcast_i32x4(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + at)));
    constexpr char Z = char(0x80);
#define DSV3_FP8_LANE(L)                                                                                        \
  char(srcFp8(4 * (L) + 3)), Z, Z, Z, char(srcFp8(4 * (L) + 2)), Z, Z, Z, char(srcFp8(4 * (L) + 1)), Z, Z, Z, \
      char(srcFp8(4 * (L))), Z, Z, Z
    const __m512i idx = _mm512_set_epi8(DSV3_FP8_LANE(3), DSV3_FP8_LANE(2), DSV3_FP8_LANE(1), DSV3_FP8_LANE(0));
#undef DSV3_FP8_LANE
    const __m512i top = _mm512_shuffle_epi8(w, idx);
    return _mm512_castsi512_ps(_mm512_and_si512(_mm512_srai_epi32(top, 4), _mm512_set1_epi32(int(E4M3_MASK))));
  }
}

// `count` (<= 16) weights from element `at`, staged in the order of `src` (a tail's vector: rare, scalar).
template <Kind K>
DSV3_AVX512 inline __m512 weightsStaged(const uint8_t* row, size_t at, int count, int (*src)(int)) {
  alignas(64) float w[16] = {};
  for (int p = 0; p < count; p++) w[p] = weightAt<K>(row, at + src(p));
  return _mm512_load_ps(w);
}
int bf16Order(int p) { return srcBf16(p); }
int fp8Order(int p) { return srcFp8(p); }

// acc (+)= x · w on the lanes in `mask`: fused where the wasm kernel's madd is, else rounded then added.
template <bool Fma>
DSV3_AVX512 inline __m512 madd(__m512 acc, __mmask16 mask, __m512 x, __m512 w) {
  if constexpr (Fma) return _mm512_mask3_fmadd_ps(x, w, acc, mask);
  return _mm512_mask_add_ps(acc, mask, acc, _mm512_mul_ps(x, w));
}

// The upper 8 lanes moved down (per = 2: a vector's second pair of chunks).
DSV3_AVX512 inline __m512 upper8(__m512 v) { return _mm512_shuffle_f32x4(v, v, _MM_SHUFFLE(3, 2, 3, 2)); }

// The accumulators' sum in the wasm kernel's order: acc0 + acc1 + ... (4 lanes each, chunks of the
// registers in turn), then (l0 + l1) + (l2 + l3), then the scalar tail; kept in vectors, as a short
// row's (k = 256: 8 trips) epilogue costs as much as its products.
template <int per>
DSV3_AVX512 inline float orderedSum(const __m512* acc, float tail) {
  __m128 s = _mm512_castps512_ps128(acc[0]);
  s = _mm_add_ps(s, _mm512_extractf32x4_ps(acc[0], 1));
  if constexpr (per >= 4) {
    s = _mm_add_ps(s, _mm512_extractf32x4_ps(acc[0], 2));
    s = _mm_add_ps(s, _mm512_extractf32x4_ps(acc[0], 3));
  }
  if constexpr (per == 8) {
    s = _mm_add_ps(s, _mm512_castps512_ps128(acc[1]));
    s = _mm_add_ps(s, _mm512_extractf32x4_ps(acc[1], 1));
    s = _mm_add_ps(s, _mm512_extractf32x4_ps(acc[1], 2));
    s = _mm_add_ps(s, _mm512_extractf32x4_ps(acc[1], 3));
  }
  const __m128 pairs = _mm_add_ps(s, _mm_movehdup_ps(s));  // lanes 0 and 2: l0 + l1, l2 + l3
  return (_mm_cvtss_f32(pairs) + _mm_cvtss_f32(_mm_movehl_ps(pairs, pairs))) + tail;
}

struct Rows {
  const uint8_t* x;  // staged x (FP8: the block-scaled rows in the workspace)
  size_t ldx;        // bytes
  const uint8_t* w;  // the weight row
  size_t k;
};

// y[j] for x rows x + j * ldx (j < MB) against one weight row: the wasm kernel's sums, bit for bit.
template <Kind K, int MB, bool Fma>
DSV3_AVX512 void dot(const Rows& r, float* out) {
  constexpr int per = 8 / MB;
  constexpr int T = tripElems<K, MB>();
  constexpr int NV = per == 8 ? 2 : 1;
  const size_t k = r.k;
  __m512 acc[MB][NV];
  for (int j = 0; j < MB; j++)
    for (int v = 0; v < NV; v++) acc[j][v] = _mm512_setzero_ps();
  const float* xr[MB];
  for (int j = 0; j < MB; j++) xr[j] = reinterpret_cast<const float*>(r.x + j * r.ldx);

  // The unrolled trips: chunk c -> accumulator c % per, i.e. vector u of 16 -> acc[u % 2] (per 8),
  // acc (per 4), or its halves in turn into the low 8 lanes (per 2).
  const size_t main = k / T * T;
  size_t p = 0;
  if constexpr (per == 8) {
    for (; p < main; p += 32) {
      const __m512 w0 = weights16<K>(r.w, p), w1 = weights16<K>(r.w, p + 16);
      acc[0][0] = madd<Fma>(acc[0][0], 0xffff, _mm512_loadu_ps(xr[0] + p), w0);
      acc[0][1] = madd<Fma>(acc[0][1], 0xffff, _mm512_loadu_ps(xr[0] + p + 16), w1);
    }
  } else if constexpr (per == 4) {
    for (; p < main; p += 16) {
      const __m512 w = weights16<K>(r.w, p);
      for (int j = 0; j < MB; j++) acc[j][0] = madd<Fma>(acc[j][0], 0xffff, _mm512_loadu_ps(xr[j] + p), w);
    }
  } else {
    for (; p + 16 <= main; p += 16) {
      const __m512 w = weights16<K>(r.w, p), wHi = upper8(w);
      for (int j = 0; j < MB; j++) {
        const __m512 x = _mm512_loadu_ps(xr[j] + p);
        acc[j][0] = madd<Fma>(acc[j][0], 0x00ff, x, w);
        acc[j][0] = madd<Fma>(acc[j][0], 0x00ff, upper8(x), wHi);
      }
    }
    if (p < main) {  // a trip of 8 (bf16)
      const __m512 w = weightsStaged<K>(r.w, p, 8, bf16Order);
      for (int j = 0; j < MB; j++)
        acc[j][0] = madd<Fma>(acc[j][0], 0x00ff, _mm512_maskz_loadu_ps(0x00ff, xr[j] + p), w);
      p += 8;
    }
  }
  // Single loads (each from accumulator 0), then FP8's lone 8-block (bf16's order): the low lanes.
  if constexpr (T > perLoad<K>()) {
    constexpr int L = perLoad<K>();
    constexpr __mmask16 m = __mmask16((1u << L) - 1);
    for (; p + L <= k; p += L) {
      const __m512 w = weightsStaged<K>(r.w, p, L, K == Kind::BF16 ? bf16Order : fp8Order);
      for (int j = 0; j < MB; j++) acc[j][0] = madd<Fma>(acc[j][0], m, _mm512_maskz_loadu_ps(m, xr[j] + p), w);
    }
  }
  if constexpr (K == Kind::FP8) {
    if (p + 8 <= k) {
      const __m512 w = weightsStaged<K>(r.w, p, 8, bf16Order);
      for (int j = 0; j < MB; j++)
        acc[j][0] = madd<Fma>(acc[j][0], 0x00ff, _mm512_maskz_loadu_ps(0x00ff, xr[j] + p), w);
      p += 8;
    }
  }
  for (int j = 0; j < MB; j++) {
    float tail = 0.0f;  // natural order, rounded products (the wasm scalar tail has no madd)
    for (size_t i = p; i < k; i++) tail = tail + xr[j][i] * weightAt<K>(r.w, i);
    out[j] = orderedSum<per>(acc[j], tail);
  }
}

// 2^v as f32 (-126 <= v <= 127), as the wasm pow2.
inline float pow2(int v) {
  const uint32_t bits = uint32_t(v + 127) << 23;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

struct Args {
  uint8_t* base;
  uint32_t x, m, ldx, k, w, ldw, n0, n1, y, ldy;
  uint32_t s, lds, e, xs;  // FP8
};

// The FP8 block scales of row block n >> 7 folded into the x rows (into xs, same pitch): xs = x ·
// (s · 2^-t), t = max(0, exponent(max |s|) - 2); returns 2^e · 2^t's factors.
void rescale(const Args& a, uint32_t n, float* outScale) {
  const uint32_t kBlocks = (a.k + FP8_BLOCK - 1) / FP8_BLOCK;
  const uint8_t* sRow = a.base + a.s + size_t(n >> 7) * a.lds;
  uint32_t big = 0;
  for (uint32_t kb = 0; kb < kBlocks; kb++) {
    uint32_t bits;
    std::memcpy(&bits, sRow + 4 * kb, 4);
    bits &= 0x7fffffffu;
    if (bits > big) big = bits;
  }
  int t = int(big >> 23) - 129;
  if (t < 0) t = 0;
  outScale[0] = pow2(int(a.e));
  outScale[1] = pow2(t);
  const float down = pow2(-t);
  for (uint32_t i = 0; i < a.m; i++) {
    const float* x = reinterpret_cast<const float*>(a.base + a.x + size_t(i) * a.ldx);
    float* xs = reinterpret_cast<float*>(a.base + a.xs + size_t(i) * a.ldx);
    for (uint32_t kb = 0; kb < kBlocks; kb++) {
      float sv;
      std::memcpy(&sv, sRow + 4 * kb, 4);
      const float scale = sv * down;
      const uint32_t end = (kb + 1) * FP8_BLOCK < a.k ? (kb + 1) * FP8_BLOCK : a.k;
      for (uint32_t p = kb * FP8_BLOCK; p < end; p++) xs[p] = x[p] * scale;
    }
  }
}

template <Kind K, bool Fma>
DSV3_AVX512 void gemv(const Args& a) {
  const bool fp8 = K == Kind::FP8;
  float outScale[2] = {1.0f, 1.0f};
  const uint8_t* xBase = a.base + (fp8 ? a.xs : a.x);
  for (uint32_t n = a.n0; n < a.n1; n++) {
    if constexpr (K == Kind::FP8)
      if (n == a.n0 || (n & (FP8_BLOCK - 1)) == 0) rescale(a, n, outScale);
    const uint8_t* wRow = a.base + a.w + size_t(n) * a.ldw;
    float* yCol = reinterpret_cast<float*>(a.base + a.y) + n;
    auto store = [&](uint32_t mi, const float* out, int count) {
      for (int j = 0; j < count; j++) {
        float v = out[j];
        if (fp8) v = v * outScale[0] * outScale[1];
        *reinterpret_cast<float*>(reinterpret_cast<uint8_t*>(yCol) + size_t(mi + j) * a.ldy) = v;
      }
    };
    float out[4];
    uint32_t mi = 0;
    for (; mi + 4 <= a.m; mi += 4) {
      dot<K, 4, Fma>({xBase + size_t(mi) * a.ldx, a.ldx, wRow, a.k}, out);
      store(mi, out, 4);
    }
    for (; mi + 2 <= a.m; mi += 2) {
      dot<K, 2, Fma>({xBase + size_t(mi) * a.ldx, a.ldx, wRow, a.k}, out);
      store(mi, out, 2);
    }
    for (; mi < a.m; mi++) {
      dot<K, 1, Fma>({xBase + size_t(mi) * a.ldx, a.ldx, wRow, a.k}, out);
      store(mi, out, 1);
    }
  }
}

template <Kind K>
const char* check(const Args& a, uint32_t pages) {
  constexpr uint32_t eb = elemBytes<K>();
  if ((a.x | a.ldx | a.y | a.ldy) % 4 != 0 || (a.w | a.ldw) % eb != 0 ||
      (K == Kind::FP8 && (a.s | a.lds | a.xs) % 4 != 0))
    return "native gemv: operands misaligned (x, y, scales, workspace and their pitches to 4 bytes, "
           "weights to an element)";
  if (uint64_t(a.ldx) < uint64_t(a.k) * 4 || uint64_t(a.ldw) < uint64_t(a.k) * eb)
    return "native gemv: a row pitch is shorter than a row";
  const uint64_t xBytes = uint64_t(a.m - 1) * a.ldx + uint64_t(a.k) * 4;
  const uint64_t wBytes = uint64_t(a.n1 - 1) * a.ldw + uint64_t(a.k) * eb;
  const uint64_t yBytes = uint64_t(a.m - 1) * a.ldy + uint64_t(a.n1) * 4;
  if (!inside(a.x, xBytes, pages) || !inside(a.w, wBytes, pages) || !inside(a.y, yBytes, pages))
    return "native gemv: an operand lies outside the memory";
  if constexpr (K == Kind::FP8) {
    const uint64_t sBytes = uint64_t((a.n1 - 1) >> 7) * a.lds + uint64_t((a.k + FP8_BLOCK - 1) / FP8_BLOCK) * 4;
    if (!inside(a.s, sBytes, pages) || !inside(a.xs, xBytes, pages))
      return "native gemv: the scales or the workspace lie outside the memory";
  }
  return nullptr;
}

// gemvBf16 (x, m, ldx, k, w, ldw, n0, n1, y, ldy, fma, pages), gemvFp8 (the same with s, lds,
// e, xs before fma): the wasm gemv_<kind>'s arguments, its relaxed-madd choice and memory.size.
template <Kind K>
napi_value Gemv(napi_env env, napi_callback_info info) {
  constexpr size_t own = K == Kind::FP8 ? 14 : 10;
  uint32_t v[16] = {};
  uint8_t* base;
  if (!readArgs(env, info, v, own + 2, &base)) return nullptr;
  const Args a{base, v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7], v[8], v[9], v[10], v[11], v[12], v[13]};
  const bool fma = v[own] != 0;
  const uint32_t pages = v[own + 1];
  if (a.m == 0 || a.n0 >= a.n1) return nullptr;
  if (const char* bad = check<K>(a, pages)) {
    throwError(env, bad);
    return nullptr;
  }
  if (fma)
    gemv<K, true>(a);
  else
    gemv<K, false>(a);
  return nullptr;
}

}  // namespace

void registerGemv(napi_env env, napi_value target, uint8_t* base) {
  addKernel(env, target, "gemvBf16", Gemv<Kind::BF16>, base);
  addKernel(env, target, "gemvFp8", Gemv<Kind::FP8>, base);
}

}  // namespace dsv3
