// Speculative decoding with MTP drafts (DeepSeek-V3 §5.4.3): the MTP modules draft the next tokens,
// the main model verifies the whole draft in one forward, accepted tokens are kept, the caches roll
// back past the first rejected one, and the main model's own prediction there (or after a fully accepted
// draft, a bonus token) is emitted too. Greedy verification emits exactly the tokens plain greedy decoding
// would; stochastic verification (accept x with probability min(1, p(x)/q(x)), else sample from
// normalize(max(0, p − q))) emits tokens distributed exactly as the target sampler's p. Sampling and
// both verifications run where the logits are (device ops mtp.sample / mtp.verify / argmax): a step
// reads back only token ids.
import { argmax as argmaxOp, concat, narrow, reshape, tensor, Tensor, type Rng } from '@dsv3/core';
import { readTokens, sampleTokens, samplingTensors } from './device-sampler.js';
import { readVerdicts, verifyDrafts } from './device-verify.js';
import { argmax, checkSampling, isGreedy, sampleFrom, type SamplingOptions } from './sampler.js';

/** Logits rows [n, V] on the device, or already on the host (row-major). */
export type LogitsRows = Tensor | Float32Array | Float64Array;

export interface StepOutput {
  /** Logits [n, V], one row per input position. */
  logits: LogitsRows;
  /**
   * Hidden states [n, D] (or [1, n, D]), one per input position: for the main model its last hidden
   * state *before* the final norm, for MTP depth d the block output h^{d+1}. Stays on the device.
   */
  hidden: Tensor;
}

/**
 * What speculative decoding needs from a model. `S` is the model's per-sequence handle (its KV or
 * latent-cache state). Caches grow by exactly the number of positions fed and shrink only through the
 * truncate methods. MTP module d at position i consumes (hidden_i from the stage before, token t_{i+d+1})
 * and predicts t_{i+d+2}; its block attends over its own cache of earlier positions.
 */
export interface SpeculativeModel<S = unknown> {
  readonly vocabSize: number;
  /** Number of MTP modules available for drafting (V3: 1); 0 allows only plain decoding. */
  readonly numMtpModules: number;
  /**
   * Main model on `tokens`, appended at position `length` of the sequence's cache (the number of tokens
   * it already holds). Returns logits [n, V] and pre-final-norm hidden states [n, D].
   */
  forward(seq: S, tokens: readonly number[]): Promise<StepOutput>;
  /** Rolls the main model's cache back to its first `length` positions. */
  truncate(seq: S, length: number): void | Promise<void>;
  /**
   * MTP module `depth` (0-based) on n new positions appended to its own cache: `hidden` [n, D] are the
   * previous stage's hidden states at those positions (main model for depth 0, module depth − 1
   * otherwise) and `tokens` the n tokens t_{i+depth+1}. Returns logits [n, V] (row i predicts
   * t_{i+depth+2}) and the module's hidden states [n, D].
   */
  draft(seq: S, depth: number, hidden: Tensor, tokens: readonly number[]): Promise<StepOutput>;
  /** Rolls MTP module `depth`'s cache back to its first `length` positions. */
  truncateDraft(seq: S, depth: number, length: number): void | Promise<void>;
}

/** Accepted-draft counts per draft position j (0-based: j = 0 is the token after next). */
export class AcceptanceStats {
  /** Draft-verify steps (each one main-model forward). */
  steps = 0;
  /** Tokens emitted by those steps (accepted drafts + one from the main model each). */
  emitted = 0;
  mainForwards = 0;
  draftForwards = 0;
  /** Steps that drafted a token at position j. */
  proposed: number[] = [];
  /** Steps where drafts 0..j-1 were all accepted, so draft j was judged. */
  reached: number[] = [];
  /** Steps where drafts 0..j were all accepted. */
  accepted: number[] = [];

  record(drafted: number, accepted: number): void {
    this.steps++;
    this.emitted += accepted + 1;
    for (let j = 0; j < drafted; j++) {
      this.proposed[j] = (this.proposed[j] ?? 0) + 1;
      if (j <= accepted) this.reached[j] = (this.reached[j] ?? 0) + 1;
      if (j < accepted) this.accepted[j] = (this.accepted[j] ?? 0) + 1;
    }
  }

