// A warm-up pass at load: one prefill and WARMUP_DECODE_STEPS decode steps through a throwaway cache, so
// the first real request does not pay one-time costs — V8 optimizing the model's JavaScript (its first
// calls run in the interpreter), the GEMM engine's worker threads starting, scratch memory touched for
// the first time — and the memory those compiles freed goes back to the OS.
// A serving engine does the same before it takes traffic (vLLM's profile run). The model is unchanged.
import { noGrad, tensor, trimNativeHeap, type Tensor } from '@dsv3/core';
import { sampleTokens, samplingTensors } from '@dsv3/mtp';
import type { ModelConfig } from './config.js';
import type { DeepseekV3ForCausalLM } from './model.js';

/** The warm-up the CLIs run by default (dsv3-model bench, dsv3-serve), in prompt tokens. */
export const DEFAULT_WARMUP_TOKENS = 128;

/**
 * Decode steps of the warm-up (fewer when the prefill leaves fewer positions). With one step, the first
 * request's early decode steps still paid V8's optimizing compiles: on V3-mini the first generation
 * after load ran 1.2-1.9x the later ones' ms/step; with 32 it ran within ~1.1x (docs/benchmarks.md,
 * issue 13, tenth session). 64 once the decode path stopped deoptimizing right after its first compiles
 * (arrays made by map(), eighteenth session): a function called once a layer a step reaches V8's
 * ~500 calls after its last feedback change past 32 steps, so its first compile fell in the request;
 * with 64 the first generation's FP8 steps over 20 ms went from 15 to 2 of 64 in the one clean
 * alternating round, 4 of 64 in the end-of-session check (same section).
 */
export const WARMUP_DECODE_STEPS = 64;

/** `tokens`, at most what a model of `config` can warm up with (max_position_embeddings - 1). */
export function warmupTokensWithin(config: ModelConfig, tokens: number): number {
  return Math.min(tokens, config.maxPositionEmbeddings - 1);
}

/**
 * CPU: runs a `tokens`-token prefill and up to WARMUP_DECODE_STEPS greedy decode steps (as many as the
 * positions left allow, at least one) on a cache of its own (disposed after), sampling on the device and
 * reading the token back as a request does.
 */
export function warmUp(model: DeepseekV3ForCausalLM, tokens: number): void {
  const max = model.config.maxPositionEmbeddings - 1;
  if (!Number.isInteger(tokens) || tokens < 1 || tokens > max)
    throw new RangeError(
      `warm-up: tokens must be an integer in [1, ${max}] (max_position_embeddings - 1), got ${tokens}`,
    );
  const backend = model.backend;
  if (backend && backend.name !== 'cpu')
    throw new Error(`warm-up: runs on the CPU backend (its costs are the CPU engine's), got ${backend.name}`);
  const V = model.config.vocabSize;
  noGrad(() => {
    const steps = Math.min(WARMUP_DECODE_STEPS, model.config.maxPositionEmbeddings - tokens);
    const cache = model.newCache(tokens + steps);
    try {
      const seq = [cache.allocateSequence()];
      const ids = Int32Array.from({ length: tokens }, (_, i) => (i * 7919 + 13) % V);
      // greedy, each step fed its own token, half the steps as a greedy request's decode runs them (on the
      // CPU the first also packs the head's screen, core's argmaxProduct), half through step()'s logits and
      // the sampler, as a sampled request's do (their first calls in a measured generation deoptimized at
      // every step, docs/benchmarks.md, issue 13, eleventh session)
      const sampler = samplingTensors([{ temperature: 0 }], backend);
      const sampled = (logits: Tensor): number[] => {
        const id = sampleTokens(logits, sampler).dataSync() as Int32Array;
        logits.dispose(); // as a request's decode does: the next step's host copy reuses the array
        return [Math.max(id[0]!, 0)];
      };
      let id = model.greedyStepSync(cache, seq, tensor(ids, { shape: [1, tokens], dtype: 'i32', backend }));
      for (let s = 0; s < steps; s++) {
        const next = tensor(Int32Array.from(id), { shape: [1, 1], dtype: 'i32', backend });
        id =
          s % 2 === 0
            ? model.greedyStepSync(cache, seq, next)
            : sampled(model.step(cache, seq, next, { hidden: false }).logits);
      }
    } finally {
      cache.dispose();
    }
  });
  // The warm-up's compiles left V8's freed compiler zones in the C heap (~17 MiB on V3-mini): back to
  // the OS, so they do not add to the first request's peak.
  trimNativeHeap();
}
