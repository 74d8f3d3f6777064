// The f32 GEMM's packing routines at AVX-512 width: sgemm-kernel.ts's packA / packB (an operand's
// panels, any strides) and weight-gemm-kernel.ts's packW_f32 / packW_bf16 / packW_fp8 (a Linear
// weight's B~ panels, widened to f32 as they are packed). Packing moves values (and for bf16 / FP8
// widens them with the wasm kernel's exact operations: bf16 as an f32's top half; E4M3 bits moved into
// an f32, then one f32 multiply by the block scale), so the panels are the wasm kernels' bits.
#include <immintrin.h>

#include <cstring>

#include "kernels.h"

namespace dsv3 {
namespace {

// E4M3 scale blocks span this many depths (weight-gemm-kernel.ts's SCALE_BLOCK).
constexpr uint32_t SCALE_BLOCK = 128;

// 4 rows of 8 depths (r[q] = row q's depths p .. p+7) as 8 depth rows of 4 values (out[i] = depth p+i).
DSV3_AVX512 inline void transpose4x8(const __m256 r[4], __m128 out[8]) {
  const __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
  const __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
  const __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xee);
  const __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xee);
  out[0] = _mm256_castps256_ps128(u0);
  out[1] = _mm256_castps256_ps128(u1);
  out[2] = _mm256_castps256_ps128(u2);
  out[3] = _mm256_castps256_ps128(u3);
  out[4] = _mm256_extractf128_ps(u0, 1);
  out[5] = _mm256_extractf128_ps(u1, 1);
  out[6] = _mm256_extractf128_ps(u2, 1);
  out[7] = _mm256_extractf128_ps(u3, 1);
}

// Where row r's depths lie and how they widen to f32: 8 consecutive depths from p (at8) or one (at1).
struct F32Rows {
  const uint8_t* base;
  size_t rowStride;
  DSV3_AVX512 __m256 at8(size_t r, size_t p) const {
    return _mm256_loadu_ps(reinterpret_cast<const float*>(base + r * rowStride) + p);
  }
  float at1(size_t r, size_t p) const {
    float v;
    std::memcpy(&v, base + r * rowStride + p * 4, 4);
    return v;
  }
};

struct Bf16Rows {
  const uint8_t* base;
  size_t rowStride;
  DSV3_AVX512 __m256 at8(size_t r, size_t p) const {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(base + r * rowStride + p * 2));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  }
  float at1(size_t r, size_t p) const {
    uint16_t h;
    std::memcpy(&h, base + r * rowStride + p * 2, 2);
    const uint32_t bits = uint32_t(h) << 16;
    float v;
    std::memcpy(&v, &bits, 4);
    return v;
  }
};

// E4M3 codes: (b & 0x7f) << 20 | (b & 0x80) << 24 as an f32 (the value times 2^-120), times the block
// scale (staged times 2^120) of depth p0 + p: the wasm packW_fp8's two operations.
struct Fp8Rows {
  const uint8_t* base;
  size_t rowStride;
  const float* scales;  // this panel's scale row
  uint32_t p0;
  float scale(size_t p) const { return scales[(p0 + p) / SCALE_BLOCK]; }
  DSV3_AVX512 __m256 at8(size_t r, size_t p) const {
    uint64_t codes;
    std::memcpy(&codes, base + r * rowStride + p, 8);
    const __m256i b = _mm256_cvtepu8_epi32(_mm_cvtsi64_si128(int64_t(codes)));
    const __m256i bits = _mm256_or_si256(_mm256_slli_epi32(_mm256_and_si256(b, _mm256_set1_epi32(0x7f)), 20),
                                         _mm256_slli_epi32(_mm256_and_si256(b, _mm256_set1_epi32(0x80)), 24));
    return _mm256_mul_ps(_mm256_castsi256_ps(bits), _mm256_set1_ps(scale(p)));
  }
  float at1(size_t r, size_t p) const {
    const uint32_t b = base[r * rowStride + p];
    const uint32_t bits = (b & 0x7f) << 20 | (b & 0x80) << 24;
    float v;
    std::memcpy(&v, &bits, 4);
    return v * scale(p);
  }
};

