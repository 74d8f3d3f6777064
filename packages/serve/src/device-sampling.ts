// An engine step's sampling where the logits are. Greedy requests take the argmax of each of their
// rows ('mtp.sample' at temperature 0; a draft is accepted while it equals them); sampled requests
// without a draft draw with 'mtp.sample', those with a draft are verified by 'mtp.verify' (DeepSeek-V3's
// speculative-sampling rule with the one-hot proposal of a greedy MTP draft). Every request draws from
// its own counter-based stream (seed, counter), so its tokens do not depend on its batch. All ids come
// back in one read. Logits are read back only for what needs them, only when asked: rows of requests
// with logit bias / penalties / min-p (sampled on the host, sampling.ts) and rows whose
// log-probabilities were requested.
import {
  add,
  concat,
  indexSelect,
  maximum,
  minimum,
  mul,
  narrow,
  reshape,
  sub,
  tensor,
  type Backend,
  type Tensor,
} from '@dsv3/core';
import { sampleTokens, samplingTensors, verifyDrafts, type RowSampling, type VerifyRow } from '@dsv3/mtp';
import { SamplingError, type RequestSampler, type SampleResult } from './sampling.js';

/** A request that samples this step: its sampler and the draft its logit rows verify. */
export interface StepRequest {
  sampler: RequestSampler;
  /** drafted tokens fed after its last token (its logit rows are 1 + draft.length) */
  draft: readonly number[];
}

/** What a request emits: the accepted drafts, then the main model's own token (emitted.length = accepted + 1). */
export interface Picked {
  emitted: SampleResult[];
  accepted: number;
}

type Plan =
  | { kind: 'argmax'; at: number; rows: number; logprobs: number }
  | { kind: 'sample'; at: number; logprobs: number }
  | { kind: 'verify'; at: number; rows: number; logprobs: number }
  | { kind: 'host'; at: number; rows: number };

/** Rows `rows` of x [R, V] (x itself, a narrow or a gather). */
function rowsOf(x: Tensor, rows: readonly number[]): Tensor {
  const first = rows[0]!;
  if (rows.every((r, i) => r === first + i))
    return first === 0 && rows.length === x.shape[0] ? x : narrow(x, 0, first, rows.length);
  return indexSelect(x, tensor(Int32Array.from(rows), { shape: [rows.length], dtype: 'i32', backend: x.backend }), 0);
}

const range = (from: number, n: number): number[] => Array.from({ length: n }, (_, i) => from + i);

/** Every sampling request's picks, read at once (a StepPicks read with nothing else). */
export async function pickTokens(
  logits: Tensor,
  requests: readonly (StepRequest | null)[],
  limit: number,
): Promise<(Picked | null)[]> {
  return (await new StepPicks(logits, requests, limit).read()).picked;
}

/**
 * One step's picks, enqueued at construction from `logits` [R, V] (rows in request order; a null
 * request is a prefill chunk that does not sample and owns one row; only ids below `limit` are
 * chosen) and read back by read(), which can carry more ids along in the same read (the next drafts).
 */
export class StepPicks {
  private readonly plans: (Plan | null)[];
  /** i32 [sampled rows + 2 · verified requests] (null when nothing is picked on the device) */
  private readonly ids: Tensor | null;
  private readonly verifyOffset: number;
  private readonly rowsRead: Tensor | null;
  private emittedIds: Tensor | null = null;
  private readonly backend: Backend;

