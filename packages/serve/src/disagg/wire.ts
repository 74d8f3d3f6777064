// What crosses the wire between router, prefill and decode workers: sampling parameters as JSON (the
// logit bias map as pairs), engine outputs as newline-delimited JSON, and latent pages as raw floats
// (per main layer: the compressed latents c_KV then the decoupled RoPE keys, token after token).
import type { PagedLatentCache } from '@dsv3/mla';
import type { SpeculativeStats } from '../engine-core.js';
import type { SamplingParams } from '../sampling.js';
import type { RequestOutput } from '../sequence.js';

export type WorkerRole = 'prefill' | 'decode';

/** What a worker reports on GET /status: its load (for the router's choice) and its model's shape. */
export interface WorkerStatus {
  role: WorkerRole;
  /** requests waiting for the model (prefill: queued prompts; decode: waiting for pages or a slot) */
  waiting: number;
  running: number;
  freeBlocks: number;
  totalBlocks: number;
  blockSize: number;
  vocabSize: number;
  maxModelLen: number;
  /** requests this worker has taken (prefill: prompts computed; decode: requests adopted) */
  handled: number;
  /** latent-page bytes sent (prefill) or received (decode) */
  pageBytes: number;
  /** bytes a prefill ships per token: its latents over the main layers (and the MTP module's layer when drafting) */
  bytesPerToken: number;
  /** MTP drafts proposed and accepted per draft position (decode workers that draft) */
  speculative?: SpeculativeStats;
}

export interface WireParams extends Omit<SamplingParams, 'logitBias'> {
  logitBias: [number, number][];
}

export function paramsToWire(p: SamplingParams): WireParams {
  return { ...p, logitBias: [...p.logitBias] };
}

export function paramsFromWire(w: WireParams): SamplingParams {
  return { ...w, logitBias: new Map(w.logitBias) };
}

/** One line of a decode worker's stream: an engine output, or why the request failed. */
export type StreamLine = RequestOutput | { id: string; error: string };

export const PAGE_CONTENT_TYPE = 'application/octet-stream';

/** Latent bytes per token over the cache's first `layers` layers. */
export function latentBytesPerToken(cache: PagedLatentCache, layers: number): number {
  return layers * (cache.kvLoraRank + cache.ropeDim) * (cache.dtype === 'f64' ? 8 : 4);
}

/** The latents of positions [0, tokens) of `seq` in layers [0, layers), packed for the wire (read from the cache's backend). */
export async function packPages(
  cache: PagedLatentCache,
  seq: number,
  layers: number,
  tokens: number,
): Promise<Uint8Array<ArrayBuffer>> {
  const C = cache.kvLoraRank;
  const R = cache.ropeDim;
  const width = cache.dtype === 'f64' ? 8 : 4;
  const out = new Uint8Array(layers * tokens * (C + R) * width);
  let at = 0;
  // every layer's rows are gathered before the first await, so the export is of one moment
  const all = await Promise.all(Array.from({ length: layers }, (_, l) => cache.readAsync(l, seq, 0, tokens)));
  for (const rows of all) {
    for (const a of [rows.ckv, rows.kr]) {
      out.set(new Uint8Array(a.buffer, a.byteOffset, a.byteLength), at);
      at += a.byteLength;
    }
  }
  return out;
}

export class PageFormatError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'PageFormatError';
  }
}

/** Writes packed pages into a fresh sequence of `cache` (layers [0, layers)); checks the size first. */
export function unpackPages(
  cache: PagedLatentCache,
  seq: number,
  layers: number,
  tokens: number,
  body: Uint8Array,
): void {
  const C = cache.kvLoraRank;
  const R = cache.ropeDim;
  const width = cache.dtype === 'f64' ? 8 : 4;
  const expected = layers * tokens * (C + R) * width;
  if (body.byteLength !== expected) {
    throw new PageFormatError(
      `latent pages of ${tokens} tokens over ${layers} layers (kv_lora_rank ${C}, rope dim ${R}, ${cache.dtype}) are ${expected} bytes, got ${body.byteLength}`,
    );
  }
  // copy into aligned memory: a received buffer may start at any byte offset
  const aligned = new Uint8Array(body.byteLength);
  aligned.set(body);
  const Arr = cache.dtype === 'f64' ? Float64Array : Float32Array;
  const all = new Arr(aligned.buffer);
  let at = 0;
  for (let l = 0; l < layers; l++) {
    const ckv = all.subarray(at, at + tokens * C);
    at += tokens * C;
    const kr = all.subarray(at, at + tokens * R);
    at += tokens * R;
    cache.append(l, seq, ckv, kr);
  }
}

/** Splits a byte stream into parsed JSON lines. */
export async function* jsonLines<T>(body: AsyncIterable<Uint8Array>): AsyncGenerator<T> {
  const decoder = new TextDecoder();
  let buf = '';
  for await (const chunk of body) {
    buf += decoder.decode(chunk, { stream: true });
    let nl: number;
    while ((nl = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, nl).trim();
      buf = buf.slice(nl + 1);
      if (line) yield JSON.parse(line) as T;
    }
  }
  const rest = (buf + decoder.decode()).trim();
  if (rest) yield JSON.parse(rest) as T;
}