  /** P(draft j accepted | drafts before it accepted). */
  conditionalRate(j: number): number {
    return (this.accepted[j] ?? 0) / Math.max(this.reached[j] ?? 0, 1);
  }
  /** P(drafts 0..j all accepted): the fraction of steps that emitted draft j. */
  rate(j: number): number {
    return (this.accepted[j] ?? 0) / Math.max(this.proposed[j] ?? 0, 1);
  }
  /** Mean tokens emitted per main-model forward (1 without drafting). */
  get tokensPerStep(): number {
    return this.emitted / Math.max(this.steps, 1);
  }

  merge(o: AcceptanceStats): this {
    this.steps += o.steps;
    this.emitted += o.emitted;
    this.mainForwards += o.mainForwards;
    this.draftForwards += o.draftForwards;
    const add = (a: number[], b: number[]): void => b.forEach((v, j) => (a[j] = (a[j] ?? 0) + v));
    add(this.proposed, o.proposed);
    add(this.reached, o.reached);
    add(this.accepted, o.accepted);
    return this;
  }

  summary(): {
    steps: number;
    emitted: number;
    tokensPerStep: number;
    perPosition: { proposed: number; accepted: number; rate: number; conditionalRate: number }[];
  } {
    return {
      steps: this.steps,
      emitted: this.emitted,
      tokensPerStep: this.tokensPerStep,
      perPosition: this.proposed.map((p, j) => ({
        proposed: p,
        accepted: this.accepted[j] ?? 0,
        rate: this.rate(j),
        conditionalRate: this.conditionalRate(j),
      })),
    };
  }
}

export interface Verdict {
  /** Number of leading drafts accepted. */
  accepted: number;
  /** The token emitted after them: the main model's correction at the first rejection, or a bonus token. */
  next: number;
}

/** Row j of [n, V] logits on the host. */
function row(
  flat: ArrayLike<number> & { subarray(a: number, b: number): ArrayLike<number> },
  j: number,
  v: number,
): ArrayLike<number> {
  return flat.subarray(j * v, (j + 1) * v);
}

/**
 * Greedy verification: targetLogits holds K + 1 rows (host, row-major [K + 1, V]); draft j is accepted
 * while it equals the argmax of row j; the emitted token after them is the argmax of the next row.
 */
export function verifyGreedy(
  drafts: readonly number[],
  targetLogits: Float32Array | Float64Array,
  vocabSize: number,
): Verdict {
  checkRows(targetLogits, drafts.length + 1, vocabSize);
  let a = 0;
  while (a < drafts.length && drafts[a] === argmax(row(targetLogits, a, vocabSize))) a++;
  return { accepted: a, next: argmax(row(targetLogits, a, vocabSize)) };
}

/**
 * Speculative-sampling verification on the host in float64: the reference of the device op the decoder
 * uses (verifyDrafts). `p(j)` is the target distribution after accepted drafts 0..j-1
 * (rows 0..K, computed only when reached); `q[j]` the distribution draft j was drawn from, or null for a
 * greedy (one-hot) draft. Accepts x_j with probability min(1, p_j(x_j) / q_j(x_j)); at the first rejection
 * samples from normalize(max(0, p_j − q_j)); after K acceptances samples a bonus token from p_K.
 */
export function verifyStochastic(
  drafts: readonly number[],
  q: readonly (ArrayLike<number> | null)[],
  p: (j: number) => ArrayLike<number>,
  rng: Rng,
): Verdict {
  if (q.length !== drafts.length)
    throw new Error(`verifyStochastic: ${q.length} draft distributions for ${drafts.length} drafts`);
  for (let j = 0; j < drafts.length; j++) {
    const x = drafts[j]!;
    const pj = p(j);
    const qj = q[j];
    const px = pj[x]!;
    const qx = qj ? qj[x]! : 1;
    const u = rng.uniform();
    if (qx <= 0 ? px > 0 : u * qx < px) continue;
    const residual = new Float64Array(pj.length);
    let mass = 0;
    for (let i = 0; i < pj.length; i++) {
      const r = pj[i]! - (qj ? qj[i]! : i === x ? 1 : 0);
      if (r > 0) {
        residual[i] = r;
        mass += r;
      }
    }
    return { accepted: j, next: sampleFrom(mass > 0 ? residual : pj, rng) };
  }
  return { accepted: drafts.length, next: sampleFrom(p(drafts.length), rng) };
}

