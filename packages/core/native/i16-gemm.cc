// The integer weight GEMM's macro-kernel (i16-gemm-kernel.ts's `macroI16`) at AVX-512 width. The i32
// sums of i16 products are exact (wrapping adds are associative, and the kernel's bound keeps them
// from wrapping), so only their order into floats matters: each output element gets the wasm kernel's
// float steps in its order — per chunk of at most FLUSH_DEPTHS depths of one scale block, the sum
// converted to f32 and C += f32(sum) · (row scale · column scale), C first zeroed when not
// accumulating (built with -ffp-contract=off: no fused multiply-add) — so the results are its bits.
#include <immintrin.h>

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

bool cpuHasVnni() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512vnni");
}

// i16Macro(mc, nc, kc, pa, pb, c, ldc, accumulate, pages): the wasm `macroI16` with memory.size appended.
napi_value I16Macro(napi_env env, napi_callback_info info) {
  static const bool vnni = cpuHasVnni();
  uint32_t a[9];
  uint8_t* base;
  if (!readArgs(env, info, a, 9, &base)) return nullptr;
  const uint32_t mc = a[0], nc = a[1], kc = a[2], pa = a[3], pb = a[4], c = a[5], ldc = a[6], pages = a[8];
  if (mc == 0 || nc == 0 || kc == 0) return nullptr;
  const uint64_t panelsA = (mc + MR - 1) / MR, panelsB = (nc + NR - 1) / NR;
  if ((pa | pb | c | ldc) % 4 != 0) {
    throwError(env, "native i16 macro: operands misaligned (addresses and C's pitch must be multiples of 4 bytes)");
    return nullptr;
  }
  if (uint64_t(ldc) < panelsB * NR * 4) {
    throwError(env, "native i16 macro: C's pitch is narrower than its whole column panels");
    return nullptr;
  }
  const uint64_t cBytes = uint64_t(mc - 1) * ldc + panelsB * NR * 4;
  if (!inside(pa, panelsA * aPanelBytes(kc), pages) || !inside(pb, panelsB * bPanelBytes(kc), pages) ||
      !inside(c, cBytes, pages)) {
    throwError(env, "native i16 macro: an operand lies outside the memory");
    return nullptr;
  }
  (vnni ? i16Macro<true> : i16Macro<false>)(base, mc, nc, kc, pa, pb, c, ldc, a[7] != 0);
  return nullptr;
}

}  // namespace

void registerI16Gemm(napi_env env, napi_value target, uint8_t* base) {
  addKernel(env, target, "i16Macro", I16Macro, base);
}

}  // namespace dsv3
