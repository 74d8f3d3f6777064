// The native kernels addon: AVX-512 versions of the wasm engine's innermost loops, run on the engine's
// own shared WebAssembly memory and called from the wasm kernels through imports
// (src/cpu/gemm/native-kernels.ts). bind(view) returns the kernels bound to the memory under `view`;
// each takes byte offsets into it, as the wasm function it replaces does, plus the memory's current
// size in pages (the wasm caller passes memory.size), so a bad call throws a JavaScript error instead
// of touching memory outside the wasm heap. Each kernel gives the wasm kernel's bits (see its file).
#include "kernels.h"

#include <string>

namespace dsv3 {

bool throwError(napi_env env, const char* message) {
  napi_throw_error(env, "DSV3_NATIVE_KERNEL", message);
  return false;
}

bool readArgs(napi_env env, napi_callback_info info, uint32_t* out, size_t count, uint8_t** base) {
  napi_value argv[24];
  size_t argc = 24;
  void* data = nullptr;
  if (napi_get_cb_info(env, info, &argc, argv, nullptr, &data) != napi_ok || argc != count)
    return throwError(env, "native kernel: wrong number of arguments");
  for (size_t i = 0; i < count; i++)
    if (napi_get_value_uint32(env, argv[i], &out[i]) != napi_ok)
      return throwError(env, "native kernel: arguments must be numbers");
  *base = static_cast<uint8_t*>(data);
  return true;
}

bool readMacroCall(napi_env env, napi_callback_info info, const char* kernel, uint32_t mr, uint32_t nr,
                   uint64_t (*aPanelBytes)(uint32_t kc), uint64_t (*bPanelBytes)(uint32_t kc), MacroCall* call,
                   uint8_t** base) {
  uint32_t a[9];
  if (!readArgs(env, info, a, 9, base)) return false;
  *call = {a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7] != 0};
  const MacroCall& m = *call;
  const uint32_t pages = a[8];
  if (m.mc == 0 || m.nc == 0 || m.kc == 0) return false;
  const uint64_t aBytes = (m.mc + mr - 1) / mr * aPanelBytes(m.kc), panelsB = (m.nc + nr - 1) / nr;
  const uint64_t bBytes = panelsB * bPanelBytes(m.kc), cBytes = panelsB * nr * 4;
  const std::string name = std::string("native ") + kernel + ": ";
  if ((m.pa | m.pb | m.c | m.ldc) % 4 != 0)
    return throwError(env, (name + "operands misaligned (addresses and C's pitch must be multiples of 4 bytes)").c_str());
  if (m.ldc < cBytes) return throwError(env, (name + "C's pitch is narrower than its whole column panels").c_str());
  if (!inside(m.pa, aBytes, pages) || !inside(m.pb, bBytes, pages) ||
      !inside(m.c, uint64_t(m.mc - 1) * m.ldc + cBytes, pages))
    return throwError(env, (name + "an operand lies outside the memory").c_str());
  return true;
}

bool typedView(napi_env env, napi_value value, TypedView* out) {
  bool isTyped = false;
  napi_value buffer;
  size_t offset;
  if (napi_is_typedarray(env, value, &isTyped) != napi_ok || !isTyped ||
      napi_get_typedarray_info(env, value, &out->type, &out->length, &out->data, &buffer, &offset) != napi_ok ||
      (out->data == nullptr && out->length > 0))
    return false;
  out->base = static_cast<uint8_t*>(out->data) - offset;
  return true;
}

bool viewAndNumber(napi_env env, napi_callback_info info, TypedView* view, double* number) {
  napi_value argv[2];
  size_t argc = 2;
  return napi_get_cb_info(env, info, &argc, argv, nullptr, nullptr) == napi_ok && argc == 2 &&
         typedView(env, argv[0], view) && napi_get_value_double(env, argv[1], number) == napi_ok;
}

