// The integer weight GEMM's macro-kernel (i16-gemm-kernel.ts's `macroI16`) at AVX-512 width. The i32
// sums of i16 products are exact (wrapping adds are associative, and the kernel's bound keeps them
// from wrapping), so only their order into floats matters: each output element gets the wasm kernel's
// float steps in its order — per chunk of at most FLUSH_DEPTHS depths of one scale block, the sum
// converted to f32 and C += f32(sum) · (row scale · column scale), C first zeroed when not
// accumulating (built with -ffp-contract=off: no fused multiply-add) — so the results are its bits.
#include <immintrin.h>

#include <cstdlib>

#include "kernels.h"

namespace dsv3 {
namespace {

// The wasm kernel's layouts and constants (i16-gemm-kernel.ts, DEFAULT_KERNEL's tile).
constexpr int MR = 4;
constexpr int NR = 8;
constexpr uint32_t SCALE_BLOCK = 128;
constexpr uint32_t FLUSH_DEPTHS = 64;
constexpr uint32_t A_ROW_BYTES = SCALE_BLOCK * 2;
constexpr uint32_t A_BLOCK_BYTES = MR * (4 + A_ROW_BYTES);  // one scale block of an A~ panel
constexpr uint32_t PAIR_BYTES = NR * 4;                    // one depth pair of a B~ panel
// Rows per tile: two A~ panels, so a B~ load and its lane shuffle serve 8 rows.
constexpr int TILE_ROWS = 2 * MR;

// Two depth pairs of a B~ panel's 8 columns are one 64-byte load, [pair q: c0..c7 | pair q+1: c0..c7];
// this index interleaves them as (c, q), (c, q+1) per lane pair, so one broadcast of a row's two pair
// words (q, q+1) multiplies them: lane pair c then holds column c's partial sums of even and odd pairs.
DSV3_AVX512 inline __m512i interleavePairs(__m512i b) {
  const __m512i idx = _mm512_setr_epi32(0, 8, 1, 9, 2, 10, 3, 11, 4, 12, 5, 13, 6, 14, 7, 15);
  return _mm512_permutexvar_epi32(idx, b);
}

// acc + the i16 pair products of a and b: vpdpwssd where the CPU has VNNI (as asm, so the code built for
// AVX-512 F / BW alone never holds it on a CPU without), else pmaddwd then add (the same sums).
template <bool Vnni>
DSV3_AVX512 inline __m512i dot(__m512i acc, __m512i a, __m512i b) {
  if constexpr (Vnni) {
    asm("vpdpwssd %2, %1, %0" : "+v"(acc) : "v"(a), "v"(b));
    return acc;
  }
  return _mm512_add_epi32(acc, _mm512_madd_epi16(a, b));
}

// One tile: R rows (row r in A~ panel r / MR at `a`, panels aStride bytes apart) x one B~ panel at `b`,
// kc depths; C rows ldc bytes apart. The chunk structure and float steps are the wasm tile's.
template <int R, bool Vnni>
DSV3_AVX512 void tile(const uint8_t* a, size_t aStride, const uint8_t* b, uint32_t kc, uint8_t* c, size_t ldc,
                           bool accumulate) {
  if (!accumulate)
    for (int r = 0; r < R; r++) _mm256_storeu_ps(reinterpret_cast<float*>(c + r * ldc), _mm256_setzero_ps());
  const uint8_t* hA = a;  // this scale block's A~ header (row scales), per panel at hA + panel · aStride
  const uint8_t* hB = b;  // this scale block's B~ header (column scales)
  for (uint32_t p = 0; p < kc;) {
    const uint32_t bEnd = p + SCALE_BLOCK < kc ? p + SCALE_BLOCK : kc;
    const uint32_t blockStart = p;
    const uint8_t* pairsB = hB + PAIR_BYTES;
    for (; p < bEnd;) {
      const uint32_t cEnd = p + FLUSH_DEPTHS < bEnd ? p + FLUSH_DEPTHS : bEnd;
      const uint32_t q0 = (p - blockStart) / 2, q1 = q0 + (cEnd - p + 1) / 2;  // the chunk's pairs
      __m512i acc[R];
      for (int r = 0; r < R; r++) acc[r] = _mm512_setzero_si512();
      uint32_t q = q0;
      for (; q + 2 <= q1; q += 2) {
        const __m512i bv = interleavePairs(_mm512_loadu_si512(pairsB + q * PAIR_BYTES));
        for (int r = 0; r < R; r++) {
          const uint8_t* words = hA + (r / MR) * aStride + MR * 4 + (r % MR) * A_ROW_BYTES + q * 4;
          int64_t two;
          __builtin_memcpy(&two, words, 8);
          acc[r] = dot<Vnni>(acc[r], _mm512_set1_epi64(two), bv);
        }
      }
      if (q < q1) {  // an odd pair count: the last pair alone (the odd lanes' B is zero)
        const __m512i bv = interleavePairs(_mm512_maskz_loadu_epi32(0x00ff, pairsB + q * PAIR_BYTES));
        for (int r = 0; r < R; r++) {
          const uint8_t* words = hA + (r / MR) * aStride + MR * 4 + (r % MR) * A_ROW_BYTES + q * 4;
          int32_t one;
          __builtin_memcpy(&one, words, 4);
          acc[r] = dot<Vnni>(acc[r], _mm512_set1_epi32(one), bv);
        }
      }
      // flush: column c's sum = its even + odd lanes; C += f32(sum) · (row scale · column scales)
      const __m256 sb = _mm256_loadu_ps(reinterpret_cast<const float*>(hB));
      for (int r = 0; r < R; r++) {
        const __m512i pairSums = _mm512_add_epi32(acc[r], _mm512_srli_epi64(acc[r], 32));
        const __m256 sum = _mm256_cvtepi32_ps(_mm512_maskz_cvtepi64_epi32(0xff, pairSums));
        float sa;
        __builtin_memcpy(&sa, hA + (r / MR) * aStride + (r % MR) * 4, 4);
        const __m256 scale = _mm256_mul_ps(_mm256_set1_ps(sa), sb);
        float* cr = reinterpret_cast<float*>(c + r * ldc);
        _mm256_storeu_ps(cr, _mm256_add_ps(_mm256_loadu_ps(cr), _mm256_mul_ps(sum, scale)));
      }
      p = cEnd;
    }
    hA += A_BLOCK_BYTES;
    hB = pairsB + ((bEnd - blockStart + 1) / 2) * PAIR_BYTES;
  }
}

using TileFn = void (*)(const uint8_t*, size_t, const uint8_t*, uint32_t, uint8_t*, size_t, bool);

template <bool Vnni>
TileFn tileFor(int rows) {
  switch (rows) {
    case 1: return tile<1, Vnni>;
    case 2: return tile<2, Vnni>;
    case 3: return tile<3, Vnni>;
    case 4: return tile<4, Vnni>;
    case 5: return tile<5, Vnni>;
    case 6: return tile<6, Vnni>;
    case 7: return tile<7, Vnni>;
    default: return tile<8, Vnni>;
  }
}

// A~ / B~ panel bytes for kc depths (i16-gemm-kernel.ts's i16APanelBytes / i16PanelBytes).
uint64_t aPanelBytes(uint32_t kc) { return uint64_t((kc + SCALE_BLOCK - 1) / SCALE_BLOCK) * A_BLOCK_BYTES; }
uint64_t bPanelBytes(uint32_t kc) { return uint64_t((kc + SCALE_BLOCK - 1) / SCALE_BLOCK + (kc + 1) / 2) * NR * 4; }

// C[0:mc, 0:ceil(nc/NR)*NR] (+)= A~ · B~ over kc depths: per B~ panel, tiles of 8 rows, then the rest.
template <bool Vnni>
void i16Macro(uint8_t* base, uint32_t mc, uint32_t nc, uint32_t kc, uint32_t pa, uint32_t pb, uint32_t c,
              uint32_t ldc, bool accumulate) {
  const size_t aStride = aPanelBytes(kc), bStride = bPanelBytes(kc);
  const size_t panelsB = (nc + NR - 1) / NR;
  for (size_t j = 0; j < panelsB; j++) {
    const uint8_t* b = base + pb + j * bStride;
    uint8_t* cj = base + c + j * NR * 4;
    size_t i = 0;
    for (; i + TILE_ROWS <= mc; i += TILE_ROWS)
      tile<TILE_ROWS, Vnni>(base + pa + (i / MR) * aStride, aStride, b, kc, cj + i * ldc, ldc, accumulate);
    if (i < mc)
      tileFor<Vnni>(int(mc - i))(base + pa + (i / MR) * aStride, aStride, b, kc, cj + i * ldc, ldc, accumulate);
  }
}

// Whether to use vpdpwssd: the CPU has VNNI and DSV3_NATIVE_NO_VNNI is unset (it runs the pmaddwd path
// on a CPU with VNNI, to test it: the same bits).
bool useVnni() {
  __builtin_cpu_init();
  const char* off = std::getenv("DSV3_NATIVE_NO_VNNI");
  return __builtin_cpu_supports("avx512vnni") && !(off && off[0] == '1');
}

// i16Macro(mc, nc, kc, pa, pb, c, ldc, accumulate, pages): the wasm `macroI16` with memory.size appended.
napi_value I16Macro(napi_env env, napi_callback_info info) {
  static const bool vnni = useVnni();
  MacroCall m;
  uint8_t* base;
  if (readMacroCall(env, info, "i16 macro", MR, NR, aPanelBytes, bPanelBytes, &m, &base))
    (vnni ? i16Macro<true> : i16Macro<false>)(base, m.mc, m.nc, m.kc, m.pa, m.pb, m.c, m.ldc, m.accumulate);
  return nullptr;
}


// ---- packWI16_<kind> (i16-pack.ts's genPackWI16): weight rows into B~ panels -------------------------
// The same quantization step for step: per column and scale block a scale (bf16: 2^(E − 11) from the
// block's largest magnitude by its bits; FP8: the staged block scale times 2^-123), each weight w times
// the multiplier in f32, plus 1.5 · 2^23, its bits minus those of 1.5 · 2^23; 8 depths at a time
// narrowed with signed saturation (i16x8.narrow_i32x4_s), a block's last len mod 8 depths one at a time
// keeping the low 16 bits (i32.store16): the wasm kernel's bytes, non-finite weights included.

constexpr float MAGIC = 12582912.0f;  // 1.5 · 2^23
constexpr int32_t MAGIC_BITS = 0x4b400000;
constexpr uint32_t NAN_BITS = 0x7fc00000;
constexpr uint32_t W_BITS = 12;

enum class WeightKind { Bf16, Fp8 };

inline float bitsToFloat(uint32_t bits) {
  float f;
  __builtin_memcpy(&f, &bits, 4);
  return f;
}

inline uint32_t floatToBits(float f) {
  uint32_t bits;
  __builtin_memcpy(&bits, &f, 4);
  return bits;
}

// One depth's weight as f32 (bf16: its value; FP8: E4M3 as the bf16 of its value times 2^-120).
template <WeightKind K>
inline float weightAt(const uint8_t* col, uint32_t d) {
  if constexpr (K == WeightKind::Bf16) {
    uint16_t h;
    __builtin_memcpy(&h, col + 2 * d, 2);
    return bitsToFloat(uint32_t(h) << 16);
  }
  const int32_t code = int8_t(col[d]);
  return bitsToFloat(uint32_t((code << 4) & 0x87f0) << 16);
}

// Depths d .. d+7 of a column as f32, times mult, rounded (the magic constant), narrowed with signed
// saturation: 8 i16 = the column's words of pairs d/2 .. d/2 + 3.
template <WeightKind K>
DSV3_AVX512 inline __m128i quantize8(const uint8_t* col, uint32_t d, __m256 mult) {
  __m256i bits;
  if constexpr (K == WeightKind::Bf16) {
    bits = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(col + 2 * d)));
  } else {
    const __m256i code = _mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(col + d)));
    bits = _mm256_and_si256(_mm256_slli_epi32(code, 4), _mm256_set1_epi32(0x87f0));
  }
  const __m256 w = _mm256_castsi256_ps(_mm256_slli_epi32(bits, 16));
  const __m256 t = _mm256_add_ps(_mm256_mul_ps(w, mult), _mm256_set1_ps(MAGIC));
  return _mm256_cvtsepi32_epi16(_mm256_sub_epi32(_mm256_castps_si256(t), _mm256_set1_epi32(MAGIC_BITS)));
}