function checkRows(flat: ArrayLike<number>, n: number, v: number): void {
  if (flat.length !== n * v) throw new Error(`expected logits [${n}, ${v}] (${n * v} values), got ${flat.length}`);
}

function checked<A extends ArrayLike<number>>(flat: A, n: number, v: number): A {
  checkRows(flat, n, v);
  return flat;
}

/** Logits [n, V] as an f32 tensor: device logits stay where they are, host rows go to the CPU. */
function rowsTensor(l: LogitsRows, n: number, v: number): Tensor {
  if (!(l instanceof Tensor)) return tensor(Float32Array.from(checked(l, n, v)), { shape: [n, v], dtype: 'f32' });
  if (l.size !== n * v) throw new Error(`expected logits [${n}, ${v}] (${n * v} values), got [${l.shape.join(', ')}]`);
  if (l.dtype !== 'f32') throw new TypeError(`logits must be f32, got ${l.dtype}`);
  return reshape(l, [n, v]);
}

/**
 * The argmax of rows [from, n) of logits [n, V]: on the device for a tensor (only the ids are read
 * back), on the host for host rows.
 */
async function greedyIds(l: LogitsRows, n: number, v: number, from = 0): Promise<number[]> {
  if (!(l instanceof Tensor)) {
    checkRows(l, n, v);
    return Array.from({ length: n - from }, (_, j) => argmax(row(l, from + j, v)));
  }
  if (l.size !== n * v) throw new Error(`expected logits [${n}, ${v}] (${n * v} values), got [${l.shape.join(', ')}]`);
  const rows = narrow(reshape(l, [n, v]), 0, from, n - from);
  return Array.from(await argmaxOp(rows, -1).data());
}

function asRows(h: Tensor, n: number): Tensor {
  const r = h.ndim === 3 && h.shape[0] === 1 ? reshape(h, [h.shape[1]!, h.shape[2]!]) : h;
  if (r.ndim !== 2 || r.shape[0] !== n)
    throw new Error(`hidden states must be [${n}, D] (or [1, ${n}, D]), got [${h.shape.join(', ')}]`);
  return r;
}

/** Hidden-state rows for positions [base, base + rows). */
class RowBuffer {
  base = 0;
  t: Tensor | null = null;
  get end(): number {
    return this.base + (this.t?.shape[0] ?? 0);
  }
  rows(from: number, to: number): Tensor {
    if (!this.t || from < this.base || to > this.end || from >= to)
      throw new Error(`internal: hidden rows [${from}, ${to}) requested, [${this.base}, ${this.end}) held`);
    return narrow(this.t, 0, from - this.base, to - from);
  }
  /** Appends rows for positions starting at `at`, which must be this.end. */
  append(t: Tensor, at: number): void {
    if (!this.t) {
      this.base = at;
      this.t = t;
    } else {
      if (at !== this.end) throw new Error(`internal: appending hidden rows at ${at}, buffer ends at ${this.end}`);
      this.t = concat([this.t, t], 0);
    }
  }
  /** Drops rows at positions >= end. */
  cut(end: number): void {
    if (!this.t || end >= this.end) return;
    if (end <= this.base) {
      this.t = null;
      this.base = end;
    } else this.t = narrow(this.t, 0, 0, end - this.base);
  }
  /** Drops rows at positions < from. */
  dropBefore(from: number): void {
    if (!this.t || from <= this.base) return;
    if (from >= this.end) {
      this.base = this.end;
      this.t = null;
    } else {
      this.t = narrow(this.t, 0, from - this.base, this.end - from);
      this.base = from;
    }
  }
}

export interface SpeculativeOptions {
  /** Draft tokens per step, K ≤ numMtpModules (default: numMtpModules); 0 = plain decoding. */
  draftTokens?: number;
  /** Target sampling; temperature 0 (the default) = greedy decoding with exact-match verification. */
  sampling?: SamplingOptions;
  /**
   * How drafts are drawn when sampling: 'greedy' (the MTP argmax; q is one-hot) or sampling options
   * for q (default: the target's). Ignored in greedy decoding, where drafts are always the argmax.
   */
  draftSampling?: 'greedy' | SamplingOptions;
  /** Seed of the device draws (each draw of the sequence takes the next counter of this seed). */
  seed?: number;
  /** Statistics to add to (default: a fresh AcceptanceStats). */
  stats?: AcceptanceStats;
}

