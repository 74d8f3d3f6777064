// Sharded checkpoints in the Hugging Face layout: `model.safetensors.index.json`
//   {"metadata": {"total_size": N, ...}, "weight_map": {tensor name: shard file name}}
// next to `model-00001-of-0000N.safetensors` files; or a single `model.safetensors`.
// Node-only (file paths); node:fs / node:path are reached lazily, as in safetensors.ts.
import type {
  ReadSafetensorsOptions,
  SafetensorsFile,
  SafetensorsRawTensor,
  SafetensorsTensor,
  SafetensorsTensorInfo,
  SafetensorsWritable,
} from './safetensors';
import {
  SafetensorsError,
  compareCodePoints,
  nodeFs,
  nodePath,
  prepareTensor,
  readSafetensors,
  writeFileAtomic,
  writeSafetensors,
} from './safetensors';

export const SHARD_INDEX_FILE = 'model.safetensors.index.json';
export const SINGLE_CHECKPOINT_FILE = 'model.safetensors';
/** Hugging Face's default shard size ("5GB"). */
export const DEFAULT_MAX_SHARD_BYTES = 5_000_000_000;

export interface ShardedTensorInfo extends SafetensorsTensorInfo {
  /** The shard file (relative to the checkpoint directory) holding the tensor. */
  file: string;
}

const isPlainObject = (x: unknown): x is Record<string, unknown> =>
  typeof x === 'object' && x !== null && !Array.isArray(x);

const byName = compareCodePoints;

/** A checkpoint spread over one or more safetensors files, read through one name space. */
export class ShardedCheckpoint {
  private closed = false;

  /** @internal use readShardedCheckpoint() */
  constructor(
    /** The checkpoint directory. */
    readonly dir: string,
    /** The index file, or undefined for a single-file checkpoint. */
    readonly indexPath: string | undefined,
    /** The index's `metadata` (e.g. total_size), or a single file's `__metadata__`. */
    readonly metadata: Readonly<Record<string, unknown>>,
    private readonly shards: Map<string, SafetensorsFile>,
    private readonly weightMap: Map<string, string>,
    private readonly sortedNames: string[],
  ) {}

  /** Shard file names, in order. */
  files(): string[] {
    return [...this.shards.keys()].sort(byName);
  }
  /** The open file of one shard (by its file name). */
  shard(file: string): SafetensorsFile {
    const s = this.shards.get(file);
    if (s === undefined)
      throw new SafetensorsError(`no shard named ${JSON.stringify(file)} (shards: ${this.files().join(', ')})`, {
        file: this.dir,
      });
    return s;
  }
  names(): string[] {
    return this.sortedNames.slice();
  }
  has(name: string): boolean {
    return this.weightMap.has(name);
  }
  /** The shard file holding a tensor. */
  fileOf(name: string): string {
    this.check();
    const f = this.weightMap.get(name);
    if (f === undefined) {
      throw new SafetensorsError(
        `no such tensor in the checkpoint (${this.sortedNames.length} tensors in ${this.shards.size} file(s))`,
        {
          file: this.indexPath ?? this.dir,
          tensor: name,
        },
      );
    }
    return f;
  }
  info(name: string): ShardedTensorInfo {
    const file = this.fileOf(name);
    return { ...this.shard(file).info(name), file };
  }
  get(name: string): SafetensorsTensor {
    return this.shard(this.fileOf(name)).get(name);
  }
  getRaw(name: string): SafetensorsRawTensor {
    return this.shard(this.fileOf(name)).getRaw(name);
  }
  getI32(name: string): ReturnType<SafetensorsFile['getI32']> {
    return this.shard(this.fileOf(name)).getI32(name);
  }
  close(): void {
    if (this.closed) return;
    this.closed = true;
    for (const s of this.shards.values()) s.close();
  }
  private check(): void {
    if (this.closed) throw new SafetensorsError('checkpoint is closed', { file: this.indexPath ?? this.dir });
  }
}

function checkShardName(file: string, indexPath: string, tensor: string): void {
  const path = nodePath();
  if (file.length === 0 || path.isAbsolute(file) || file.split(/[\\/]/).some((seg) => seg === '..' || seg === '')) {
    throw new SafetensorsError(
      `weight_map maps this tensor to ${JSON.stringify(file)}; expected a file name relative to the checkpoint directory`,
      { file: indexPath, tensor },
    );
  }
}

