// Streams checkpoint tensors straight into storage that already sits where it will be used (e.g. a
// resident weight in the CPU engine's memory): same-dtype tensors are read by the OS directly into the
// destination (or, asked to and resident, have their whole pages mapped from the file); converted ones
// (bf16 ↔ f32) pass through one small reusable chunk, never a whole-tensor host copy. Node only
// (positioned reads).
import { cpu, type CpuStorage } from '../cpu/backend.js';
import { OS_PAGE } from '../cpu/gemm/arena.js';
import { isResident, mapFileInto, prefaultMapped, type RunPiece } from '../cpu/gemm/index.js';
import { bytesPerElement, decodeBf16, encodeBf16, type DType, type StorageArray } from '../dtype.js';
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

/** Reads `dst.length` bytes at `pos` of `fd` into `dst` (looping over short reads); `what` names them in the error. */
export function readFully(fd: number, dst: Uint8Array, pos: number, what: string): void {
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
 * The file's bytes at `fileOffset` into `bytes`: with `map`, its whole pages mapped from the file (to
 * come in as they are read: the caller prefaults what it will stream) and the partial pages at either
 * end read, else (or where mapping fails) read and touched. Returns the mapped range, or null.
 */
function placeBytes(
  fd: number,
  bytes: Uint8Array,
  fileOffset: number,
  what: string,
  map: boolean,
): [number, number] | null {
  const mapped = map ? mapFileInto(bytes, fd, fileOffset) : null;
  if (!mapped) {
    readFully(fd, bytes, fileOffset, what);
    touchPages(bytes);
    return null;
  }
  const [start, end] = mapped;
  readFully(fd, bytes.subarray(0, start), fileOffset, what);
  readFully(fd, bytes.subarray(end), fileOffset + end, what);
  return mapped;
}

/** How a same-dtype tensor reaches resident storage. */
export interface ReadIntoOptions {
  /**
   * Map its whole pages from the file (the page cache itself, copy-on-write, as llama.cpp maps a GGUF:
   * no copy and no fresh memory, and processes loading the same file share it) instead of reading
   * them; needs the native addon on Linux and the storage where the file puts the bytes within a page
   * (readResidentTensor places it so), else it reads. The file must then not be truncated or rewritten
   * in place while the storage is in use (a rename, as checkpoints are written, is safe).
   */
  map?: boolean;
}

/** Whether stored dtype `from` streams into `dtype` storage; throws naming `what` where it does not. */
function checkConversion(from: string, dtype: DType, what: string): boolean {
  const convert = from !== dtype;
  if (convert && !((from === 'bf16' && dtype === 'f32') || (from === 'f32' && dtype === 'bf16'))) {
    throw new TypeError(
      `${what}: cannot stream ${from} into ${dtype} storage (same dtype, bf16 → f32 or f32 → bf16 only)`,
    );
  }
  return convert;
}

