// The f32 GEMM's macro-kernel (sgemm-kernel.ts's `macro`) at AVX-512 width. Each output element gets
// the wasm kernel's operations in its order: products rounded, then added, from +0 in depth order,
// then C added when accumulating (no fused multiply-add: built with -ffp-contract=off), so the results
// are the wasm kernel's bits; only the vector width and the tile differ.
#include <immintrin.h>

#include "kernels.h"

namespace dsv3 {
namespace {

// The wasm f32 kernel's packed layouts (sgemm-kernel.ts, DEFAULT_KERNEL): A~ panels of MR rows, B~
// panels of NR columns, each kc deep ([p][r] and [p][c]).
constexpr int MR = 4;
constexpr int NR = 8;

// B~ panels p0, p0 + 1 at depth p as one vector (lanes 0-7: panel p0, 8-15: the next one).
DSV3_AVX512 inline __m512 loadPanels(const float* b0, const float* b1) {
  return _mm512_insertf32x8(_mm512_castps256_ps512(_mm256_loadu_ps(b0)), _mm256_loadu_ps(b1), 1);
}

// One tile: R rows (from A~ panels a0 = rows 0-3 and a1 = rows 4-7) x NP B~ panels (NP * 8 columns)
// starting at b, panels `bStride` floats apart. acc = Σ_p round(a · b) from +0 in p order, then
// C (+)= acc; rows past R are neither read nor written. Pairs of panels share a 16-lane vector; an odd
// last panel gets an 8-lane one (a half-masked 16-lane vector cost as much as a whole one: an odd
// count of panels, as the weight GEMM's last group of columns often has).
template <int R, int NP>
DSV3_AVX512 void tile(const float* a0, const float* a1, const float* b, size_t bStride, int kc, float* c, size_t ldc,
                      bool accumulate) {
  constexpr int NV = NP / 2;
  constexpr bool ODD = NP % 2 == 1;
  __m512 acc[R][NV > 0 ? NV : 1];
  __m256 odd[R];
  for (int r = 0; r < R; r++) {
    for (int v = 0; v < NV; v++) acc[r][v] = _mm512_setzero_ps();
    if (ODD) odd[r] = _mm256_setzero_ps();
  }
  for (int p = 0; p < kc; p++) {
    __m512 bv[NV > 0 ? NV : 1];
    for (int v = 0; v < NV; v++) {
      const float* b0 = b + (2 * v) * bStride + p * NR;
      bv[v] = loadPanels(b0, b0 + bStride);
    }
    const __m256 bo = ODD ? _mm256_loadu_ps(b + (NP - 1) * bStride + p * NR) : _mm256_setzero_ps();
    for (int r = 0; r < R; r++) {
      const float* ap = r < MR ? a0 + p * MR + r : a1 + p * MR + r - MR;
      const __m512 av = _mm512_set1_ps(*ap);
      for (int v = 0; v < NV; v++) acc[r][v] = _mm512_add_ps(acc[r][v], _mm512_mul_ps(av, bv[v]));
      if (ODD) odd[r] = _mm256_add_ps(odd[r], _mm256_mul_ps(_mm256_set1_ps(*ap), bo));
    }
  }
  for (int r = 0; r < R; r++) {
    float* cr = c + r * ldc;
    for (int v = 0; v < NV; v++) {
      __m512 x = acc[r][v];
      if (accumulate) x = _mm512_add_ps(x, _mm512_loadu_ps(cr + 16 * v));
      _mm512_storeu_ps(cr + 16 * v, x);
    }
    if (ODD) {
      __m256 x = odd[r];
      if (accumulate) x = _mm256_add_ps(x, _mm256_loadu_ps(cr + 16 * NV));
      _mm256_storeu_ps(cr + 16 * NV, x);
    }
  }
}

using TileFn = void (*)(const float*, const float*, const float*, size_t, int, float*, size_t, bool);

template <int R>
constexpr TileFn tileOf(int np) {
  return np == 1 ? tile<R, 1> : np == 2 ? tile<R, 2> : np == 3 ? tile<R, 3> : tile<R, 4>;
}

TileFn tileFor(int rows, int np) {
  switch (rows) {
    case 1: return tileOf<1>(np);
    case 2: return tileOf<2>(np);
    case 3: return tileOf<3>(np);
    case 4: return tileOf<4>(np);
    case 5: return tileOf<5>(np);
    case 6: return tileOf<6>(np);
    case 7: return tileOf<7>(np);
    default: return tileOf<8>(np);
  }
}

// C[0:mc, 0:ceil(nc/NR)*NR] (+)= A~ B~ over kc depths, C's row pitch ldc bytes: tiles of 8 rows x 4
// panels, then the ragged rows and panels.
void f32Macro(uint8_t* base, uint32_t mc, uint32_t nc, uint32_t kc, uint32_t pa, uint32_t pb, uint32_t c,
              uint32_t ldc, bool accumulate) {
  const size_t panelsB = (nc + NR - 1) / NR;
  const size_t aPanel = size_t(kc) * MR;  // floats per A~ panel
  const size_t bPanel = size_t(kc) * NR;
  const float* A = reinterpret_cast<const float*>(base + pa);
  const float* B = reinterpret_cast<const float*>(base + pb);
  float* C = reinterpret_cast<float*>(base + c);
  const size_t ldcF = ldc / 4;
  for (size_t j = 0; j < panelsB; j += 4) {
    const int np = int(panelsB - j < 4 ? panelsB - j : 4);
    const float* b = B + j * bPanel;
    float* cj = C + j * NR;
    size_t i = 0;
    for (; i + 2 * MR <= mc; i += 2 * MR) {
      const float* a0 = A + (i / MR) * aPanel;
      tileFor(8, np)(a0, a0 + aPanel, b, bPanel, int(kc), cj + i * ldcF, ldcF, accumulate);
    }
    if (i < mc) {
      const float* a0 = A + (i / MR) * aPanel;
      const int rows = int(mc - i);
      tileFor(rows, np)(a0, rows > MR ? a0 + aPanel : a0, b, bPanel, int(kc), cj + i * ldcF, ldcF, accumulate);
    }
  }
}

// f32Macro(mc, nc, kc, pa, pb, c, ldc, accumulate, pages): the wasm `macro` with memory.size appended.
napi_value F32Macro(napi_env env, napi_callback_info info) {
  MacroCall m;
  uint8_t* base;
  if (readMacroCall(
          env, info, "f32 macro", MR, NR, [](uint32_t kc) { return uint64_t(MR) * kc * 4; },
          [](uint32_t kc) { return uint64_t(NR) * kc * 4; }, &m, &base))
    f32Macro(base, m.mc, m.nc, m.kc, m.pa, m.pb, m.c, m.ldc, m.accumulate);
  return nullptr;
}

}  // namespace

void registerF32Macro(napi_env env, napi_value target, uint8_t* base) {
  addKernel(env, target, "f32Macro", F32Macro, base);
}

}  // namespace dsv3