// Column scale and multiplier of `len` (<= 128) depths at `col` (bf16), as the wasm kernel's scaleOf.
DSV3_AVX512 inline void bf16Scale(const uint8_t* col, uint32_t len, float* scale, float* mult) {
  // the largest magnitude's bits (NaN / Inf: >= 0x7f80), 32 depths a load (the last masked: zeros)
  const __m512i magnitude = _mm512_set1_epi16(0x7fff);
  __m512i top = _mm512_setzero_si512();
  for (uint32_t d = 0; d < len; d += 32) {
    const __mmask32 m = len - d >= 32 ? ~__mmask32(0) : (__mmask32(1) << (len - d)) - 1;
    top = _mm512_max_epu16(top, _mm512_and_si512(_mm512_maskz_loadu_epi16(m, col + 2 * d), magnitude));
  }
  const __m256i t256 = _mm256_max_epu16(_mm512_castsi512_si256(top), _mm512_extracti64x4_epi64(top, 1));
  const __m128i t128 = _mm_max_epu16(_mm256_castsi256_si128(t256), _mm256_extracti128_si256(t256, 1));
  // the largest of 8 u16 as the smallest of their complements
  const uint32_t largest = ~uint32_t(_mm_cvtsi128_si32(_mm_minpos_epu16(_mm_xor_si128(t128, _mm_set1_epi16(-1))))) & 0xffffu;
  uint32_t e = largest >> 7;
  const bool nonFinite = e == 255;
  e = e > 14 ? e : 14;
  *scale = bitsToFloat(nonFinite ? NAN_BITS : (e - (W_BITS - 1)) << 23);
  *mult = bitsToFloat((254 + W_BITS - 1 - e) << 23);
}

