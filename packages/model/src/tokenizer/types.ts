// The tokenizer interface every dsv3 package codes against (trainer, server, CLI).

export interface EncodeOptions {
  /** Add the tokenizer's own special tokens (e.g. BOS) as Hugging Face does by default (default true). */
  addSpecialTokens?: boolean;
}

export interface DecodeOptions {
  /** Drop special tokens (BOS, EOS, ...) from the text (default false, as in Hugging Face). */
  skipSpecialTokens?: boolean;
}

/** The files a tokenizer is saved as, in Hugging Face's format. */
export interface TokenizerFiles {
  /** Contents of tokenizer.json. */
  tokenizer: Record<string, unknown>;
  /** Contents of tokenizer_config.json. */
  config: Record<string, unknown>;
}

export interface Tokenizer {
  /** Number of token ids (largest id + 1), special tokens included. */
  readonly vocabSize: number;
  readonly bosTokenId: number | null;
  readonly eosTokenId: number | null;
  /** tokenizer_config.json's chat_template, if any. */
  readonly chatTemplate: string | null;
  /** Special tokens by their text. */
  readonly specialTokens: ReadonlyMap<string, number>;
  encode(text: string, opts?: EncodeOptions): number[];
  decode(ids: readonly number[], opts?: DecodeOptions): string;
  /** What saveTokenizer writes: standard tokenizer.json + tokenizer_config.json. */
  files(): TokenizerFiles;
}