/**
 * Drives one sequence: prefill(), then step() repeatedly. Invariant between steps: the main cache holds
 * every token but the last; MTP module d's cache holds positions whose inputs are all real tokens.
 */
export class SpeculativeDecoder<S = unknown> {
  readonly tokens: number[] = [];
  readonly stats: AcceptanceStats;
  readonly draftTokens: number;
  private readonly sampling: SamplingOptions;
  private readonly draftSampling: 'greedy' | SamplingOptions;
  private readonly seed: number;
  /** draws taken so far: the counter of the next one */
  private counter = 0;
  private readonly mainOut = new RowBuffer();
  private readonly stages: { len: number; out: RowBuffer }[] = [];
  private started = false;

  constructor(
    readonly model: SpeculativeModel<S>,
    readonly seq: S,
    opts: SpeculativeOptions = {},
  ) {
    const k = opts.draftTokens ?? model.numMtpModules;
    if (!(Number.isInteger(k) && k >= 0 && k <= model.numMtpModules))
      throw new RangeError(
        `draftTokens ${k} must be an integer in [0, ${model.numMtpModules}] (the model's MTP modules)`,
      );
    this.draftTokens = k;
    this.sampling = { temperature: 0, ...opts.sampling };
    checkSampling(this.sampling);
    this.draftSampling = opts.draftSampling ?? this.sampling;
    if (this.draftSampling !== 'greedy') checkSampling(this.draftSampling);
    this.seed = opts.seed ?? 0;
    this.stats = opts.stats ?? new AcceptanceStats();
    for (let d = 0; d < k; d++) this.stages.push({ len: 0, out: new RowBuffer() });
  }

  get greedy(): boolean {
    return isGreedy(this.sampling);
  }

  /** One token drawn on the device from logits [1, V] (the next counter of the seed); reads back the id. */
  private async sample(row: Tensor, sampling: SamplingOptions): Promise<number> {
    const params = samplingTensors([{ ...sampling, seed: this.seed, counter: this.counter++ }], row.backend);
    return (await readTokens(sampleTokens(row, params)))[0]!;
  }

  /** Runs the prompt through the main model and returns the first generated token. */
  async prefill(prompt: readonly number[]): Promise<number> {
    if (this.started) throw new Error('prefill() was already called on this decoder');
    if (prompt.length === 0) throw new RangeError('prefill needs at least one prompt token');
    this.started = true;
    const v = this.model.vocabSize;
    const out = await this.model.forward(this.seq, prompt);
    this.stats.mainForwards++;
    const n = prompt.length;
    if (this.draftTokens > 0) this.mainOut.append(asRows(out.hidden, n), 0);
    const first = this.greedy
      ? (await greedyIds(out.logits, n, v, n - 1))[0]!
      : await this.sample(narrow(rowsTensor(out.logits, n, v), 0, n - 1, 1), this.sampling);
    this.tokens.push(...prompt, first);
    return first;
  }