// packWI16(src, ldw, count, kc, dst, s, lds, col0, p0): B~ panels of W's rows [0, count) from src (W's
// row col0 + r at src + r·ldw, depth p0 first), depths [0, kc); a last panel's missing columns zeros.
template <WeightKind K>
DSV3_AVX512 void packW(uint8_t* base, uint32_t src, uint32_t ldw, uint32_t count, uint32_t kc, uint32_t dst,
                       uint32_t s, uint32_t lds, uint32_t col0, uint32_t p0) {
  constexpr uint32_t eb = K == WeightKind::Bf16 ? 2 : 1;
  // Two registers' words (columns 0-3, 4-7: 4 words each, pairs q .. q+3) as pair rows q, q+1 | q+2, q+3.
  alignas(64) static const int32_t rows01[16] = {0, 4, 8, 12, 16, 20, 24, 28, 1, 5, 9, 13, 17, 21, 25, 29};
  alignas(64) static const int32_t rows23[16] = {2, 6, 10, 14, 18, 22, 26, 30, 3, 7, 11, 15, 19, 23, 27, 31};
  const __m512i idx01 = _mm512_load_si512(rows01), idx23 = _mm512_load_si512(rows23);
  uint8_t* hdr = base + dst;
  for (uint32_t r0 = 0; r0 < count; r0 += NR) {
    const uint32_t cols = count - r0 < uint32_t(NR) ? count - r0 : NR;
    for (uint32_t b0 = 0; b0 < kc; b0 += SCALE_BLOCK) {
      const uint32_t len = kc - b0 < SCALE_BLOCK ? kc - b0 : SCALE_BLOCK;
      const uint8_t* col[NR];
      float mult[NR];
      float* scales = reinterpret_cast<float*>(hdr);
      for (uint32_t c = 0; c < NR; c++) {
        col[c] = base + src + size_t(r0 + c) * ldw + size_t(b0) * eb;
        mult[c] = 0;
        if (c >= cols) {
          scales[c] = 0;
        } else if constexpr (K == WeightKind::Bf16) {
          bf16Scale(col[c], len, &scales[c], &mult[c]);
        } else {
          const float* staged = reinterpret_cast<const float*>(base + s + size_t((col0 + r0 + c) >> 7) * lds +
                                                               size_t((p0 + b0) >> 7) * 4);
          scales[c] = *staged * (0x1p-120f / 8);
          mult[c] = 0x1p120f * 8;
        }
      }
      uint8_t* pairs = hdr + PAIR_BYTES;
      const uint32_t len8 = len & ~7u;
      for (uint32_t d = 0; d < len8; d += 8) {
        __m128i v[NR];
        for (uint32_t c = 0; c < NR; c++)
          v[c] = c < cols ? quantize8<K>(col[c], d, _mm256_set1_ps(mult[c])) : _mm_setzero_si128();
        const __m512i lo = _mm512_inserti32x4(
            _mm512_inserti32x4(_mm512_inserti32x4(_mm512_castsi128_si512(v[0]), v[1], 1), v[2], 2), v[3], 3);
        const __m512i hi = _mm512_inserti32x4(
            _mm512_inserti32x4(_mm512_inserti32x4(_mm512_castsi128_si512(v[4]), v[5], 1), v[6], 2), v[7], 3);
        uint8_t* at = pairs + (d / 2) * PAIR_BYTES;
        _mm512_storeu_si512(at, _mm512_permutex2var_epi32(lo, idx01, hi));
        _mm512_storeu_si512(at + 64, _mm512_permutex2var_epi32(lo, idx23, hi));
      }
      // the last len mod 8 depths one at a time (low 16 bits kept), an odd block's padding zero
      for (uint32_t c = 0; c < NR; c++) {
        for (uint32_t d = len8; d < len; d++) {
          uint8_t* word = pairs + (d / 2) * PAIR_BYTES + c * 4 + (d & 1) * 2;
          uint16_t q = 0;
          if (c < cols) {
            const float t = weightAt<K>(col[c], d) * mult[c] + MAGIC;
            q = uint16_t(int32_t(floatToBits(t)) - MAGIC_BITS);
          }
          __builtin_memcpy(word, &q, 2);
        }
        if (len & 1) {
          const uint16_t zero = 0;
          __builtin_memcpy(pairs + (len / 2) * PAIR_BYTES + c * 4 + 2, &zero, 2);
        }
      }
      hdr = pairs + ((len + 1) / 2) * PAIR_BYTES;
    }
  }
}

