// Shared by the native kernels' files: the Node-API argument and bounds checks, and each file's
// registration of its kernels on the object bind() returns (kernels.cc). Every address a kernel takes
// is a byte offset into one shared wasm memory whose base the registration captures.
#pragma once

#include <node_api.h>

#include <cstddef>
#include <cstdint>

#define DSV3_AVX512 __attribute__((target("avx512f,avx512vl,avx512dq,avx512bw")))

namespace dsv3 {

constexpr uint64_t WASM_PAGE = 65536;

// Throws a JavaScript Error (code DSV3_NATIVE_KERNEL); returns false for the caller to return.
bool throwError(napi_env env, const char* message);

// Reads exactly `count` arguments as uint32 (wasm i32 values: addresses past 2 GiB arrive negative)
// and the function's data pointer (the memory's base).
bool readArgs(napi_env env, napi_callback_info info, uint32_t* out, size_t count, uint8_t** base);

// Whether [at, at + bytes) lies inside a memory of `pages` 64 KiB pages.
inline bool inside(uint64_t at, uint64_t bytes, uint64_t pages) { return at + bytes <= pages * WASM_PAGE; }

// The checks a macro-kernel call (f32 or i16) passes before it touches memory: A~ and B~ of aBytes /
// bBytes at pa / pb, and C's mc rows of `cBytes` bytes each (whole column panels) at c, ldc bytes apart,
// all 4-byte aligned and inside a memory of `pages` pages; otherwise throws, naming `kernel`.
bool macroOperandsFit(napi_env env, const char* kernel, uint32_t mc, uint32_t pa, uint64_t aBytes, uint32_t pb,
                      uint64_t bBytes, uint32_t c, uint32_t ldc, uint64_t cBytes, uint32_t pages);

// A typed array's element type, length, first element's address and its buffer's base address.
struct TypedView {
  napi_typedarray_type type;
  size_t length;
  void* data;
  uint8_t* base;
};

// Reads `value` as a typed array (false, nothing thrown, when it is not one or has no storage).
bool typedView(napi_env env, napi_value value, TypedView* out);

// Adds `fn` as property `name` of `target`, with the memory's base as its data.
void addKernel(napi_env env, napi_value target, const char* name, napi_callback fn, uint8_t* base);

// Each kernel file's registration (called by bind()).
void registerF32Macro(napi_env env, napi_value target, uint8_t* base);
void registerI16Gemm(napi_env env, napi_value target, uint8_t* base);
void registerGemv(napi_env env, napi_value target, uint8_t* base);

// Whether this CPU runs the AVX-512 code (F / VL / DQ / BW).
bool cpuHasAvx512();

// Exported beside bind(): adviseHugePages(view, bytes) (huge-pages.cc) and quantizeE4M3Tiles(...)
// (fp8-quantize.cc; AVX-512 only).
napi_value AdviseHugePages(napi_env env, napi_callback_info info);
napi_value QuantizeE4M3Tiles(napi_env env, napi_callback_info info);

}  // namespace dsv3
