// trimHeap(): hands the free pages of the C heap (every malloc arena: the main thread's and the worker
// threads') back to the operating system — glibc's malloc_trim(0); false elsewhere. V8's optimizing
// compiler allocates its zones there and frees them after each compile; glibc keeps the freed pages, so
// after a warm-up's compiles ~17 MiB of a model process's RSS was free heap (V3-mini, docs/benchmarks-
// sessions.md, twenty-seventh session).
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

}  // namespace dsv3
