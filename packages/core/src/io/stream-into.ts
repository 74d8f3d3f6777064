// Streams checkpoint tensors straight into storage that already sits where it will be used (e.g. a
// resident weight in the CPU engine's memory): same-dtype tensors are read by the OS directly into the
// destination, converted ones (bf16 ↔ f32) pass through one small reusable chunk, never a whole-tensor
// host copy. Node only (positioned reads).
import { decodeBf16, encodeBf16, type DType, type StorageArray } from '../dtype.js';
import { nodeFs, nodePath } from './safetensors.js';
import type { ShardedCheckpoint } from './sharded.js';

/** Elements converted per chunk (4 MiB of f32). */
const CHUNK = 1 << 20;

/**
 * The chunk converted tensors pass through, one for every call: a fresh one per tensor comes back from
 * malloc zero-filled page by page (~2 ms each on a VM: seconds over a model's ~1,700 tensors).
 */
let chunkBuffer: Uint8Array | null = null;
const chunkBytes = (bytes: number): Uint8Array => {
  if (!chunkBuffer || chunkBuffer.length < bytes) chunkBuffer = new Uint8Array(CHUNK * 4);
  return chunkBuffer.subarray(0, bytes);
};

/** Reads `len` bytes at `pos` of `fd` into `dst` (looping over short reads). */
function readFully(fd: number, dst: Uint8Array, pos: number, what: string): void {
  const fs = nodeFs('streaming a tensor');
  let done = 0;
  while (done < dst.length) {
    const n = fs.readSync(fd, dst, done, dst.length - done, pos + done);
    if (n <= 0) throw new Error(`${what}: file ended after ${done} of ${dst.length} bytes`);
    done += n;
  }
}

/**
 * Reads one byte of every 4 KiB page of `bytes`. Pages the OS filled by read() can still cost a fault
 * each on the process's first access (measured on a Firecracker VM: ~5-40 µs a page, the whole cost
 * of a bf16 model's first prefill); touching them here puts that cost in the load, where llama.cpp's
 * MAP_POPULATE puts it, instead of in the first product that streams the weight.
 */
function touchPages(bytes: Uint8Array): void {
  let sum = 0;
  for (let i = 0; i < bytes.length; i += 4096) sum += bytes[i]!;
  if (bytes.length > 0) sum += bytes[bytes.length - 1]!;
  if (sum < 0) throw new Error('unreachable'); // keeps the reads from being optimised away
}

/**
 * Reads checkpoint tensor `name` into `dest` (storage of `dtype`, exactly the tensor's element count).
 * Stored and destination dtypes may differ only by bf16 → f32 or f32 → bf16 (rounded to nearest even).
 */
export function readTensorInto(ckpt: ShardedCheckpoint, name: string, dtype: DType, dest: StorageArray): void {
  const info = ckpt.info(name);
  const count = info.shape.reduce((a, b) => a * b, 1);
  const what = `${name} (${info.file})`;
  if (dest.length !== count)
    throw new RangeError(`${what}: destination holds ${dest.length} elements, the tensor has ${count}`);
  const from = info.dtype;
  const convert = from !== dtype;
  if (convert && !((from === 'bf16' && dtype === 'f32') || (from === 'f32' && dtype === 'bf16'))) {
    throw new TypeError(
      `${what}: cannot stream ${from} into ${dtype} storage (same dtype, bf16 → f32 or f32 → bf16 only)`,
    );
  }
  const fs = nodeFs('streaming a tensor');
  const fd = fs.openSync(nodePath().join(ckpt.dir, info.file), 'r');
  try {
    if (!convert) {
      const bytes = new Uint8Array(dest.buffer, dest.byteOffset, dest.byteLength);
      readFully(fd, bytes, info.fileOffset, what);
      touchPages(bytes);
      return;
    }
    const srcBytes = from === 'bf16' ? 2 : 4;
    const chunk = chunkBytes(Math.min(count, CHUNK) * srcBytes);
    for (let i = 0; i < count; i += CHUNK) {
      const n = Math.min(CHUNK, count - i);
      const part = chunk.subarray(0, n * srcBytes);
      readFully(fd, part, info.fileOffset + i * srcBytes, what);
      if (from === 'bf16')
        decodeBf16(
          new Uint16Array(part.buffer, part.byteOffset, n),
          (dest as Float32Array<ArrayBuffer>).subarray(i, i + n),
        );
      else
        encodeBf16(
          new Float32Array(part.buffer, part.byteOffset, n),
          (dest as Uint16Array<ArrayBuffer>).subarray(i, i + n),
        );
    }
  } finally {
    fs.closeSync(fd);
  }
}
