// Speculative-sampling verification on the device: one op ('mtp.verify', CPU and WGSL kernels) takes a
// sequence's K + 1 target logits rows, the K rows its drafts were sampled from and the drafts, and
// returns (accepted drafts, next token), so a stochastic speculative step reads back only token ids.
// The test is DeepSeek-V3's (Leviathan et al.'s) rule: accept x_j with probability min(1, p_j(x_j) /
// q_j(x_j)); at the first rejection draw from normalize(max(0, p_j − q_j)); after K acceptances draw a
// bonus token from p_K. p and q are the sampling distributions of mtp.sample (temperature → top-k →
// top-p); the uniforms come from the same counter-based hash: counters c .. c + K − 1 for the tests,
// c + K for the final draw. verifyStochastic (speculative.ts) is the same rule on the host in float64.
import { concat, exec1, tensor, type Tensor } from '@dsv3/core';
import type { Verdict } from './speculative.js';
import { VERIFY_OP } from './register.js';
import { checkSampling, type SamplingOptions } from './sampler.js';

/** One sequence's verification settings. */
export interface VerifyRow {
  /** the target sampling (temperature > 0: greedy targets verify by argmax) */
  target: SamplingOptions;
  /** how the drafts were drawn: 'greedy' (one-hot q) or their sampling options */
  draft: 'greedy' | SamplingOptions;
  seed: number;
  /** first counter of the K + 1 draws this verification uses */
  counter: number;
}

const isU32 = (x: number): boolean => Number.isInteger(x) && x >= 0 && x <= 0xffffffff;

/**
 * (accepted, next) i32 [B, 2] for B sequences: `target` f32 [B, K + 1, V], `draftLogits` f32 [B, K, V]
 * (the rows each draft was sampled from; null when every draft is greedy), `drafts` the K drafted ids
 * per sequence. Runs on the target's backend. A next token of -1 means a row had no finite logit.
 */
export function verifyDrafts(
  target: Tensor,
  draftLogits: Tensor | null,
  drafts: readonly (readonly number[])[],
  rows: readonly VerifyRow[],
): Tensor {
  if (target.ndim !== 3 || target.dtype !== 'f32')
    throw new RangeError(
      `verifyDrafts: target logits must be f32 [B, K + 1, V], got ${target.dtype} [${target.shape}]`,
    );
  const [B, K1, V] = target.shape as [number, number, number];
  const K = K1 - 1;
  if (rows.length !== B || drafts.length !== B)
    throw new RangeError(`verifyDrafts: ${B} sequences of logits, ${rows.length} settings, ${drafts.length} drafts`);
  if (draftLogits && (draftLogits.dtype !== 'f32' || draftLogits.shape.join() !== [B, K, V].join()))
    throw new RangeError(
      `verifyDrafts: draft logits must be f32 [${B}, ${K}, ${V}], got ${draftLogits.dtype} [${draftLogits.shape}]`,
    );
  const settings = new Float32Array(4 * B);
  const topK = new Int32Array(2 * B);
  const keys = new Uint32Array(2 * B);
  const ids = new Int32Array(B * K);
  rows.forEach((r, b) => {
    checkSampling(r.target);
    if (!((r.target.temperature ?? 1) > 0))
      throw new RangeError(
        `verifyDrafts: sequence ${b}: the target temperature must be > 0 (greedy verifies by argmax)`,
      );
    const q = r.draft === 'greedy' ? { temperature: 0 } : r.draft;
    checkSampling(q);
    if (!draftLogits && (q.temperature ?? 1) > 0)
      throw new RangeError(`verifyDrafts: sequence ${b} has sampled drafts but no draft logits were given`);
    if (!isU32(r.seed) || !isU32(r.counter) || r.counter + K > 0xffffffff)
      throw new RangeError(`verifyDrafts: sequence ${b}: seed and counter + K must be integers in [0, 2^32)`);
    if (drafts[b]!.length !== K || drafts[b]!.some((x) => !(Number.isInteger(x) && x >= 0 && x < V)))
      throw new RangeError(`verifyDrafts: sequence ${b}: expected ${K} draft ids in [0, ${V}), got [${drafts[b]}]`);
    ids.set(drafts[b]!, b * K);
    settings.set([r.target.temperature ?? 1, r.target.topP ?? 1, q.temperature ?? 1, q.topP ?? 1], 4 * b);
    topK.set([r.target.topK ?? 0, q.topK ?? 0], 2 * b);
    keys.set([r.seed, r.counter], 2 * b);
  });
  const backend = target.backend;
  const logits = draftLogits ? concat([target, draftLogits], 1) : target;
  return exec1(
    VERIFY_OP,
    [
      logits,
      tensor(ids, { shape: [B, K], dtype: 'i32', backend }),
      tensor(settings, { shape: [B, 4], dtype: 'f32', backend }),
      tensor(topK, { shape: [B, 2], dtype: 'i32', backend }),
      tensor(keys, { shape: [B, 2], dtype: 'u32', backend }),
    ],
    { draftRows: draftLogits !== null },
  );
}

/** Reads verdicts back (the one read of a verification), failing on rows that had nothing to sample. */
export async function readVerdicts(t: Tensor): Promise<Verdict[]> {
  const d = (await t.data()) as Int32Array;
  const out: Verdict[] = [];
  for (let b = 0; b < d.length / 2; b++) {
    if (d[2 * b + 1]! < 0)
      throw new RangeError(`verifyDrafts: sequence ${b}: a target row has no finite logit to sample from`);
    out.push({ accepted: d[2 * b]!, next: d[2 * b + 1]! });
  }
  return out;
}
