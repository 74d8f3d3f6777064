// Builds a model of which only some state-dict entries get memory: the others stay zero placeholders
// the OS never maps (a parallel rank's unheld stages and experts), while the held ones get exactly the
// values the whole model would have from the same seed.
//
// The model is constructed once under the CPU's deferred uploads with a recording Rng: every random
// fill hands back zeros that are never written (so never mapped) and is logged (with the forks between fills) instead of
// drawn. Once the constructor has named everything, the log is replayed on a real Rng(seed): a fill
// that feeds a held parameter is drawn straight into that parameter's placeholder, any other is
// drawn into a small scratch buffer and dropped, so the stream advances exactly as in a whole build
// (streams and tails that position no held draw are skipped).
// Values a constructor set without the Rng (norm gains, biases, buffers) are copied back for held
// entries only.
import { cpu, Rng, type CpuStorage, type DType, type StorageArray } from '@dsv3/core';
import { DeepseekV3ForCausalLM, type ModelConfig } from '@dsv3/model';

type FloatArray = Float32Array | Float64Array;

interface Fill {
  dist: 'normal' | 'uniform';
  /** type of the array the constructor asked to have filled (it fixes the rounding of the draws) */
  kind: Float32ArrayConstructor | Float64ArrayConstructor;
  length: number;
  a: number;
  b: number;
  /** the placeholder the upload made of the zeros handed back */
  placeholder: CpuStorage | null;
}

type RngEvent = { fill: Fill } | { fork: RecordingRng };

/**
 * Views of one zero buffer that is never written (so never mapped): a distinct view for every fill
 * tells the fills apart, and costs no memory (the deferred upload only reads its length).
 */
class Zeros {
  private buffer = new ArrayBuffer(0);
  view(dtype: 'f32' | 'f64', length: number): FloatArray {
    const bytes = length * (dtype === 'f64' ? 8 : 4);
    if (bytes > this.buffer.byteLength) this.buffer = new ArrayBuffer(bytes);
    return dtype === 'f64' ? new Float64Array(this.buffer, 0, length) : new Float32Array(this.buffer, 0, length);
  }
}

/** An Rng that draws nothing: it logs fills and forks for a later replay. */
class RecordingRng extends Rng {
  readonly events: RngEvent[] = [];

  constructor(
    private readonly dtype: 'f32' | 'f64',
    /** fills whose zeros no upload has taken yet, by the zeros handed back */
    private readonly pending: Map<StorageArray, Fill>,
    private readonly all: Fill[],
    private readonly zeros = new Zeros(),
  ) {
    super(0);
  }

  override fillNormal(out: FloatArray, mean = 0, std = 1): FloatArray {
    return this.record('normal', out, mean, std);
  }

  override fillUniform(out: FloatArray, low = 0, high = 1): FloatArray {
    return this.record('uniform', out, low, high);
  }

  private record(dist: Fill['dist'], like: FloatArray, a: number, b: number): FloatArray {
    const handedBack = this.zeros.view(this.dtype, like.length);
    const kind = like instanceof Float64Array ? Float64Array : Float32Array;
    const fill: Fill = { dist, kind, length: like.length, a, b, placeholder: null };
    this.pending.set(handedBack, fill);
    this.all.push(fill);
    this.events.push({ fill });
    return handedBack;
  }

  override fork(): Rng {
    const child = new RecordingRng(this.dtype, this.pending, this.all, this.zeros);
    this.events.push({ fork: child });
    return child;
  }

  override nextU32(): number {
    throw new Error(
      'internal: a model constructor drew single random numbers; the held-shard build replays only fills and forks',
    );
  }
}

const SCRATCH = 1 << 16;

/** Whether a held fill is drawn from this stream or a stream forked from it (memoized per stream). */
function feedsHeld(node: RecordingRng, held: Set<Fill>, memo: Map<RecordingRng, boolean>): boolean {
  let r = memo.get(node);
  if (r === undefined) {
    r = node.events.some((e) => ('fork' in e ? feedsHeld(e.fork, held, memo) : held.has(e.fill)));
    memo.set(node, r);
  }
  return r;
}

