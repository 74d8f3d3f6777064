// adviseHugePages(view, bytes): asks Linux to back the wasm memory under `view` with transparent huge
// pages (madvise MADV_HUGEPAGE over its first `bytes`, the memory's maximum: V8 reserves that range
// up front and a shared memory grows inside it, so pages committed later are covered too). Where THP
// is "madvise" (as on this project's VMs) V8's memory otherwise gets 4 KiB pages only: a first touch
// costs a fault a page (~20 µs each on a VM: seconds for a model's weights at load), and streaming
// weights walks the page tables for every 4 KiB. Returns whether the kernel took the advice.
#include <cerrno>

#include "kernels.h"

#if defined(__linux__)
#include <sys/mman.h>
#include <unistd.h>
#endif

namespace dsv3 {

napi_value AdviseHugePages(napi_env env, napi_callback_info info) {
  TypedView view;
  double bytes = 0;
  if (!viewAndNumber(env, info, &view, &bytes) || view.data == nullptr || !(bytes >= 0)) {
    throwError(env, "adviseHugePages: expected (a typed array over the wasm memory's buffer, its maximum bytes)");
    return nullptr;
  }
  bool advised = false;
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  // Whole 2 MiB pages inside the range only: madvise needs a page-aligned start, and a huge page
  // never spans memory outside the wasm heap.
  constexpr uintptr_t HUGE = uintptr_t(2) << 20;
  const uintptr_t base = reinterpret_cast<uintptr_t>(view.base);
  const uintptr_t start = (base + HUGE - 1) & ~(HUGE - 1);
  const uintptr_t end = (base + static_cast<uintptr_t>(bytes)) & ~(HUGE - 1);
  // ENOMEM: part of the range is not mapped (a reservation smaller than the maximum); the mapped
  // parts still took the advice.
  if (end > start) advised = madvise(reinterpret_cast<void*>(start), end - start, MADV_HUGEPAGE) == 0 || errno == ENOMEM;
#endif
  napi_value out;
  napi_get_boolean(env, advised, &out);
  return out;
}

}  // namespace dsv3