/** Converts `dest.length` elements of a bf16 / f32 tensor from element `start` into `dest`, a chunk at a time. */
function convertInto(
  fd: number,
  fileOffset: number,
  from: string,
  start: number,
  dest: StorageArray,
  what: string,
): void {
  const count = dest.length;
  const srcBytes = from === 'bf16' ? 2 : 4;
  const chunk = chunkBytes(Math.min(count, CHUNK) * srcBytes);
  for (let i = 0; i < count; i += CHUNK) {
    const n = Math.min(CHUNK, count - i);
    const part = chunk.subarray(0, n * srcBytes);
    readFully(fd, part, fileOffset + (start + i) * srcBytes, what);
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
}

/**
 * Reads checkpoint tensor `name` into `dest` (storage of `dtype`, exactly the tensor's element count).
 * Stored and destination dtypes may differ only by bf16 → f32 or f32 → bf16 (rounded to nearest even).
 */
export function readTensorInto(
  ckpt: ShardedCheckpoint,
  name: string,
  dtype: DType,
  dest: StorageArray,
  opts: ReadIntoOptions = {},
): void {
  const info = ckpt.info(name);
  const count = info.shape.reduce((a, b) => a * b, 1);
  const what = `${name} (${info.file})`;
  if (dest.length !== count)
    throw new RangeError(`${what}: destination holds ${dest.length} elements, the tensor has ${count}`);
  const convert = checkConversion(info.dtype, dtype, what);
  const fs = nodeFs('streaming a tensor');
  const fd = fs.openSync(nodePath().join(ckpt.dir, info.file), 'r');
  try {
    if (!convert) {
      const bytes = new Uint8Array(dest.buffer, dest.byteOffset, dest.byteLength);
      const mapped = placeBytes(fd, bytes, info.fileOffset, what, (opts.map ?? false) && isResident(bytes));
      if (mapped) prefaultMapped(bytes.subarray(...mapped));
      return;
    }
    convertInto(fd, info.fileOffset, info.dtype, 0, dest, what);
  } finally {
    fs.closeSync(fd);
  }
}

/**
 * Reads whole rows of checkpoint tensor `name` (rows: its first dimension) into `dest`, from row
 * `firstRow`: as many rows as `dest` holds (a multiple of a row's elements), converted as readTensorInto
 * converts. For a tensor taken a slab at a time (e.g. quantized at load), never whole in memory.
 */
export function readTensorRowsInto(
  ckpt: ShardedCheckpoint,
  name: string,
  dtype: DType,
  firstRow: number,
  dest: StorageArray,
): void {
  const info = ckpt.info(name);
  const what = `${name} (${info.file})`;
  const rows = info.shape[0] ?? 1;
  const rowElements = info.shape.slice(1).reduce((a, b) => a * b, 1);
  const count = dest.length / rowElements;
  if (!Number.isInteger(count) || !Number.isInteger(firstRow) || firstRow < 0 || firstRow + count > rows)
    throw new RangeError(
      `${what}: rows [${firstRow}, ${firstRow} + ${dest.length} / ${rowElements}) are not whole rows of its ${rows}`,
    );
  const convert = checkConversion(info.dtype, dtype, what);
  const fs = nodeFs('streaming a tensor');
  const fd = fs.openSync(nodePath().join(ckpt.dir, info.file), 'r');
  try {
    const start = firstRow * rowElements;
    if (convert) convertInto(fd, info.fileOffset, info.dtype, start, dest, what);
    else
      readFully(
        fd,
        new Uint8Array(dest.buffer, dest.byteOffset, dest.byteLength),
        info.fileOffset + start * dest.BYTES_PER_ELEMENT,
        what,
      );
  } finally {
    fs.closeSync(fd);
  }
}

/**
 * Checkpoint tensor `name` in resident CPU storage of `dtype` (host storage where the engine has no
 * room), read as readTensorInto reads it; with `map`, one kept in its stored dtype is placed where its
 * file puts it within a page, and its whole pages map from the file.
 */
export function readResidentTensor(
  ckpt: ShardedCheckpoint,
  name: string,
  dtype: DType,
  opts: ReadIntoOptions = {},
): CpuStorage {
  const info = ckpt.info(name);
  const count = info.shape.reduce((a, b) => a * b, 1);
  const mappable = opts.map && info.dtype === dtype && info.fileOffset % bytesPerElement(dtype) === 0;
  const storage = cpu.allocResident(dtype, count, false, mappable ? info.fileOffset % OS_PAGE : undefined);
  readTensorInto(ckpt, name, dtype, storage.data, opts);
  return storage;
}

/** Prefaults a mapped run's pages (`mapped`: the range of `bytes` mapped). */
function prefaultRun(bytes: Uint8Array, mapped: [number, number]): void {
  if (mapped[1] > mapped[0]) prefaultMapped(bytes.subarray(mapped[0], mapped[1]));
}

/** Tensors this close in a file share one mapping (the bytes between them mapped too, unused). */
const RUN_GAP = 1 << 20;
/** Stored dtypes resident storage holds as they are. */
const RESIDENT_DTYPES = new Set<string>(['f32', 'bf16', 'f16', 'fp8-e4m3', 'fp8-e5m2', 'i32', 'u32', 'u8']);

/**
 * Checkpoint tensors `names` in resident CPU storage of their stored dtypes, mapped from their files a
 * run at a time: tensors within RUN_GAP of each other in a file are placed as it lays them out and one
 * mmap covers them, so a model's ~1,600 weights take a few mappings, not one each (a VM's page-sampling
 * reclaim, DAMON, stalled every decode step it sampled in for as long as the walk over a file's many
 * mappings took: ~50 ms twice a second at 1,600). A run starts where its file offset falls within a
 * 2 MiB page, so the page cache's huge folios (a cold file read through the mapping gets them) map
 * whole. Where the file cannot be mapped the runs are read.
 * Tensors it cannot place so (an offset not on an element, no memory holding even one alone) are
 * left out of the result: read those with readResidentTensor.
 *
 * The pages are brought in at load (a weight's faults paid there, not in the first product that streams
 * it). A table read by row (an embedding) is better read on lookup (readRowsOnLookup).
 */
export function mapResidentTensors(ckpt: ShardedCheckpoint, names: readonly string[]): Map<string, CpuStorage> {
  const out = new Map<string, CpuStorage>();
  const byFile = new Map<string, { name: string; offset: number; piece: RunPiece }[]>();
  for (const name of new Set(names)) {
    const info = ckpt.info(name);
    const dtype = info.dtype;
    if (!RESIDENT_DTYPES.has(dtype) || info.fileOffset % bytesPerElement(dtype as DType) !== 0) continue;
    const size = info.shape.reduce((a, b) => a * b, 1);
    const list = byFile.get(info.file) ?? [];
    list.push({ name, offset: info.fileOffset, piece: { dtype: dtype as DType, size, offset: 0 } });
    byFile.set(info.file, list);
  }
  const fs = nodeFs('mapping tensors');
  for (const [file, tensors] of byFile) {
    tensors.sort((a, b) => a.offset - b.offset);
    const end = (t: (typeof tensors)[number]): number => t.offset + t.piece.size * bytesPerElement(t.piece.dtype);
    const runs: (typeof tensors)[] = [];
    for (const t of tensors) {
      const run = runs[runs.length - 1];
      if (run && t.offset - end(run[run.length - 1]!) <= RUN_GAP) run.push(t);
      else runs.push([t]);
    }
    const fd = fs.openSync(nodePath().join(ckpt.dir, file), 'r');
    try {
      const place = (run: typeof tensors): void => {
        const first = run[0]!;
        const storages = cpu.allocResidentRun(
          run.map((t) => ({ ...t.piece, offset: t.offset - first.offset })),
          first.offset,
        );
        if (!storages) {
          // no memory holds them together: halves, down to single tensors
          if (run.length > 1) {
            place(run.slice(0, run.length >> 1));
            place(run.slice(run.length >> 1));
          }
          return;
        }
        const head = storages[0]!.data;
        const bytes = new Uint8Array(head.buffer, head.byteOffset, end(run[run.length - 1]!) - first.offset);
        const mapped = placeBytes(fd, bytes, first.offset, `${first.name} … (${file})`, true);
        if (mapped) prefaultRun(bytes, mapped);
        run.forEach((t, i) => out.set(t.name, storages[i]!));
      };
      for (const run of runs) place(run);
    } finally {
      fs.closeSync(fd);
    }
  }
  return out;
}
