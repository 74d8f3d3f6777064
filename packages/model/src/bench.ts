// Generation throughput of a loaded model: a batch of fixed prompts prefilled in one step (logits of
// the last position only), then greedy decode steps feeding each row its own argmax back (taken on the
// device: a step reads back only the ids).
import { bytesPerElement, noGradAsync, tensor } from '@dsv3/core';
import { countParameters } from './accounting.js';
import { processThreadTimes, type ThreadTimes, threadTimesSince } from './cpu-wait.js';
import type { DeepseekV3ForCausalLM } from './model.js';

export interface GenerationBenchOptions {
  prefill: number;
  decode: number;
  batch?: number;
  /** Awaited between the prefill and the first decode step, outside both timings (e.g. to start a profiler). */
  afterPrefill?: () => Promise<void>;
}

export interface GenerationBenchResult {
  batch: number;
  prefillTokS: number;
  decodeTokS: number;
  /** The prefill's on-CPU and run-queue-wait ms summed over the process's threads (null off Linux). */
  prefillThreads: ThreadTimes | null;
  /** The greedy tokens of row 0 (so runs at different precisions can be compared). */
  tokens: number[];
  /** Wall milliseconds of each decode step (its logits' argmax read back included). */
  stepMs: number[];
}

/** Times prefill (batch x prefill tokens) and `decode` greedy steps; tokens/s count every row. */
export async function benchGeneration(
  model: DeepseekV3ForCausalLM,
  opts: GenerationBenchOptions,
): Promise<GenerationBenchResult> {
  const { prefill, decode } = opts;
  const batch = opts.batch ?? 1;
  const V = model.config.vocabSize;
  if (
    !(
      Number.isInteger(prefill) &&
      prefill >= 1 &&
      Number.isInteger(decode) &&
      decode >= 0 &&
      Number.isInteger(batch) &&
      batch >= 1
    )
  ) {
    throw new RangeError(
      `bench: prefill >= 1, decode >= 0 and batch >= 1 must be integers (got ${prefill}, ${decode}, ${batch})`,
    );
  }
  if (prefill + decode > model.config.maxPositionEmbeddings) {
    throw new RangeError(
      `bench: prefill ${prefill} + decode ${decode} exceeds max_position_embeddings ${model.config.maxPositionEmbeddings}`,
    );
  }
  return noGradAsync(async () => {
    const backend = model.backend;
    const cache = model.newCache(batch * (prefill + decode + 16));
    const seqs = Array.from({ length: batch }, () => cache.allocateSequence());
    const prompt = Int32Array.from({ length: batch * prefill }, (_, i) => (i * 7919 + 13) % V);
    const threadsBefore = processThreadTimes();
    let t = performance.now();
    // greedy: each sequence's token straight from the head (a bf16 head on the CPU screened by its 8-bit copy)
    let next = await model.greedyStep(cache, seqs, tensor(prompt, { shape: [batch, prefill], dtype: 'i32', backend }));
    const prefillTokS = (batch * prefill) / ((performance.now() - t) / 1000);
    const prefillThreads = threadTimesSince(threadsBefore, processThreadTimes());
    const tokens = [next[0]!];
    await opts.afterPrefill?.();
    const stepMs: number[] = [];
    t = performance.now();
    for (let s = 0; s < decode; s++) {
      const t0 = performance.now();
      next = await model.greedyStep(
        cache,
        seqs,
        tensor(Int32Array.from(next), { shape: [batch, 1], dtype: 'i32', backend }),
      );
      stepMs.push(performance.now() - t0);
      tokens.push(next[0]!);
    }
    const decodeTokS = decode === 0 ? 0 : (batch * decode) / ((performance.now() - t) / 1000);
    cache.dispose();
    return { batch, prefillTokS, decodeTokS, prefillThreads, tokens, stepMs };
  });
}

/**
 * Weight bytes a decode step reads per token (projections, routed experts actually chosen, head) at a
 * weight storage precision; FP8 keeps the head in bf16 unless `headDtype` is 'fp8'. (The routers, f32 in every mode,
 * and o_proj / kv_a_proj_with_mqa, bf16 from a BF16 checkpoint in FP8 mode, are counted at `weights`' precision:
 * under 3% of the bytes on V3 shapes.)
 */
export function weightBytesPerToken(
  model: DeepseekV3ForCausalLM,
  weights: 'f32' | 'bf16' | 'f16' | 'fp8',
  headDtype: 'bf16' | 'fp8' = 'bf16',
): number {
  const c = model.config;
  const all = countParameters(c).activatedMatmul;
  const head = c.vocabSize * c.hiddenSize;
  if (weights !== 'fp8') return (weights === 'f32' ? 4 : 2) * all;
  return all - head + (headDtype === 'fp8' ? 1 : 2) * head;
}

/**
 * Bytes of the weights the model holds, each parameter in its storage dtype (FP8's block scales, 1/4096
 * of the FP8 bytes, not counted): the "stored weights" peak RSS is measured against.
 */
export function storedWeightBytes(model: DeepseekV3ForCausalLM): number {
  let bytes = 0;
  for (const [, p] of model.namedParameters()) bytes += p.value.size * bytesPerElement(p.value.dtype);
  return bytes;
}

/** Host memory copy bandwidth (bytes/s), best of a few 256 MiB copies: the bound decode is held to. */
export function copyBandwidth(): number {
  const n = 64 << 20;
  const a = new Float32Array(n).fill(1),
    b = new Float32Array(n);
  let best = 0;
  for (let i = 0; i < 5; i++) {
    const t = performance.now();
    b.set(a);
    best = Math.max(best, (2 * n * 4) / ((performance.now() - t) / 1000)); // read + write
  }
  return best;
}
