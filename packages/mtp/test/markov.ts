// A Markov model whose distributions are known exactly, for the speculative-decoding tests.
import { Rng, tensor, type Backend, type Tensor } from '@dsv3/core';
import type { SpeculativeModel, StepOutput } from '../src/index.js';

export interface MarkovSeq {
  main: number[];
  mtp: number[][];
}

/**
 * Main model: the next token depends only on the current one (logits table P). MTP module d drafts from
 * its own imperfect table Q[d] of the token it reads. Hidden states carry absolute positions, so the
 * model can check that the decoder hands every stage the right rows and tokens. With a backend its
 * logits are f32 tensors there (hidden states stay on the CPU, so only the decoder's reads touch it).
 */
export class MarkovModel implements SpeculativeModel<MarkovSeq> {
  readonly P: number[][];
  readonly Q: number[][][];
  constructor(
    readonly vocabSize: number,
    readonly numMtpModules: number,
    seed: number,
    readonly backend?: Backend,
  ) {
    const rng = new Rng(seed);
    const table = (): number[][] =>
      Array.from({ length: vocabSize }, () => Array.from({ length: vocabSize }, () => 1.5 * rng.normal()));
    this.P = table();
    // drafts: the truth plus noise, so they are right often but not always
    this.Q = Array.from({ length: numMtpModules }, () => this.P.map((r) => r.map((v) => v + 1.2 * rng.normal())));
  }
  newSequence(): MarkovSeq {
    return { main: [], mtp: Array.from({ length: this.numMtpModules }, () => []) };
  }
  private out(rows: number[][], positions: number[]): StepOutput {
    const flat = rows.flat();
    return {
      logits: this.backend
        ? tensor(Float32Array.from(flat), { shape: [rows.length, this.vocabSize], dtype: 'f32', backend: this.backend })
        : Float64Array.from(flat),
      hidden: tensor(Float64Array.from(positions), { shape: [positions.length, 1], dtype: 'f64' }),
    };
  }
  async forward(seq: MarkovSeq, tokens: readonly number[]): Promise<StepOutput> {
    const start = seq.main.length;
    seq.main.push(...tokens);
    return this.out(
      tokens.map((t) => this.P[t]!),
      tokens.map((_, i) => start + i),
    );
  }
  truncate(seq: MarkovSeq, length: number): void {
    if (length > seq.main.length) throw new Error('truncate beyond the cache');
    seq.main.length = length;
  }
  async draft(seq: MarkovSeq, depth: number, hidden: Tensor, tokens: readonly number[]): Promise<StepOutput> {
    const c = seq.mtp[depth]!;
    const pos = Array.from(hidden.dataSync());
    const want = tokens.map((_, i) => c.length + i);
    if (pos.join() !== want.join())
      throw new Error(`depth ${depth}: hidden rows for positions ${pos.join()} where ${want.join()} were due`);
    c.push(...tokens);
    return this.out(
      tokens.map((t) => this.Q[depth]![t]!),
      want,
    );
  }
  truncateDraft(seq: MarkovSeq, depth: number, length: number): void {
    const c = seq.mtp[depth]!;
    if (length > c.length) throw new Error('truncateDraft beyond the cache');
    c.length = length;
  }
}