  constructor(
    logits: Tensor,
    private readonly requests: readonly (StepRequest | null)[],
    private readonly limit: number,
  ) {
    this.backend = logits.backend;
    const V = logits.shape[1]!;
    const x = limit < V ? narrow(logits, 1, 0, limit) : logits;
    const sampleRows: number[] = [];
    const sampleSettings: RowSampling[] = [];
    const verifyRows: number[] = [];
    const verifySettings: VerifyRow[] = [];
    const verifyDraftIds: (readonly number[])[] = [];
    const readRows: number[] = [];
    let row = 0;
    this.plans = requests.map((req): Plan | null => {
      const first = row;
      row += 1 + (req?.draft.length ?? 0);
      if (!req) return null;
      const s = req.sampler;
      const p = s.params;
      const rows = 1 + req.draft.length;
      const logprobs = readRows.length;
      if (!s.onDevice) {
        readRows.push(...range(first, rows));
        return { kind: 'host', at: logprobs, rows };
      }
      if (p.logprobs !== null) readRows.push(...range(first, rows));
      const sampling = { temperature: p.temperature, topK: p.topK, topP: p.topP };
      if (s.greedy || !req.draft.length) {
        const at = sampleRows.length;
        const counter = s.greedy ? 0 : s.takeDraws(1);
        for (const r of s.greedy ? range(first, rows) : [first]) {
          sampleRows.push(r);
          sampleSettings.push({ ...sampling, seed: s.deviceSeed, counter });
        }
        return s.greedy ? { kind: 'argmax', at, rows, logprobs } : { kind: 'sample', at, logprobs };
      }
      const at = verifySettings.length;
      verifyRows.push(...range(first, rows));
      verifyDraftIds.push(req.draft);
      verifySettings.push({ target: sampling, draft: 'greedy', seed: s.deviceSeed, counter: s.takeDraws(rows) });
      return { kind: 'verify', at, rows, logprobs };
    });

    const parts: Tensor[] = [];
    if (sampleRows.length) parts.push(sampleTokens(rowsOf(x, sampleRows), samplingTensors(sampleSettings, x.backend)));
    this.verifyOffset = sampleRows.length;
    let verified: Tensor | null = null;
    if (verifySettings.length) {
      const rows = verifyRows.length / verifySettings.length;
      if (verifyDraftIds.some((d) => d.length !== rows - 1))
        throw new RangeError('pickTokens: the requests verified in one step must have drafts of one length');
      const target = reshape(rowsOf(x, verifyRows), [verifySettings.length, rows, limit]);
      verified = verifyDrafts(target, null, verifyDraftIds, verifySettings);
      parts.push(reshape(verified, [2 * verifySettings.length]));
      this.emittedIds = emittedAfterVerify(verified, verifyDraftIds);
    }
    this.ids = parts.length ? (parts.length === 1 ? parts[0]! : concat(parts, 0)) : null;
    this.rowsRead = readRows.length ? rowsOf(x, readRows) : null;
  }

  /**
   * Token ids on the device, i32 [Σ positions]: for each entry (request index, position j), the token
   * request i emits at j (its first rows; positions past what it accepts hold a valid id that is not
   * emitted), or a host token (a number). Requests sampled on the host have no device tokens.
   */
  tokensOnDevice(entries: readonly ({ request: number; position: number } | number)[]): Tensor {
    const host: number[] = [];
    const fromDevice = this.ids ? this.ids.size : 0;
    const index = entries.map((e) => {
      if (typeof e === 'number') {
        host.push(e);
        return -host.length;
      }
      const plan = this.plans[e.request];
      if (!plan || plan.kind === 'host') throw new Error(`StepPicks: request ${e.request} has no tokens on the device`);
      if (plan.kind === 'verify') return fromDevice + plan.at * plan.rows + e.position;
      return plan.at + (plan.kind === 'argmax' ? e.position : 0);
    });
    const backend = this.backend;
    // the host tokens go last (one padding value keeps the tensor non-empty)
    const src = concat(
      [
        ...(this.ids ? [this.ids] : []),
        ...(this.emittedIds ? [this.emittedIds] : []),
        tensor(Int32Array.from([...host, 0]), { shape: [host.length + 1], dtype: 'i32', backend }),
      ],
      0,
    );
    const base = src.size - host.length - 1;
    const at = index.map((i) => (i < 0 ? base - i - 1 : i));
    return indexSelect(src, tensor(Int32Array.from(at), { shape: [at.length], dtype: 'i32', backend }), 0);
  }

