// Safetensors ↔ Tensor: load named tensors onto a backend, save tensors (read back from any backend).
import type { Backend } from '../backend.js';
import { defaultBackend } from '../backends.js';
import { fromRaw } from '../ops/creation.js';
import type { Tensor } from '../tensor.js';
import { readSafetensors, writeSafetensors, type SafetensorsFile } from './safetensors.js';
import { readShardedCheckpoint, type ShardedCheckpoint } from './sharded.js';

export interface LoadTensorsOptions {
  backend?: Backend;
  /** Only these names (default: all). A name that is absent is an error. */
  names?: readonly string[];
}

type Source = SafetensorsFile | ShardedCheckpoint;

function fromSource(src: Source, opts: LoadTensorsOptions): Record<string, Tensor> {
  const backend = opts.backend ?? defaultBackend();
  const out: Record<string, Tensor> = {};
  for (const name of opts.names ?? src.names()) {
    const t = src.get(name);
    out[name] = fromRaw(t.dtype, t.shape, t.data, backend);
  }
  return out;
}

/** Reads a .safetensors file (or bytes) into tensors. */
export function loadSafetensors(input: string | Uint8Array, opts: LoadTensorsOptions = {}): Record<string, Tensor> {
  const file = readSafetensors(input);
  try {
    return fromSource(file, opts);
  } finally {
    file.close();
  }
}

/** Reads a checkpoint directory (sharded with model.safetensors.index.json, or one model.safetensors). */
export function loadCheckpoint(dir: string, opts: LoadTensorsOptions = {}): Record<string, Tensor> {
  const ckpt = readShardedCheckpoint(dir);
  try {
    return fromSource(ckpt, opts);
  } finally {
    ckpt.close();
  }
}

/** Writes tensors atomically (temp file + rename), reading each back from its backend first. */
export async function saveSafetensors(
  path: string,
  tensors: Record<string, Tensor>,
  metadata?: Record<string, string>,
): Promise<void> {
  const host: Record<
    string,
    { dtype: Tensor['dtype']; shape: readonly number[]; data: Awaited<ReturnType<Tensor['raw']>> }
  > = {};
  for (const [name, t] of Object.entries(tensors)) host[name] = { dtype: t.dtype, shape: t.shape, data: await t.raw() };
  writeSafetensors(path, host, metadata);
}