// One panel of R rows (rows >= valid zero-filled) from rows whose depths are contiguous: 8 depths of
// 4 rows at a time transposed, the depth tail and a ragged panel element by element. dst[p][r].
template <int R, typename Rows>
DSV3_AVX512 void packRowPanel(const Rows& rows, size_t r0, size_t valid, size_t kc, float* dst) {
  size_t p = 0;
  if (valid == size_t(R)) {
    for (; p + 8 <= kc; p += 8)
      for (int g = 0; g < R / 4; g++) {
        __m256 in[4];
        __m128 out[8];
        for (int q = 0; q < 4; q++) in[q] = rows.at8(r0 + 4 * g + q, p);
        transpose4x8(in, out);
        for (int i = 0; i < 8; i++) _mm_storeu_ps(dst + (p + i) * R + 4 * g, out[i]);
      }
  }
  for (; p < kc; p++)
    for (int r = 0; r < R; r++) dst[p * R + r] = size_t(r) < valid ? rows.at1(r0 + r, p) : 0.0f;
}

template <int R, typename Rows>
DSV3_AVX512 void packRows(const Rows& rows, size_t count, size_t kc, float* dst) {
  for (size_t r0 = 0; r0 < count; r0 += R, dst += kc * R)
    packRowPanel<R>(rows, r0, count - r0 < size_t(R) ? count - r0 : size_t(R), kc, dst);
}

// Panels whose R values at one depth are contiguous (rs = 4: A transposed, B row-major): one vector
// copy per depth, masked for a ragged panel (its rows past count read as zero).
template <int R>
DSV3_AVX512 void packCopy(const uint8_t* src, size_t cs, size_t count, size_t kc, float* dst) {
  for (size_t r0 = 0; r0 < count; r0 += R) {
    const size_t valid = count - r0 < size_t(R) ? count - r0 : size_t(R);
    const __mmask16 m = __mmask16((1u << valid) - 1);
    const float* s = reinterpret_cast<const float*>(src + r0 * 4);
    for (size_t p = 0; p < kc; p++, dst += R) {
      const float* sp = reinterpret_cast<const float*>(reinterpret_cast<const uint8_t*>(s) + p * cs);
      _mm512_mask_storeu_ps(dst, __mmask16((1u << R) - 1), _mm512_maskz_loadu_ps(m, sp));
    }
  }
}

// Any strides: element by element.
template <int R>
void packStrided(const uint8_t* src, size_t rs, size_t cs, size_t count, size_t kc, float* dst) {
  for (size_t r0 = 0; r0 < count; r0 += R, dst += kc * R)
    for (int r = 0; r < R; r++) {
      const bool has = r0 + r < count;
      for (size_t p = 0; p < kc; p++) {
        float v = 0.0f;
        if (has) std::memcpy(&v, src + (r0 + r) * rs + p * cs, 4);
        dst[p * R + r] = v;
      }
    }
}

// pack(src, rs, cs, count, kc, dst): element (r, p) at src + r*rs + p*cs; ceil(count/R) panels of kc
// rows of R floats at dst, rows >= count zero (sgemm-kernel.ts's genPack).
template <int R>
DSV3_AVX512 void pack(uint8_t* base, uint32_t src, uint32_t rs, uint32_t cs, uint32_t count, uint32_t kc,
                      uint32_t dst) {
  float* d = reinterpret_cast<float*>(base + dst);
  if (cs == 4)
    packRows<R>(F32Rows{base + src, rs}, count, kc, d);
  else if (rs == 4)
    packCopy<R>(base + src, cs, count, kc, d);
  else
    packStrided<R>(base + src, rs, cs, count, kc, d);
}

bool checkDst(napi_env env, uint64_t dst, uint64_t count, uint64_t kc, uint64_t R, uint64_t pages) {
  if (dst % 4 != 0) return throwError(env, "native f32 pack: the panels' address is misaligned");
  if (!inside(dst, (count + R - 1) / R * R * kc * 4, pages))
    return throwError(env, "native f32 pack: the panels lie outside the memory");
  return true;
}

// Whether the last element read, at src + (count-1)*rs + (kc-1)*cs, and its bytes lie inside.
bool checkSrc(napi_env env, uint64_t src, uint64_t rs, uint64_t cs, uint64_t count, uint64_t kc, uint64_t bytes,
              uint64_t pages) {
  if (!inside(src + (count - 1) * rs + (kc - 1) * cs, bytes, pages))
    return throwError(env, "native f32 pack: the operand lies outside the memory");
  return true;
}

