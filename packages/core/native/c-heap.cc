// The C heap of an inference process, through glibc's malloc (false elsewhere, nothing done):
// - trimHeap(): hands the free pages of every malloc arena (the main thread's and the worker threads')
//   back to the operating system — malloc_trim(0). V8's optimizing compiler allocates its zones there and
//   frees them after each compile; glibc keeps the freed pages, so after a warm-up's compiles ~17 MiB of a
//   model process's RSS was free heap (V3-mini, docs/benchmarks-sessions.md, twenty-seventh session).
// - capArenas(n): at most n malloc arenas from now on (mallopt M_ARENA_MAX). glibc gives threads arenas of
//   their own, up to 8 per core, each keeping the pages its thread freed: V8's compiler threads and the
//   GEMM workers each held a few MiB of them. Threads given an arena before keep it; glibc reads the cap
//   until its eighth arena, so this is called before the process starts its work.
#include "kernels.h"

#if defined(__GLIBC__)
#include <malloc.h>
#endif

namespace dsv3 {

napi_value TrimHeap(napi_env env, napi_callback_info) {
  bool trimmed = false;
#if defined(__GLIBC__)
  malloc_trim(0);
  trimmed = true;
#endif
  napi_value out;
  napi_get_boolean(env, trimmed, &out);
  return out;
}

napi_value CapArenas(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  napi_get_cb_info(env, info, &argc, argv, nullptr, nullptr);
  int32_t n = 0;
  if (argc < 1 || napi_get_value_int32(env, argv[0], &n) != napi_ok || n < 1) {
    napi_throw_range_error(env, nullptr, "capArenas(n): n must be an integer >= 1");
    return nullptr;
  }
  bool capped = false;
#if defined(__GLIBC__)
  capped = mallopt(M_ARENA_MAX, n) == 1;
#endif
  napi_value out;
  napi_get_boolean(env, capped, &out);
  return out;
}

}  // namespace dsv3