void addKernel(napi_env env, napi_value target, const char* name, napi_callback fn, uint8_t* base) {
  napi_value f;
  napi_create_function(env, name, NAPI_AUTO_LENGTH, fn, base, &f);
  napi_set_named_property(env, target, name, f);
}

bool cpuHasAvx512() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
         __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512bw");
}

namespace {

// Gives every kernel of `kernels` a hidden (non-enumerable) reference to `view`: a kernel holds the
// memory's raw address, so the memory must live as long as any kernel bound to it does.
bool keepMemoryAlive(napi_env env, napi_value kernels, napi_value view) {
  napi_value names;
  uint32_t count = 0;
  if (napi_get_property_names(env, kernels, &names) != napi_ok || napi_get_array_length(env, names, &count) != napi_ok)
    return throwError(env, "bind: cannot list the kernels");
  const napi_property_descriptor memory = {"memory", nullptr, nullptr, nullptr, nullptr, view, napi_default, nullptr};
  for (uint32_t i = 0; i < count; i++) {
    napi_value name, fn;
    if (napi_get_element(env, names, i, &name) != napi_ok || napi_get_property(env, kernels, name, &fn) != napi_ok ||
        napi_define_properties(env, fn, 1, &memory) != napi_ok)
      return throwError(env, "bind: cannot tie a kernel to its memory");
  }
  return true;
}

// bind(view): the kernels bound to the memory under `view` (a typed array over a shared wasm memory's
// buffer, whose address never changes: a shared memory grows in place).
napi_value Bind(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  size_t argc = 1;
  TypedView view;
  if (napi_get_cb_info(env, info, &argc, argv, nullptr, nullptr) != napi_ok || argc != 1 ||
      !typedView(env, argv[0], &view) || view.data == nullptr) {
    throwError(env, "bind: expected a typed array over the wasm memory's buffer");
    return nullptr;
  }
  uint8_t* base = view.base;
  napi_value out;
  napi_create_object(env, &out);
  registerF32Macro(env, out, base);
  registerI16Gemm(env, out, base);
  registerGemv(env, out, base);
  registerHeadScreen(env, out, base);
  if (!keepMemoryAlive(env, out, argv[0])) return nullptr;
  return out;
}

napi_value Init(napi_env env, napi_value exports) {
  napi_value supported, bind, advise, map, prefault, phase, quantize, trim;
  napi_get_boolean(env, cpuHasAvx512(), &supported);
  napi_set_named_property(env, exports, "avx512", supported);
  napi_create_function(env, "bind", NAPI_AUTO_LENGTH, Bind, nullptr, &bind);
  napi_set_named_property(env, exports, "bind", bind);
  napi_create_function(env, "adviseHugePages", NAPI_AUTO_LENGTH, AdviseHugePages, nullptr, &advise);
  napi_set_named_property(env, exports, "adviseHugePages", advise);
  napi_create_function(env, "mapFile", NAPI_AUTO_LENGTH, MapFile, nullptr, &map);
  napi_set_named_property(env, exports, "mapFile", map);
  napi_create_function(env, "prefaultPages", NAPI_AUTO_LENGTH, PrefaultPages, nullptr, &prefault);
  napi_set_named_property(env, exports, "prefaultPages", prefault);
  napi_create_function(env, "addressPhase", NAPI_AUTO_LENGTH, AddressPhase, nullptr, &phase);
  napi_set_named_property(env, exports, "addressPhase", phase);
  napi_create_function(env, "quantizeE4M3Tiles", NAPI_AUTO_LENGTH, QuantizeE4M3Tiles, nullptr, &quantize);
  napi_set_named_property(env, exports, "quantizeE4M3Tiles", quantize);
  napi_create_function(env, "trimHeap", NAPI_AUTO_LENGTH, TrimHeap, nullptr, &trim);
  napi_set_named_property(env, exports, "trimHeap", trim);
  return exports;
}

}  // namespace
}  // namespace dsv3

NAPI_MODULE_INIT() { return dsv3::Init(env, exports); }
