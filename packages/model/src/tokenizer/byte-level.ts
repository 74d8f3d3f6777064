// A byte-level tokenizer for tiny models: ids 0..255 are the UTF-8 bytes, then the special tokens.
// It saves as a standard Hugging Face tokenizer.json (ByteLevel pre-tokenizer + a BPE model with the
// 256 byte symbols and no merges), so transformers, tokenizers and our server load it as they are.
import { BYTE_CHARS } from './byte-bpe.js';
import type { DecodeOptions, EncodeOptions, Tokenizer, TokenizerFiles } from './types.js';

export const BYTE_LEVEL_BOS = '<｜begin▁of▁sentence｜>';
export const BYTE_LEVEL_EOS = '<｜end▁of▁sentence｜>';

export interface ByteLevelOptions {
  /** Extra special tokens after BOS and EOS (ids 258, 259, ...). */
  extraSpecialTokens?: readonly string[];
  /** Prepend BOS when encoding with special tokens (default true, like DeepSeek-V3's tokenizer). */
  addBos?: boolean;
}

const utf8 = new TextEncoder();

class ByteLevelTokenizer implements Tokenizer {
  readonly vocabSize: number;
  readonly bosTokenId = 256;
  readonly eosTokenId = 257;
  readonly chatTemplate = null;
  readonly specialTokens: ReadonlyMap<string, number>;
  private readonly specialNames: readonly string[];
  private readonly addBos: boolean;
  private readonly splitter: RegExp | null;

  constructor(opts: ByteLevelOptions) {
    const names = [BYTE_LEVEL_BOS, BYTE_LEVEL_EOS, ...(opts.extraSpecialTokens ?? [])];
    if (new Set(names).size !== names.length || names.some((n) => n.length === 0)) {
      throw new Error(
        `byte-level tokenizer: special tokens must be distinct and non-empty, got ${JSON.stringify(names)}`,
      );
    }
    this.specialNames = names;
    this.specialTokens = new Map(names.map((n, i) => [n, 256 + i]));
    this.vocabSize = 256 + names.length;
    this.addBos = opts.addBos ?? true;
    // Longest first, so a special token that contains another one wins (as in HF's added-token matching).
    const alternatives = [...names]
      .sort((a, b) => b.length - a.length)
      .map((n) => n.replace(/[.*+?^${}()|[\]\\]/g, '\\$&'));
    this.splitter = new RegExp(`(${alternatives.join('|')})`, 'u');
  }

  encode(text: string, opts: EncodeOptions = {}): number[] {
    const ids: number[] = opts.addSpecialTokens === false || !this.addBos ? [] : [this.bosTokenId];
    // Special-token text in the input becomes the special id, as Hugging Face's added tokens do.
    const parts = this.splitter ? text.split(this.splitter) : [text];
    for (let i = 0; i < parts.length; i++) {
      const part = parts[i]!;
      if (i % 2 === 1) ids.push(this.specialTokens.get(part)!);
      else for (const b of utf8.encode(part)) ids.push(b);
    }
    return ids;
  }

  decode(ids: readonly number[], opts: DecodeOptions = {}): string {
    let out = '';
    let bytes: number[] = [];
    const flush = () => {
      if (bytes.length) out += new TextDecoder('utf-8', { fatal: false }).decode(Uint8Array.from(bytes));
      bytes = [];
    };
    for (const id of ids) {
      if (!Number.isInteger(id) || id < 0 || id >= this.vocabSize) {
        throw new Error(`byte-level tokenizer: token id ${id} is outside the vocabulary [0, ${this.vocabSize})`);
      }
      if (id < 256) bytes.push(id);
      else {
        flush();
        if (!opts.skipSpecialTokens) out += this.specialNames[id - 256];
      }
    }
    flush();
    return out;
  }

  files(): TokenizerFiles {
    return byteLevelFiles(this.specialNames, this.addBos);
  }
}

/** A byte-level tokenizer (vocabulary 256 bytes + BOS, EOS and any extra special tokens). */
export function byteLevelTokenizer(opts: ByteLevelOptions = {}): Tokenizer {
  return new ByteLevelTokenizer(opts);
}

function byteLevelFiles(specials: readonly string[], addBos: boolean): TokenizerFiles {
  const byteLevel = { type: 'ByteLevel', add_prefix_space: false, trim_offsets: false, use_regex: true };
  const vocab: Record<string, number> = {};
  BYTE_CHARS.forEach((c, b) => (vocab[c] = b));
  const bos = specials[0]!;
  const seq = (id: 'A' | 'B') => ({ Sequence: { id, type_id: 0 } });
  const bosPiece = { SpecialToken: { id: bos, type_id: 0 } };
  const tokenizer = {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: specials.map((content, i) => ({
      id: 256 + i,
      content,
      single_word: false,
      lstrip: false,
      rstrip: false,
      normalized: false,
      special: true,
    })),
    normalizer: null,
    pre_tokenizer: byteLevel,
    post_processor: addBos
      ? {
          type: 'TemplateProcessing',
          single: [bosPiece, seq('A')],
          pair: [bosPiece, seq('A'), bosPiece, seq('B')],
          special_tokens: { [bos]: { id: bos, ids: [256], tokens: [bos] } },
        }
      : null,
    decoder: byteLevel,
    model: {
      type: 'BPE',
      dropout: null,
      unk_token: null,
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: false,
      byte_fallback: false,
      ignore_merges: false,
      vocab,
      merges: [],
    },
  };
  const config = {
    tokenizer_class: 'PreTrainedTokenizerFast',
    bos_token: bos,
    eos_token: specials[1]!,
    pad_token: specials[1]!,
    add_bos_token: addBos,
    add_eos_token: false,
    clean_up_tokenization_spaces: false,
    model_max_length: 1_000_000_000,
    dsv3_byte_level: { special_tokens: specials, add_bos: addBos },
  };
  return { tokenizer, config };
}

/** The byte-level tokenizer a saved tokenizer_config.json describes, or null when it is not one of ours. */
export function byteLevelFromConfig(
  tokenizerJson: Record<string, unknown>,
  config: Record<string, unknown>,
): Tokenizer | null {
  const marker = config.dsv3_byte_level as { special_tokens?: unknown; add_bos?: unknown } | undefined;
  if (!marker || !Array.isArray(marker.special_tokens) || marker.special_tokens.length < 2) return null;
  const specials = marker.special_tokens as string[];
  const tok = new ByteLevelTokenizer({ extraSpecialTokens: specials.slice(2), addBos: marker.add_bos !== false });
  // Only trust the fast path when the file is exactly what this tokenizer writes.
  if (specials[0] !== BYTE_LEVEL_BOS || specials[1] !== BYTE_LEVEL_EOS) return null;
  if (JSON.stringify(tok.files().tokenizer) !== JSON.stringify(tokenizerJson)) return null;
  return tok;
}