/**
 * Opens a checkpoint: `path` is a directory holding `model.safetensors.index.json` (preferred) or
 * `model.safetensors`, or the path of an index `.json` or of a single `.safetensors` file.
 * Every shard's header is read and cross-checked against the weight map up front; tensor data is read on demand.
 */
export function readShardedCheckpoint(path: string, opts: ReadSafetensorsOptions = {}): ShardedCheckpoint {
  const fs = nodeFs(`reading ${path}`);
  const pathMod = nodePath(`reading ${path}`);
  let st: ReturnType<typeof fs.statSync>;
  try {
    st = fs.statSync(path);
  } catch (e) {
    throw new SafetensorsError(`cannot open checkpoint: ${(e as Error).message}`, { file: path, cause: e });
  }
  let dir: string;
  let indexPath: string | undefined;
  let single: string | undefined;
  if (st.isDirectory()) {
    dir = path;
    const idx = pathMod.join(path, SHARD_INDEX_FILE);
    const one = pathMod.join(path, SINGLE_CHECKPOINT_FILE);
    if (fs.existsSync(idx)) indexPath = idx;
    else if (fs.existsSync(one)) single = one;
    else {
      throw new SafetensorsError(
        `directory has neither ${SHARD_INDEX_FILE} nor ${SINGLE_CHECKPOINT_FILE}; expected a safetensors checkpoint`,
        { file: path },
      );
    }
  } else {
    dir = pathMod.dirname(path);
    if (path.endsWith('.json')) indexPath = path;
    else single = path;
  }

  if (single !== undefined) {
    const f = readSafetensors(single, opts);
    const file = pathMod.basename(single);
    const names = f.names();
    return new ShardedCheckpoint(
      dir,
      undefined,
      f.metadata,
      new Map([[file, f]]),
      new Map(names.map((n) => [n, file])),
      names,
    );
  }

  const idxFile = indexPath!;
  let index: unknown;
  try {
    index = JSON.parse(fs.readFileSync(idxFile, 'utf8'));
  } catch (e) {
    throw new SafetensorsError(`cannot read the index as JSON: ${(e as Error).message}`, { file: idxFile, cause: e });
  }
  if (!isPlainObject(index) || !isPlainObject(index.weight_map)) {
    throw new SafetensorsError('index must be a JSON object with a "weight_map" object {tensor name: shard file}', {
      file: idxFile,
    });
  }
  if (index.metadata !== undefined && index.metadata !== null && !isPlainObject(index.metadata)) {
    throw new SafetensorsError('index "metadata" must be an object', { file: idxFile });
  }
  const metadata = isPlainObject(index.metadata) ? { ...index.metadata } : {};
  const weightMap = new Map<string, string>();
  for (const [name, file] of Object.entries(index.weight_map)) {
    if (typeof file !== 'string') {
      throw new SafetensorsError(`weight_map value is ${JSON.stringify(file)}; expected a shard file name`, {
        file: idxFile,
        tensor: name,
      });
    }
    checkShardName(file, idxFile, name);
    weightMap.set(name, file);
  }

  const shards = new Map<string, SafetensorsFile>();
  try {
    for (const [name, file] of weightMap) {
      if (shards.has(file)) continue;
      const p = pathMod.join(dir, file);
      if (!fs.existsSync(p)) {
        throw new SafetensorsError(
          `weight_map maps this tensor to ${JSON.stringify(file)}, which does not exist in ${dir}`,
          { file: idxFile, tensor: name },
        );
      }
      shards.set(file, readSafetensors(p, opts));
    }
    const seenIn = new Map<string, string>();
    for (const [file, shard] of shards) {
      for (const name of shard.names()) {
        const other = seenIn.get(name);
        if (other !== undefined) {
          throw new SafetensorsError(
            `appears in two shards, ${JSON.stringify(other)} and ${JSON.stringify(file)}; expected each tensor in exactly one shard`,
            {
              file: idxFile,
              tensor: name,
            },
          );
        }
        seenIn.set(name, file);
      }
    }
    for (const [name, file] of weightMap) {
      if (!shards.get(file)!.has(name)) {
        const actual = seenIn.get(name);
        throw new SafetensorsError(
          `weight_map maps this tensor to ${JSON.stringify(file)}, but that shard has no such tensor${actual !== undefined ? ` (it is in ${JSON.stringify(actual)})` : ''}`,
          { file: idxFile, tensor: name },
        );
      }
    }
  } catch (e) {
    for (const s of shards.values()) s.close();
    throw e;
  }
  const names = [...weightMap.keys()].sort(byName);
  return new ShardedCheckpoint(dir, idxFile, metadata, shards, weightMap, names);
}

