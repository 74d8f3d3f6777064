// Token stream for training: documents → tokens (+ EOS after each) → packed sequences of seqLen →
// seeded shuffle buffer. Documents are split into train / held-out by a hash of their id. The
// position (epoch, sequences taken) resumes bit-exactly by replaying the epoch's deterministic order.
import { Rng } from '@dsv3/core';
import type { Tokenizer } from '@dsv3/model';
import { readFileSync } from 'node:fs';
import { BUILTIN_CORPUS, brownFiles, untagBrown } from './brown.js';
import { listSourceFiles, readDocuments, type Document, type SourceFile } from './documents.js';

export interface DataPosition {
  epoch: number;
  /** Training sequences already taken in this epoch. */
  taken: number;
}

export interface StreamOptions {
  path: string | null;
  tokenizer: Tokenizer;
  seqLen: number;
  seed: number;
  evalFraction: number;
  shuffleBuffer: number;
}

/** FNV-1a of a string, in [0, 1). */
export function hashUnit(s: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) {
    h ^= s.charCodeAt(i);
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return h / 2 ** 32;
}

function seededShuffle<T>(items: T[], rng: Rng): T[] {
  const a = [...items];
  for (let i = a.length - 1; i > 0; i--) {
    const j = Math.floor(rng.uniform() * (i + 1));
    [a[i], a[j]] = [a[j]!, a[i]!];
  }
  return a;
}

export class TokenStream {
  readonly files: SourceFile[];
  private position: DataPosition = { epoch: 0, taken: 0 };
  private iter: AsyncGenerator<Int32Array> | null = null;

  constructor(private readonly opts: StreamOptions) {
    if (opts.tokenizer.eosTokenId === null)
      throw new Error('the tokenizer has no EOS token, which packing puts between documents');
    this.files = opts.path === null || opts.path === BUILTIN_CORPUS ? brownFiles() : listSourceFiles(opts.path);
  }

  get dataPosition(): DataPosition {
    return { ...this.position };
  }

  private isEval(doc: Document): boolean {
    return hashUnit(doc.id) < this.opts.evalFraction;
  }

  private async *documents(files: SourceFile[]): AsyncGenerator<Document> {
    for (const f of files) {
      if (f.kind === 'brown') yield { id: f.id, text: untagBrown(readFileSync(f.path, 'utf8')) };
      else yield* readDocuments(f);
    }
  }

  /** Packed sequences of one split, in document order (no shuffle). */
  private async *packed(files: SourceFile[], split: 'train' | 'eval'): AsyncGenerator<Int32Array> {
    const { seqLen, tokenizer } = this.opts;
    const eos = tokenizer.eosTokenId!;
    let buf = new Int32Array(seqLen);
    let fill = 0;
    for await (const doc of this.documents(files)) {
      if (this.isEval(doc) !== (split === 'eval')) continue;
      const ids = tokenizer.encode(doc.text, { addSpecialTokens: false });
      ids.push(eos);
      for (const id of ids) {
        buf[fill++] = id;
        if (fill === seqLen) {
          yield buf;
          buf = new Int32Array(seqLen);
          fill = 0;
        }
      }
    }
  }

  /** One epoch of training sequences: files in a seeded order, sequences through a seeded shuffle buffer. */
  private async *epoch(epoch: number): AsyncGenerator<Int32Array> {
    const rng = new Rng((this.opts.seed * 1_000_003 + epoch * 7919) >>> 0);
    const files = seededShuffle(this.files, rng);
    const buffer: Int32Array[] = [];
    for await (const seq of this.packed(files, 'train')) {
      if (buffer.length < this.opts.shuffleBuffer) {
        buffer.push(seq);
        continue;
      }
      const j = Math.floor(rng.uniform() * buffer.length);
      yield buffer[j]!;
      buffer[j] = seq;
    }
    while (buffer.length > 0) {
      const j = Math.floor(rng.uniform() * buffer.length);
      yield buffer[j]!;
      buffer[j] = buffer[buffer.length - 1]!;
      buffer.pop();
    }
  }

  /** Moves to a saved position (replays that epoch's order up to it). */
  async seek(pos: DataPosition): Promise<void> {
    this.position = { epoch: pos.epoch, taken: 0 };
    this.iter = this.epoch(pos.epoch);
    for (let i = 0; i < pos.taken; i++) {
      const r = await this.iter.next();
      if (r.done)
        throw new Error(
          `data position epoch ${pos.epoch} sequence ${pos.taken} is past the end of the epoch (${i} sequences): the data changed since the checkpoint`,
        );
      this.position.taken++;
    }
  }

  /** The next `n` training sequences (epochs roll over). */
  async next(n: number): Promise<Int32Array[]> {
    const out: Int32Array[] = [];
    this.iter ??= this.epoch(this.position.epoch);
    while (out.length < n) {
      const r = await this.iter.next();
      if (!r.done) {
        out.push(r.value);
        this.position.taken++;
        continue;
      }
      if (this.position.taken === 0) {
        throw new Error(
          `the training data has no complete sequence of ${this.opts.seqLen} tokens (${this.files.length} file(s)${this.opts.evalFraction > 0 ? `, ${this.opts.evalFraction * 100}% of documents held out` : ''}): give more text or a shorter batch.seqLen`,
        );
      }
      this.position = { epoch: this.position.epoch + 1, taken: 0 };
      this.iter = this.epoch(this.position.epoch);
    }
    return out;
  }

  /** Up to `max` held-out sequences (the same ones every time). */
  async evalSequences(max: number): Promise<Int32Array[]> {
    const out: Int32Array[] = [];
    if (this.opts.evalFraction === 0) return out;
    for await (const seq of this.packed(this.files, 'eval')) {
      out.push(seq);
      if (out.length >= max) break;
    }
    return out;
  }
}