  /** Reads the picks (and `extra`, i32 ids enqueued after them, in the same read). */
  async read(extra: Tensor | null = null): Promise<{ picked: (Picked | null)[]; extra: Int32Array | null }> {
    const { limit, requests } = this;
    const parts = [this.ids, extra].filter((t): t is Tensor => t !== null);
    const ids = parts.length ? (parts.length === 1 ? parts[0]! : concat(parts, 0)) : null;
    const [idData, rowData] = await Promise.all([
      ids ? (ids.data() as Promise<Int32Array>) : null,
      this.rowsRead ? (this.rowsRead.data() as Promise<Float32Array>) : null,
    ]);
    const own = this.ids?.size ?? 0;
    const rowAt = (i: number): Float32Array => rowData!.subarray(i * limit, (i + 1) * limit);
    const idAt = (i: number): number => {
      const t = idData![i]!;
      if (t < 0) throw new SamplingError('no finite logit to sample from');
      return t;
    };
    const verifyAt = this.verifyOffset;
    const picked = this.plans.map((plan, i) => {
      if (!plan) return null;
      const { sampler: s, draft } = requests[i]!;
      if (plan.kind === 'host') return hostPick(s, draft, rowAt, plan.at);
      const raw = (j: number): Float32Array | null => (s.params.logprobs === null ? null : rowAt(plan.logprobs + j));
      let tokens: number[];
      if (plan.kind === 'argmax') {
        const best = range(plan.at, plan.rows).map(idAt);
        let accepted = 0;
        while (accepted < draft.length && best[accepted] === draft[accepted]) accepted++;
        tokens = best.slice(0, accepted + 1);
      } else if (plan.kind === 'sample') {
        tokens = [idAt(plan.at)];
      } else {
        const accepted = idData![verifyAt + 2 * plan.at]!;
        tokens = [...draft.slice(0, accepted), idAt(verifyAt + 2 * plan.at + 1)];
      }
      return { emitted: tokens.map((t, j) => s.emit(raw(j), t)), accepted: tokens.length - 1 };
    });
    return { picked, extra: extra && idData ? idData.subarray(own) : null };
  }
}

/**
 * The tokens each verified request emits at positions 0..K, i32 [B · (K + 1)], from the verdicts
 * (accepted a, next) [B, 2] and the drafts: draft j while j < a, then `next` (at every position from a
 * on: those past a are not emitted).
 */
function emittedAfterVerify(verdicts: Tensor, drafts: readonly (readonly number[])[]): Tensor {
  const B = drafts.length;
  const K = drafts[0]!.length;
  const backend = verdicts.backend;
  const accepted = narrow(verdicts, 1, 0, 1);
  const next = narrow(verdicts, 1, 1, 1);
  const j = tensor(Int32Array.from(range(0, K)), { shape: [1, K], dtype: 'i32', backend });
  const d = tensor(Int32Array.from(drafts.flat()), { shape: [B, K], dtype: 'i32', backend });
  // 1 where j < a, else 0
  const keep = minimum(maximum(sub(accepted, j), 0), 1);
  const tokens = add(next, mul(keep, sub(d, next)));
  return reshape(concat([tokens, next], 1), [B * (K + 1)]);
}

/** A request the device ops do not cover, on its host rows (first at `at`): verify the draft, then sample. */
function hostPick(s: RequestSampler, draft: readonly number[], rowAt: (i: number) => Float32Array, at: number): Picked {
  const emitted: SampleResult[] = [];
  let accepted = 0;
  for (; accepted < draft.length; accepted++) {
    const v = s.verify(rowAt(at + accepted), draft[accepted]!);
    emitted.push(v);
    if (!v.accepted) break;
  }
  if (accepted === draft.length) emitted.push(s.sample(rowAt(at + accepted)));
  return { emitted, accepted };
}

/** Greedy ids i32 [R] of the rows of `logits` [R, V] among the first `limit` (the MTP drafts), on their backend. */
export function argmaxOnDevice(logits: Tensor, limit: number): Tensor {
  const [R, V] = logits.shape as [number, number];
  const x = limit < V ? narrow(logits, 1, 0, limit) : logits;
  const greedy = samplingTensors(
    range(0, R).map(() => ({ temperature: 0 })),
    x.backend,
  );
  return sampleTokens(x, greedy);
}

/** argmaxOnDevice, read back. */
export async function argmaxRows(logits: Tensor, limit: number): Promise<number[]> {
  return Array.from((await argmaxOnDevice(logits, limit).data()) as Int32Array);
}
