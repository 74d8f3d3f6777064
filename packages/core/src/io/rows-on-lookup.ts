// A table read from its checkpoint file a row at a time, as lookups first need each row (a token
// embedding: a prompt reads the rows of its tokens, and only those take memory). The table is host
// memory nothing has touched (an array past glibc's mmap threshold is mapped lazily: a page costs memory
// once written), and each row is read into its place by a positioned read. Mapping the file instead
// holds pages the size of the page cache's folios: 2 MiB where the kernel read the file in large folios
// (ext4 after a cold read), which map whole on a touch however the mapping is advised — the whole V3-mini
// table for ~1,000 random tokens.
//
// Only a lookup (the gather along axis 0: core's indexSelect / embedding) reads just its rows: exec
// completes the table before any other kernel takes it as an input, and the CPU backend before a read
// back, so every other reader (a cast, an optimizer step, a checkpoint export) sees the whole table.
import type { KernelTensor } from '../backend.js';
import { CpuStorage } from '../cpu/backend.js';
import { allocStorageArray, bytesPerElement, type DType, type StorageArray } from '../dtype.js';
import { nodeFs, nodePath } from './safetensors.js';
import { readFully } from './stream-into.js';
import type { ShardedCheckpoint } from './sharded.js';

/** The tables with rows still unread, by their storage array. */
const tables = new WeakMap<object, RowsOnLookup>();
/** Tables made in this process (0: exec and reads skip the lookup). */
let made = 0;

// A table's file descriptor: closed once its last row is read, or (a table never read whole) once its
// array is collected.
const openFiles = new FinalizationRegistry<number>((fd) => nodeFs('closing a table file').closeSync(fd));

export class RowsOnLookup {
  /** 1 where the row has been read */
  private readonly present: Uint8Array;
  private missing: number;
  private readonly bytes: Uint8Array;

  constructor(
    /** the table's storage array (rows · rowBytes bytes) */
    private readonly data: StorageArray,
    readonly rows: number,
    readonly rowBytes: number,
    private readonly fd: number,
    /** where row 0 starts in the file */
    private readonly fileOffset: number,
    /** the tensor and its file, for errors */
    private readonly what: string,
  ) {
    this.bytes = new Uint8Array(data.buffer, data.byteOffset, rows * rowBytes);
    this.present = new Uint8Array(rows);
    this.missing = rows;
  }

  /** Rows not read yet. */
  get unread(): number {
    return this.missing;
  }

  /** Reads the rows the first `count` ids name that are not read yet; ids outside [0, rows) are left to the lookup's check. */
  ensure(ids: ArrayLike<number>, count = ids.length): void {
    const want: number[] = [];
    for (let i = 0; i < count; i++) {
      const r = ids[i]!;
      if (r >= 0 && r < this.rows && this.present[r] === 0) want.push(r);
    }
    if (want.length === 0) return;
    want.sort((a, b) => a - b);
    // runs of consecutive rows, one read each (a row named twice is read once)
    let first = want[0]!;
    let last = first;
    for (const r of want) {
      if (r <= last + 1) last = Math.max(last, r);
      else {
        this.readRows(first, last + 1);
        first = last = r;
      }
    }
    this.readRows(first, last + 1);
  }

  /** Reads every row not read yet. */
  ensureAll(): void {
    let first = -1;
    for (let r = 0; r <= this.rows; r++) {
      const unread = r < this.rows && this.present[r] === 0;
      if (unread && first < 0) first = r;
      else if (!unread && first >= 0) {
        this.readRows(first, r);
        first = -1;
      }
    }
  }

  /** Rows [from, to) from the file into their place. */
  private readRows(from: number, to: number): void {
    readFully(
      this.fd,
      this.bytes.subarray(from * this.rowBytes, to * this.rowBytes),
      this.fileOffset + from * this.rowBytes,
      `${this.what}: the file ends before rows ${from}..${to - 1} (truncated or rewritten while the model ran?)`,
    );
    this.present.fill(1, from, to);
    this.missing -= to - from;
    if (this.missing === 0) {
      // an ordinary table from now on
      tables.delete(this.data);
      openFiles.unregister(this);
      nodeFs('closing a table file').closeSync(this.fd);
    }
  }
}

/**
 * Host storage for checkpoint tensor `name` ([rows, columns], kept as stored), its rows read from the
 * file as lookups need them (see the header); the file stays open until the last row is read (or the
 * storage is collected).
 */
export function readRowsOnLookup(ckpt: ShardedCheckpoint, name: string): CpuStorage {
  const info = ckpt.info(name);
  if (info.shape.length !== 2)
    throw new Error(`${name}: a table read on lookup is 2-d [rows, columns], got [${info.shape.join(', ')}]`);
  const dtype = info.dtype as DType;
  const [rows, cols] = info.shape as [number, number];
  const data = allocStorageArray(dtype, rows * cols);
  const path = nodePath().join(ckpt.dir, info.file);
  const fd = nodeFs('reading table rows').openSync(path, 'r');
  const table = new RowsOnLookup(data, rows, cols * bytesPerElement(dtype), fd, info.fileOffset, `${name} (${path})`);
  tables.set(data, table);
  openFiles.register(data, fd, table);
  made++;
  return new CpuStorage(data);
}

/** The table `data` is, while rows of it are unread. */
export function rowsOnLookupOf(data: object): RowsOnLookup | undefined {
  return made === 0 ? undefined : tables.get(data);
}

/** Completes the table `data` is, if it is one with rows unread (before a read of it all). */
export function completeRows(data: object): void {
  if (made !== 0) tables.get(data)?.ensureAll();
}

/**
 * Before kernel `op` runs on `inputs`: a lookup (gather along axis 0 with i32 ids) reads the rows it names
 * of a table read on lookup; any other kernel taking such a table completes it first.
 */
export function readRowsFor(op: string, inputs: readonly KernelTensor[], attrs: unknown): void {
  if (made === 0) return;
  for (let i = 0; i < inputs.length; i++) {
    const data = (inputs[i]!.storage as { data?: object }).data;
    const table = data ? tables.get(data) : undefined;
    if (!table) continue;
    const ids = inputs[1];
    if (op === 'gather' && i === 0 && (attrs as { axis?: number } | null)?.axis === 0 && ids?.dtype === 'i32')
      table.ensure(
        (ids.storage as CpuStorage).data as Int32Array,
        ids.shape.reduce((a, b) => a * b, 1),
      );
    else table.ensureAll();
  }
}