export interface WriteShardedOptions {
  /** Start a new shard when the next tensor would push the current one past this many data bytes
   * (a single larger tensor gets a shard of its own). Default 5e9, as Hugging Face. */
  maxShardBytes?: number;
  /** Extra entries for the index's `metadata` (`total_size` is always set). */
  metadata?: Record<string, string | number | boolean>;
  /** Each shard's `__metadata__`; default `{format: "pt"}`, which Hugging Face loaders expect. */
  shardMetadata?: Record<string, string>;
}

export interface WriteShardedResult {
  /** Shard file names, in order. */
  files: string[];
  indexPath: string;
  /** Sum of the tensors' data bytes (the index's metadata.total_size). */
  totalSize: number;
}

/**
 * Writes `model-0000i-of-0000N.safetensors` shards (tensors in name order, packed greedily up to
 * maxShardBytes) and then `model.safetensors.index.json`, each file atomically. Every tensor is validated
 * before any file is written. Shard files of an earlier, differently sized checkpoint in `dir` are left alone
 * (the new index does not reference them).
 */
export function writeShardedCheckpoint(
  dir: string,
  tensors: Record<string, SafetensorsWritable>,
  opts: WriteShardedOptions = {},
): WriteShardedResult {
  const fs = nodeFs(`writing ${dir}`);
  const pathMod = nodePath(`writing ${dir}`);
  const max = opts.maxShardBytes ?? DEFAULT_MAX_SHARD_BYTES;
  if (!(max > 0)) throw new SafetensorsError(`maxShardBytes must be positive, got ${max}`, { file: dir });
  if (!isPlainObject(tensors)) throw new SafetensorsError('tensors must be an object {name: tensor}', { file: dir });

  const names = Object.keys(tensors).sort(byName);
  const groups: string[][] = [[]];
  let current = 0;
  let totalSize = 0;
  for (const name of names) {
    const size = prepareTensor(name, tensors[name]!, dir).bytes.byteLength;
    const group = groups[groups.length - 1]!;
    if (group.length > 0 && current + size > max) {
      groups.push([name]);
      current = size;
    } else {
      group.push(name);
      current += size;
    }
    totalSize += size;
  }

  const n = groups.length;
  const pad = (i: number) => String(i).padStart(5, '0');
  const files = groups.map((_, i) => `model-${pad(i + 1)}-of-${pad(n)}.safetensors`);
  fs.mkdirSync(dir, { recursive: true });
  const weightMap: [string, string][] = [];
  groups.forEach((group, i) => {
    const file = files[i]!;
    const shard: Record<string, SafetensorsWritable> = {};
    for (const name of group) {
      shard[name] = tensors[name]!;
      weightMap.push([name, file]);
    }
    writeSafetensors(pathMod.join(dir, file), shard, opts.shardMetadata ?? { format: 'pt' });
  });

  // Hugging Face writes json.dumps(index, indent=2, sort_keys=True); built by hand to keep key order exact.
  const md = { ...(opts.metadata ?? {}), total_size: totalSize };
  const mdLines = Object.keys(md)
    .sort(byName)
    .map((k) => `    ${JSON.stringify(k)}: ${JSON.stringify(md[k as keyof typeof md])}`);
  const wmLines = weightMap
    .sort((a, b) => byName(a[0], b[0]))
    .map(([k, f]) => `    ${JSON.stringify(k)}: ${JSON.stringify(f)}`);
  const block = (lines: string[]) => (lines.length > 0 ? `{\n${lines.join(',\n')}\n  }` : '{}');
  const text = `{\n  "metadata": ${block(mdLines)},\n  "weight_map": ${block(wmLines)}\n}\n`;
  const indexPath = pathMod.join(dir, SHARD_INDEX_FILE);
  writeFileAtomic(indexPath, [new TextEncoder().encode(text)]);
  return { files, indexPath, totalSize };
}