// i16PackW<Kind>(src, ldw, count, kc, dst, s, lds, col0, p0, pages): the wasm packWI16_<kind> with
// memory.size appended.
template <WeightKind K>
napi_value I16PackW(napi_env env, napi_callback_info info) {
  uint32_t a[10];
  uint8_t* base;
  if (!readArgs(env, info, a, 10, &base)) return nullptr;
  const uint32_t src = a[0], ldw = a[1], count = a[2], kc = a[3], dst = a[4], s = a[5], lds = a[6], col0 = a[7],
                 p0 = a[8], pages = a[9];
  if (count == 0 || kc == 0) return nullptr;
  constexpr uint64_t eb = K == WeightKind::Bf16 ? 2 : 1;
  const uint64_t panels = (count + NR - 1) / NR;
  if (dst % 4 != 0 || (K == WeightKind::Bf16 && (src | ldw) % 2 != 0) || (K == WeightKind::Fp8 && (s | lds) % 4 != 0)) {
    throwError(env, "native i16 weight packing: operands misaligned");
    return nullptr;
  }
  const uint64_t wBytes = uint64_t(count - 1) * ldw + kc * eb;
  const uint64_t sBytes = uint64_t((col0 + count - 1) >> 7) * lds + uint64_t((p0 + kc - 1) >> 7) * 4 + 4;
  if (!inside(src, wBytes, pages) || !inside(dst, panels * bPanelBytes(kc), pages) ||
      (K == WeightKind::Fp8 && !inside(s, sBytes, pages))) {
    throwError(env, "native i16 weight packing: an operand lies outside the memory");
    return nullptr;
  }
  packW<K>(base, src, ldw, count, kc, dst, s, lds, col0, p0);
  return nullptr;
}

}  // namespace

void registerI16Gemm(napi_env env, napi_value target, uint8_t* base) {
  addKernel(env, target, "i16Macro", I16Macro, base);
  addKernel(env, target, "i16PackWBf16", I16PackW<WeightKind::Bf16>, base);
  addKernel(env, target, "i16PackWFp8", I16PackW<WeightKind::Fp8>, base);
}

}  // namespace dsv3