  /** One draft-and-verify step; returns the tokens it emitted (at least one). */
  async step(): Promise<number[]> {
    if (!this.started) throw new Error('call prefill() before step()');
    const v = this.model.vocabSize;
    const m = this.tokens.length - 1;
    const k = this.draftTokens;
    const drafts: number[] = [];
    /** the logits row each sampled draft was drawn from (none for greedy drafts) */
    const qRows: Tensor[] = [];
    const tokenAt = (j: number): number => (j <= m ? this.tokens[j]! : drafts[j - m - 1]!);

    // Draft: module d catches up on positions [len_d, m) and drafts t_{m+d+1} from its last row.
    for (let d = 0; d < k; d++) {
      const st = this.stages[d]!;
      const from = st.len;
      const x = d === 0 ? this.mainOut.rows(from, m) : this.stages[d - 1]!.out.rows(from, m);
      const toks: number[] = [];
      for (let i = from; i < m; i++) toks.push(tokenAt(i + d + 1));
      const out = await this.model.draft(this.seq, d, x, toks);
      this.stats.draftForwards++;
      const n = m - from;
      st.out.append(asRows(out.hidden, n), from);
      st.len = m;
      if (this.greedy || this.draftSampling === 'greedy') {
        drafts.push((await greedyIds(out.logits, n, v, n - 1))[0]!);
      } else {
        const last = narrow(rowsTensor(out.logits, n, v), 0, n - 1, 1);
        drafts.push(await this.sample(last, this.draftSampling));
        qRows.push(last);
      }
    }

    // Verify the whole draft in one main-model forward over [t_m, d_1..d_K].
    const out = await this.model.forward(this.seq, [this.tokens[m]!, ...drafts]);
    this.stats.mainForwards++;
    let verdict: Verdict;
    if (this.greedy) {
      // greedy verification needs only each row's argmax: read back k + 1 ids, not the logits
      const best = await greedyIds(out.logits, k + 1, v);
      let a = 0;
      while (a < k && drafts[a] === best[a]) a++;
      verdict = { accepted: a, next: best[a]! };
    } else {
      // stochastic verification on the device: reads back (accepted, next) only
      const target = reshape(rowsTensor(out.logits, k + 1, v), [1, k + 1, v]);
      const q = qRows.length ? reshape(concat(qRows, 0), [1, k, v]) : null;
      const settings = { target: this.sampling, draft: q ? this.draftSampling : 'greedy', seed: this.seed };
      [verdict] = (await readVerdicts(verifyDrafts(target, q, [drafts], [{ ...settings, counter: this.counter }]))) as [
        Verdict,
      ];
      this.counter += k + 1;
    }
    const a = verdict.accepted;
    const emitted = [...drafts.slice(0, a), verdict.next];

    // Roll back: the main cache keeps t_m and the accepted drafts; each module keeps the positions whose
    // (drafted) input tokens were accepted.
    if (a < k) await this.model.truncate(this.seq, m + a + 1);
    if (k > 0) this.mainOut.append(narrow(asRows(out.hidden, k + 1), 0, 0, a + 1), m);
    for (let d = 0; d < k; d++) {
      const st = this.stages[d]!;
      const keep = Math.min(st.len, m + a - d);
      if (keep < st.len) {
        await this.model.truncateDraft(this.seq, d, keep);
        st.len = keep;
      }
      st.out.cut(keep);
    }
    // Forget hidden rows no stage will read again.
    if (k > 0) this.mainOut.dropBefore(this.stages[0]!.len);
    for (let d = 0; d < k; d++) this.stages[d]!.out.dropBefore(d + 1 < k ? this.stages[d + 1]!.len : Infinity);

    this.tokens.push(...emitted);
    this.stats.record(k, a);
    return emitted;
  }
}

export interface GenerateOptions extends SpeculativeOptions {
  maxNewTokens: number;
  /** Stop after emitting any of these. */
  stopTokens?: readonly number[];
}

export interface GenerateResult<S = unknown> {
  /** The generated tokens (without the prompt), at most maxNewTokens, ending at a stop token if one came. */
  tokens: number[];
  stats: AcceptanceStats;
  /** The decoder, to continue the sequence (its `tokens` hold the prompt and everything emitted, uncut). */
  decoder: SpeculativeDecoder<S>;
}

/**
 * Generates up to maxNewTokens after `prompt` on a fresh sequence handle: speculative when draftTokens > 0,
 * plain decoding (one main forward per token) with draftTokens: 0. Steps may produce tokens past the limit
 * or a stop token; they are cut from the result (the decoder keeps them).
 */
export async function generate<S>(
  model: SpeculativeModel<S>,
  seq: S,
  prompt: readonly number[],
  opts: GenerateOptions,
): Promise<GenerateResult<S>> {
  if (!(Number.isInteger(opts.maxNewTokens) && opts.maxNewTokens >= 0))
    throw new RangeError(`maxNewTokens must be a non-negative integer, got ${opts.maxNewTokens}`);
  const dec = new SpeculativeDecoder(model, seq, opts);
  const out: number[] = [];
  const stop = new Set(opts.stopTokens ?? []);
  const take = (ts: readonly number[]): boolean => {
    for (const t of ts) {
      if (out.length >= opts.maxNewTokens) return false;
      out.push(t);
      if (stop.has(t)) return false;
    }
    return out.length < opts.maxNewTokens;
  };
  if (opts.maxNewTokens > 0 && take([await dec.prefill(prompt)])) {
    while (take(await dec.step()));
  }
  return { tokens: out, stats: dec.stats, decoder: dec };
}
