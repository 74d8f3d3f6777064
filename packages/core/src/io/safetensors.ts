// safetensors: read (streamed, positioned reads) and write (atomic) on raw host arrays.
//
// Format: an 8-byte little-endian u64 N, then N bytes of UTF-8 JSON
//   {"__metadata__": {str: str}, name: {"dtype", "shape", "data_offsets": [begin, end]}, ...}
// padded with spaces, then the data section; offsets are relative to the data section.
//
// Independent of the Tensor class: tensors here are `{ dtype, shape, data }` with `data` in the dtype's
// host storage array (see dtype.ts). Dtypes core has no storage for (I64, I16, I8, U16, U64) are readable
// as raw bytes (`getRaw`) and convertible to i32 with a range check (`getI32` / `rawToI32`).
//
// Node-only code: file paths need `node:fs` / `node:path`, which are fetched at call time through
// `process.getBuiltinModule` (Node >= 20.16) instead of a static import, so this module (and the rest of
// core) bundles for browsers unchanged. In a browser, pass the file's bytes as a Uint8Array / ArrayBuffer;
// calling a path-based function there throws a SafetensorsError saying so.
//
// Writing mirrors the Python `safetensors` library byte for byte: tensors are laid out sorted by dtype
// (widest/"largest" dtype first, in the library's dtype order) and then by name, the header JSON is
// compact, `__metadata__` comes first (its keys sorted here, for determinism), and the header is padded
// with spaces so the data section starts 8-byte aligned. Every tensor is then aligned to its element size.
//
// The code: dtype tables, types and the error in safetensors-format.ts, reading in safetensors-read.ts,
// writing in safetensors-write.ts, node:fs access, byte sources and the atomic writer in files.ts.
export * from './safetensors-format';
export { rawToI32, readSafetensors, SafetensorsFile } from './safetensors-read';
export { prepareTensor, serializeSafetensors, writeSafetensors } from './safetensors-write';
export { nodeFs, nodePath, writeFileAtomic } from './files';
