// addressPhase(view, unit): where the view's first byte falls within a `unit` (a power of two) of the
// address space: a caller placing a tensor where its file offset falls within a 2 MiB page needs it.
//
// mapFile(view, fd, fileOffset): maps the whole pages of a typed array over the wasm memory from an open
// file, so a weight stored as the kernels read it costs no copy and no fresh memory at load: the pages
// are the file's page cache (mmap MAP_PRIVATE | MAP_FIXED, as llama.cpp maps a GGUF); a write copies
// its page, never reaching the file. Only the pages the view covers whole, and only where the view's
// address and `fileOffset` fall at the same place in a page; the caller reads the bytes before and
// after. Returns [start, end): the mapped bytes' offsets within the view ([0, 0]: none mapped, nothing
// changed). The pages come in as they are first read; prefaultPages brings them in at once.
//
// prefaultPages(view): maps in, for reading, every whole page under the view (MADV_POPULATE_READ;
// MAP_POPULATE on a writable private mapping would copy every page): a mapped weight's faults paid at
// load, where llama.cpp's MAP_POPULATE pays them, not in the first product that streams it.
#include "kernels.h"

#if defined(__linux__)
#include <sys/mman.h>
#include <unistd.h>
#endif

namespace dsv3 {

namespace {

napi_value range(napi_env env, double start, double end) {
  napi_value out, a, b;
  napi_create_array_with_length(env, 2, &out);
  napi_create_double(env, start, &a);
  napi_create_double(env, end, &b);
  napi_set_element(env, out, 0, a);
  napi_set_element(env, out, 1, b);
  return out;
}

}  // namespace

napi_value AddressPhase(napi_env env, napi_callback_info info) {
  TypedView view;
  double unit = 0;
  if (!viewAndNumber(env, info, &view, &unit) || !(unit >= 1) || unit > 1073741824.0 ||
      (static_cast<uint64_t>(unit) & (static_cast<uint64_t>(unit) - 1)) != 0 ||
      unit != static_cast<double>(static_cast<uint64_t>(unit))) {
    throwError(env, "addressPhase: expected (a typed array, a power of two up to 2^30)");
    return nullptr;
  }
  napi_value out;
  napi_create_double(env, static_cast<double>(reinterpret_cast<uintptr_t>(view.data) % static_cast<uint64_t>(unit)),
                     &out);
  return out;
}

napi_value MapFile(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  size_t argc = 3;
  TypedView view;
  int32_t fd = -1;
  double fileOffset = -1;
  if (napi_get_cb_info(env, info, &argc, argv, nullptr, nullptr) != napi_ok || argc != 3 ||
      !typedView(env, argv[0], &view) || view.type != napi_uint8_array ||
      napi_get_value_int32(env, argv[1], &fd) != napi_ok || fd < 0 ||
      napi_get_value_double(env, argv[2], &fileOffset) != napi_ok || !(fileOffset >= 0) ||
      fileOffset != static_cast<double>(static_cast<uint64_t>(fileOffset))) {
    throwError(env, "mapFile: expected (a Uint8Array over the wasm memory, an open file descriptor, a byte offset)");
    return nullptr;
  }
#if defined(__linux__)
  const uint64_t page = static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
  const uint64_t at = reinterpret_cast<uintptr_t>(view.data);
  const uint64_t offset = static_cast<uint64_t>(fileOffset);
  if (view.length == 0 || at % page != offset % page) return range(env, 0, 0);
  const uint64_t start = (at + page - 1) / page * page;
  const uint64_t end = (at + view.length) / page * page;
  if (end <= start) return range(env, 0, 0);
  void* want = reinterpret_cast<void*>(start);
  const size_t bytes = end - start;
  void* got =
      mmap(want, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_FIXED, fd, static_cast<off_t>(offset + (start - at)));
  if (got == want) return range(env, static_cast<double>(start - at), static_cast<double>(end - at));
  // A failed MAP_FIXED may have unmapped the range already (e.g. ENOMEM past vm.max_map_count): put
  // fresh anonymous memory back, so the caller reads the bytes into the memory as before.
  if (mmap(want, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) != want) {
    throwError(env, "mapFile: mapping the file failed and the memory could not be restored");
    return nullptr;
  }
#endif
  return range(env, 0, 0);
}

napi_value PrefaultPages(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  size_t argc = 1;
  TypedView view;
  if (napi_get_cb_info(env, info, &argc, argv, nullptr, nullptr) != napi_ok || argc != 1 ||
      !typedView(env, argv[0], &view) || view.type != napi_uint8_array) {
    throwError(env, "prefaultPages: expected (a Uint8Array over the wasm memory)");
    return nullptr;
  }
#if defined(__linux__)
  const uint64_t page = static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
  const uint64_t at = reinterpret_cast<uintptr_t>(view.data);
  const uint64_t start = (at + page - 1) / page * page;
  const uint64_t end = (at + view.length) / page * page;
  if (end <= start) return nullptr;
#if defined(MADV_POPULATE_READ)
  if (madvise(reinterpret_cast<void*>(start), end - start, MADV_POPULATE_READ) == 0) return nullptr;
#endif
  // (a kernel before 5.14) a read of every page faults it in, read-only, just the same
  const volatile uint8_t* p = reinterpret_cast<const volatile uint8_t*>(start);
  for (uint64_t i = 0; i < end - start; i += page) (void)p[i];
#endif
  return nullptr;
}

}  // namespace dsv3
