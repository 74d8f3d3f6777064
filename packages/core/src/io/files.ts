// File helpers of the I/O code: lazy access to node:fs / node:path (so core bundles for browsers), byte
// sources over memory or a file (positioned reads), and the atomic file writer every writer uses.
import { SafetensorsError } from './safetensors-format';

type NodeFs = typeof import('node:fs');
type NodePath = typeof import('node:path');

// ---------------------------------------------------------------------------------------------------
// Node access (lazy, see the file comment)

interface MaybeNodeProcess {
  getBuiltinModule?: (id: string) => unknown;
  pid?: number;
}

export function nodeProcess(): MaybeNodeProcess | undefined {
  return (globalThis as { process?: MaybeNodeProcess }).process;
}

function nodeBuiltin<T>(id: string, what: string): T {
  const mod = nodeProcess()?.getBuiltinModule?.(id) as T | undefined;
  if (mod === undefined) {
    throw new SafetensorsError(
      `${what} needs ${id} (Node >= 20.16 with process.getBuiltinModule); elsewhere, pass the file's bytes as a Uint8Array`,
    );
  }
  return mod;
}

/** @internal */
export const nodeFs = (what = 'file access'): NodeFs => nodeBuiltin<NodeFs>('node:fs', what);
/** @internal */
export const nodePath = (what = 'file access'): NodePath => nodeBuiltin<NodePath>('node:path', what);

// ---------------------------------------------------------------------------------------------------
// byte sources

export interface ByteSource {
  readonly label: string;
  readonly size: number;
  /** A fresh copy (offset 0 in its own buffer) of `length` bytes at `offset`. */
  read(offset: number, length: number): Uint8Array;
  close(): void;
}

export class MemorySource implements ByteSource {
  private bytes: Uint8Array | null;
  readonly size: number;
  constructor(
    bytes: Uint8Array,
    readonly label: string,
  ) {
    // a plain view: Node Buffers' slice() would alias instead of copying
    this.bytes = new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    this.size = bytes.byteLength;
  }
  read(offset: number, length: number): Uint8Array {
    if (this.bytes === null) throw new SafetensorsError('read after close()', { file: this.label });
    return this.bytes.slice(offset, offset + length);
  }
  close(): void {
    this.bytes = null;
  }
}

export const READ_CHUNK = 1 << 30;

export class FileSource implements ByteSource {
  private fd: number | null;
  readonly size: number;
  private readonly fs: NodeFs;
  constructor(readonly label: string) {
    this.fs = nodeFs(`reading ${label}`);
    try {
      this.fd = this.fs.openSync(label, 'r');
    } catch (e) {
      throw new SafetensorsError(`cannot open: ${(e as Error).message}`, { file: label, cause: e });
    }
    try {
      const st = this.fs.fstatSync(this.fd);
      if (!st.isFile()) throw new SafetensorsError('not a regular file; expected a .safetensors file', { file: label });
      this.size = st.size;
    } catch (e) {
      this.close();
      throw e;
    }
  }
  read(offset: number, length: number): Uint8Array {
    if (this.fd === null) throw new SafetensorsError('read after close()', { file: this.label });
    const out = new Uint8Array(length);
    let done = 0;
    while (done < length) {
      const n = this.fs.readSync(this.fd, out, done, Math.min(length - done, READ_CHUNK), offset + done);
      if (n === 0) {
        throw new SafetensorsError(
          `unexpected end of file reading bytes [${offset}, ${offset + length}) (file is ${this.size} bytes; was it truncated while open?)`,
          { file: this.label },
        );
      }
      done += n;
    }
    return out;
  }
  close(): void {
    if (this.fd !== null) {
      const fd = this.fd;
      this.fd = null;
      this.fs.closeSync(fd);
    }
  }
}

/**
 * Writes `path` atomically: the chunks go to a temp file in the same directory (`.<name>.tmp-<pid>-<rand>`),
 * which is fsynced and renamed over `path`. On any failure the temp file is removed and `path` is untouched.
 */
export function writeFileAtomic(path: string, chunks: Iterable<Uint8Array>): void {
  const fs = nodeFs(`writing ${path}`);
  const pathMod = nodePath(`writing ${path}`);
  const dir = pathMod.dirname(path);
  const rand = Math.floor(Math.random() * 0x100000000)
    .toString(16)
    .padStart(8, '0');
  const tmp = pathMod.join(dir, `.${pathMod.basename(path)}.tmp-${nodeProcess()?.pid ?? 0}-${rand}`);
  let fd: number | null = null;
  try {
    fd = fs.openSync(tmp, 'wx');
    for (const chunk of chunks) {
      let done = 0;
      while (done < chunk.byteLength) {
        done += fs.writeSync(fd, chunk, done, Math.min(chunk.byteLength - done, READ_CHUNK));
      }
    }
    fs.fsyncSync(fd);
    fs.closeSync(fd);
    fd = null;
    fs.renameSync(tmp, path);
  } catch (e) {
    if (fd !== null) {
      try {
        fs.closeSync(fd);
      } catch {
        /* already failing */
      }
    }
    try {
      fs.rmSync(tmp, { force: true });
    } catch {
      /* best effort */
    }
    throw new SafetensorsError(`writing failed, file left unchanged: ${(e as Error).message}`, {
      file: path,
      cause: e,
    });
  }
  // Persist the rename itself (best effort: not every platform can fsync a directory).
  try {
    const dfd = fs.openSync(dir, 'r');
    try {
      fs.fsyncSync(dfd);
    } finally {
      fs.closeSync(dfd);
    }
  } catch {
    /* ignore */
  }
}
