// Incremental detokenization and stop strings. Text is decoded over a short window of recent tokens
// (so a byte-level token that completes a UTF-8 character joins the bytes before it) and nothing is
// emitted while the window's text ends in U+FFFD, an unfinished character. While a stop string could
// still be completing, the end of the text that begins one is held back; a match cuts the text before the stop string.
import type { Tokenizer } from '@dsv3/model';

const REPLACEMENT = '\uFFFD';

export class IncrementalDetokenizer {
  private readonly ids: number[] = [];
  /** first token of the decoding window */
  private prefixOffset = 0;
  /** tokens whose text has been produced */
  private readOffset = 0;
  /** all text produced so far */
  text = '';

  constructor(
    private readonly tokenizer: Tokenizer,
    private readonly skipSpecialTokens = true,
  ) {}

  /** Adds generated tokens; returns the text they complete ('' while a character is unfinished). */
  push(tokens: readonly number[]): string {
    this.ids.push(...tokens);
    return this.advance(false);
  }

  /** The text still held back (an unfinished character at the end, decoded as it is). */
  flush(): string {
    return this.advance(true);
  }

  private advance(final: boolean): string {
    // some tokenizers (Hugging Face's) refuse to decode an empty list
    const decode = (ids: number[]): string =>
      ids.length ? this.tokenizer.decode(ids, { skipSpecialTokens: this.skipSpecialTokens }) : '';
    const prefix = decode(this.ids.slice(this.prefixOffset, this.readOffset));
    const full = decode(this.ids.slice(this.prefixOffset));
    if (!final && full.endsWith(REPLACEMENT)) return '';
    if (full.length <= prefix.length && !final) return '';
    const delta = full.slice(prefix.length);
    this.prefixOffset = this.readOffset;
    this.readOffset = this.ids.length;
    this.text += delta;
    return delta;
  }
}

export interface StopMatch {
  /** text that may be emitted now */
  emit: string;
  /** whether a stop string matched (the text ends before it) */
  stopped: boolean;
}

/** Finds stop strings in a growing text and holds back a possible partial match. */
export class StopStringMatcher {
  private text = '';
  private emitted = 0;
  private readonly hold: number;

  constructor(private readonly stops: readonly string[]) {
    this.hold = Math.max(0, ...stops.map((s) => s.length - 1));
  }

  /** Appends new text; `final` releases everything held back. */
  push(delta: string, final = false): StopMatch {
    const from = Math.max(0, this.text.length - this.hold);
    this.text += delta;
    let cut = -1;
    for (const s of this.stops) {
      const at = this.text.indexOf(s, Math.max(0, from - s.length + 1));
      if (at >= 0 && (cut < 0 || at < cut)) cut = at;
    }
    if (cut >= 0) {
      const emit = this.text.slice(this.emitted, Math.max(cut, this.emitted));
      this.emitted = Math.max(cut, this.emitted);
      this.text = this.text.slice(0, this.emitted);
      return { emit, stopped: true };
    }
    const upTo = final ? this.text.length : Math.max(this.emitted, this.text.length - this.partialMatch());
    const emit = this.text.slice(this.emitted, upTo);
    this.emitted = upTo;
    return { emit, stopped: false };
  }

  /** Length of the longest end of the text that begins some stop string. */
  private partialMatch(): number {
    let hold = 0;
    for (const s of this.stops) {
      for (let k = Math.min(s.length - 1, this.text.length); k > hold; k--) {
        if (this.text.endsWith(s.slice(0, k))) {
          hold = k;
          break;
        }
      }
    }
    return hold;
  }

  /** All text accepted so far (up to a stop string). */
  get output(): string {
    return this.text.slice(0, this.emitted);
  }
}