/**
 * Draws the recorded stream from `rng`: into held placeholders, or into scratch and dropped. Only what
 * positions a held draw is drawn: a forked stream feeding nothing held costs its fork's one draw, and
 * nothing after a stream's last held draw (or fork feeding one) is drawn at all — so a pipeline rank
 * skips the other stages' layers (each layer draws from its own fork).
 */
function replay(rng: Rng, node: RecordingRng, held: Set<Fill>, memo = new Map<RecordingRng, boolean>()): void {
  const events = node.events;
  let last = events.length - 1;
  while (last >= 0) {
    const e = events[last]!;
    if ('fork' in e ? feedsHeld(e.fork, held, memo) : held.has(e.fill)) break;
    last--;
  }
  for (const e of events.slice(0, last + 1)) {
    if ('fork' in e) {
      const child = rng.fork();
      if (feedsHeld(e.fork, held, memo)) replay(child, e.fork, held, memo);
      continue;
    }
    const f = e.fill;
    const draw = (out: FloatArray) =>
      f.dist === 'normal' ? rng.fillNormal(out, f.a, f.b) : rng.fillUniform(out, f.a, f.b);
    const chunk = new f.kind(Math.min(SCRATCH, f.length));
    const target = held.has(f) ? (f.placeholder!.data as FloatArray) : null;
    for (let at = 0; at < f.length; at += chunk.length) {
      const part = chunk.length <= f.length - at ? chunk : chunk.subarray(0, f.length - at);
      draw(part);
      target?.set(part, at);
    }
  }
}

export interface HeldBuildOptions {
  seed: number;
  /** init std of the projections (the model's default when absent) */
  std?: number;
  dtype?: 'f32' | 'f64';
}

export interface HeldBuild {
  model: DeepseekV3ForCausalLM;
  /** bytes of state-dict storage given values (the held entries); the rest are untouched placeholders */
  materializedBytes: number;
}

/**
 * `new DeepseekV3ForCausalLM(config, { seed, std, dtype })` on the CPU, with memory only for the
 * state-dict entries `keep` accepts (it sees the constructed model, e.g. to plan the shards): those
 * hold exactly the whole model's values, every other entry is a zero placeholder the OS never maps.
 */
export function buildHeld(
  config: ModelConfig,
  o: HeldBuildOptions,
  keepOf: (model: DeepseekV3ForCausalLM) => (name: string) => boolean,
): HeldBuild {
  const dtype = o.dtype ?? 'f32';
  const pending = new Map<StorageArray, Fill>();
  const fills: Fill[] = [];
  const root = new RecordingRng(dtype, pending, fills);
  // Values set without the Rng (norm gains, biases, buffers), by the placeholder standing for them.
  const plain = new Map<CpuStorage, StorageArray>();
  const model = cpu.deferUploads(
    () =>
      new DeepseekV3ForCausalLM(config, {
        rng: root,
        dtype: dtype as DType,
        backend: cpu,
        ...(o.std !== undefined && { std: o.std }),
      }),
    (source, placeholder) => {
      const f = pending.get(source);
      if (!f) plain.set(placeholder, source);
      else {
        f.placeholder = placeholder;
        pending.delete(source);
      }
    },
  );
  const keep = keepOf(model);
  const byPlaceholder = new Map(fills.map((f) => [f.placeholder, f]));
  const held = new Set<Fill>();
  let materializedBytes = 0;
  let mapped = 0;
  for (const [name, t] of Object.entries(model.stateDict())) {
    const storage = t.storage as CpuStorage;
    const f = byPlaceholder.get(storage);
    if (f) mapped++;
    if (!keep(name)) continue;
    materializedBytes += storage.data.byteLength;
    if (f) held.add(f);
    else {
      const source = plain.get(storage);
      if (source) (storage.data as Float32Array).set(source as Float32Array);
    }
  }
  if (mapped !== fills.length)
    throw new Error(
      `internal: ${fills.length - mapped} of the model's ${fills.length} random fills did not become a state-dict entry as they were handed back (a dtype conversion?); cannot build only the held shards`,
    );
  replay(new Rng(o.seed), root, held);
  return { model, materializedBytes };
}