// packA / packB(src, rs, cs, count, kc, dst, pages): the wasm pack with memory.size appended.
template <int R>
napi_value Pack(napi_env env, napi_callback_info info) {
  uint32_t a[7];
  uint8_t* base;
  if (!readArgs(env, info, a, 7, &base)) return nullptr;
  const uint32_t src = a[0], rs = a[1], cs = a[2], count = a[3], kc = a[4], dst = a[5], pages = a[6];
  if (count == 0 || kc == 0) return nullptr;
  if (!checkDst(env, dst, count, kc, R, pages) || !checkSrc(env, src, rs, cs, count, kc, 4, pages)) return nullptr;
  pack<R>(base, src, rs, cs, count, kc, dst);
  return nullptr;
}

// The weight GEMM's B~ panels are NR = 8 columns wide (W's rows).
constexpr int NR = 8;

enum class Kind { F32, Bf16, Fp8 };

// packW_<kind>(src, ldw, count, kc, dst, s, lds, col0, p0, pages): weight-gemm-kernel.ts's genPackW
// with memory.size appended. FP8: scales (f32, times 2^120) at s with row stride lds bytes; col0 is a
// multiple of NR and p0 of 128, so a panel's columns share a scale row.
template <Kind K>
napi_value PackW(napi_env env, napi_callback_info info) {
  uint32_t a[10];
  uint8_t* base;
  if (!readArgs(env, info, a, 10, &base)) return nullptr;
  const uint32_t src = a[0], ldw = a[1], count = a[2], kc = a[3], dst = a[4], s = a[5], lds = a[6], col0 = a[7],
                 p0 = a[8], pages = a[9];
  if (count == 0 || kc == 0) return nullptr;
  constexpr uint64_t eb = K == Kind::F32 ? 4 : K == Kind::Bf16 ? 2 : 1;
  if (!checkDst(env, dst, count, kc, NR, pages) || !checkSrc(env, src, ldw, eb, count, kc, eb, pages))
    return nullptr;
  float* d = reinterpret_cast<float*>(base + dst);
  if constexpr (K == Kind::F32) {
    packRows<NR>(F32Rows{base + src, ldw}, count, kc, d);
  } else if constexpr (K == Kind::Bf16) {
    packRows<NR>(Bf16Rows{base + src, ldw}, count, kc, d);
  } else {
    if (p0 % SCALE_BLOCK != 0 || col0 % NR != 0 || s % 4 != 0) {
      throwError(env, "native f32 pack: FP8 panels must start on a scale block (p0 % 128, col0 % 8, scales % 4)");
      return nullptr;
    }
    // The scale rows of columns col0 .. col0 + count - 1, each to depth p0 + kc - 1.
    const uint64_t lastRow = uint64_t(s) + uint64_t((col0 + count - 1) / SCALE_BLOCK) * lds;
    if (!inside(lastRow + uint64_t((p0 + kc - 1) / SCALE_BLOCK) * 4, 4, pages)) {
      throwError(env, "native f32 pack: the FP8 scales lie outside the memory");
      return nullptr;
    }
    for (size_t r0 = 0; r0 < count; r0 += NR, d += size_t(kc) * NR) {
      const float* scales = reinterpret_cast<const float*>(base + s + size_t((col0 + r0) / SCALE_BLOCK) * lds);
      const Fp8Rows rows{base + src, ldw, scales, p0};
      packRowPanel<NR>(rows, r0, count - r0 < NR ? count - r0 : NR, kc, d);
    }
  }
  return nullptr;
}

}  // namespace

void registerF32Pack(napi_env env, napi_value target, uint8_t* base) {
  addKernel(env, target, "f32PackA", Pack<4>, base);
  addKernel(env, target, "f32PackB", Pack<8>, base);
  addKernel(env, target, "packW_f32", PackW<Kind::F32>, base);
  addKernel(env, target, "packW_bf16", PackW<Kind::Bf16>, base);
  addKernel(env, target, "packW_fp8", PackW<Kind::Fp8>, base);
}

}  // namespace dsv3
