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

// A macro-kernel call's arguments (f32Macro / i16Macro, as the wasm `macro` / `macroI16` take them).
struct MacroCall {
  uint32_t mc, nc, kc, pa, pb, c, ldc;
  bool accumulate;
};

// Reads a macro-kernel call (mc, nc, kc, pa, pb, c, ldc, accumulate, pages) and the memory's base, and
// checks its operands before anything touches memory: A~ in panels of `mr` rows, aPanelBytes(kc) each, at
// pa; B~ in panels of `nr` columns, bPanelBytes(kc) each, at pb; C's mc rows of whole nr-column panels at
// c, ldc bytes apart; all 4-byte aligned and inside the memory. False when there is nothing to run: an
// empty product, or a bad call (a JavaScript error thrown, naming `kernel`).
bool readMacroCall(napi_env env, napi_callback_info info, const char* kernel, uint32_t mr, uint32_t nr,
                   uint64_t (*aPanelBytes)(uint32_t kc), uint64_t (*bPanelBytes)(uint32_t kc), MacroCall* call,
                   uint8_t** base);

// A typed array's element type, length, first element's address and its buffer's base address.
struct TypedView {
  napi_typedarray_type type;
  size_t length;
  void* data;
  uint8_t* base;
};

// Reads `value` as a typed array (false, nothing thrown, when it is not one or has no storage).
bool typedView(napi_env env, napi_value value, TypedView* out);

// Reads a call's arguments as exactly (a typed array, a number) (false, nothing thrown, when not).
bool viewAndNumber(napi_env env, napi_callback_info info, TypedView* view, double* number);

// Adds `fn` as property `name` of `target`, with the memory's base as its data.
void addKernel(napi_env env, napi_value target, const char* name, napi_callback fn, uint8_t* base);

// Each kernel file's registration (called by bind()).
void registerF32Macro(napi_env env, napi_value target, uint8_t* base);
void registerI16Gemm(napi_env env, napi_value target, uint8_t* base);
void registerGemv(napi_env env, napi_value target, uint8_t* base);
void registerHeadScreen(napi_env env, napi_value target, uint8_t* base);

// Whether this CPU runs the AVX-512 code (F / VL / DQ / BW).
bool cpuHasAvx512();

// Exported beside bind(): adviseHugePages(view, bytes) (huge-pages.cc), mapFile(view, fd, fileOffset),
// prefaultPages(view) and addressPhase(view, unit) (map-file.cc), quantizeE4M3Tiles(...)
// (fp8-quantize.cc; AVX-512 only) and trimHeap() (trim-heap.cc).
napi_value AdviseHugePages(napi_env env, napi_callback_info info);
napi_value MapFile(napi_env env, napi_callback_info info);
napi_value PrefaultPages(napi_env env, napi_callback_info info);
napi_value AddressPhase(napi_env env, napi_callback_info info);
napi_value QuantizeE4M3Tiles(napi_env env, napi_callback_info info);
napi_value TrimHeap(napi_env env, napi_callback_info info);

}  // namespace dsv3
