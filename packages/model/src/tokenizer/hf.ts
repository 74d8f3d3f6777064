// A Hugging Face tokenizer.json (+ tokenizer_config.json) through @huggingface/tokenizers.
import { Tokenizer as HFTokenizer } from '@huggingface/tokenizers';
import type { DecodeOptions, EncodeOptions, Tokenizer, TokenizerFiles } from './types.js';

interface AddedTokenJson {
  id: number;
  content: string;
  special?: boolean;
}

/** tokenizer_config.json names a token as a string or as {content: ...}. */
function tokenText(v: unknown): string | null {
  if (typeof v === 'string') return v;
  if (v && typeof v === 'object' && typeof (v as { content?: unknown }).content === 'string')
    return (v as { content: string }).content;
  return null;
}

/** chat_template is a string, or a list of {name, template} where "default" is the plain one. */
function chatTemplateOf(v: unknown): string | null {
  if (typeof v === 'string') return v;
  if (Array.isArray(v)) {
    const named = v as { name?: unknown; template?: unknown }[];
    const pick = named.find((t) => t.name === 'default') ?? named[0];
    return typeof pick?.template === 'string' ? pick.template : null;
  }
  return null;
}

class HuggingFaceTokenizer implements Tokenizer {
  readonly vocabSize: number;
  readonly bosTokenId: number | null;
  readonly eosTokenId: number | null;
  readonly chatTemplate: string | null;
  readonly specialTokens: ReadonlyMap<string, number>;
  private readonly impl: HFTokenizer;
  /** tokenizer_config.json's add_bos_token / add_eos_token, which transformers applies on top of tokenizer.json. */
  private readonly addBos: boolean;
  private readonly addEos: boolean;

  constructor(
    private readonly tokenizerJson: Record<string, unknown>,
    private readonly config: Record<string, unknown>,
    source: string,
  ) {
    const model = tokenizerJson.model as { vocab?: unknown } | undefined;
    if (!model || typeof model !== 'object' || !model.vocab)
      throw new Error(`${source}: not a Hugging Face tokenizer.json (no model.vocab)`);
    try {
      this.impl = new HFTokenizer(tokenizerJson, config);
    } catch (e) {
      throw new Error(`${source}: the tokenizer library could not build this tokenizer: ${(e as Error).message}`);
    }
    const added = (tokenizerJson.added_tokens ?? []) as AddedTokenJson[];
    this.specialTokens = new Map(added.filter((t) => t.special).map((t) => [t.content, t.id]));
    let maxId = -1;
    for (const id of this.impl.get_vocab(true).values()) maxId = Math.max(maxId, id);
    for (const t of added) maxId = Math.max(maxId, t.id);
    this.vocabSize = maxId + 1;
    const idOf = (v: unknown) => {
      const text = tokenText(v);
      return text === null ? null : (this.impl.token_to_id(text) ?? null);
    };
    this.bosTokenId = idOf(config.bos_token);
    this.eosTokenId = idOf(config.eos_token);
    this.chatTemplate = chatTemplateOf(config.chat_template);
    // A TemplateProcessing post-processor already adds them; otherwise transformers' Llama-style tokenizers
    // (DeepSeek-V3's) rebuild the post-processor from these flags.
    const templated = (tokenizerJson.post_processor as { type?: unknown } | null)?.type === 'TemplateProcessing';
    this.addBos = !templated && config.add_bos_token === true && this.bosTokenId !== null;
    this.addEos = !templated && config.add_eos_token === true && this.eosTokenId !== null;
  }

  encode(text: string, opts: EncodeOptions = {}): number[] {
    const special = opts.addSpecialTokens ?? true;
    const ids = this.impl.encode(text, { add_special_tokens: special }).ids;
    if (!special) return ids;
    return [...(this.addBos ? [this.bosTokenId!] : []), ...ids, ...(this.addEos ? [this.eosTokenId!] : [])];
  }

  decode(ids: readonly number[], opts: DecodeOptions = {}): string {
    for (const id of ids) {
      if (!Number.isInteger(id) || id < 0 || id >= this.vocabSize)
        throw new Error(`token id ${id} is outside the vocabulary [0, ${this.vocabSize})`);
    }
    return this.impl.decode([...ids], { skip_special_tokens: opts.skipSpecialTokens ?? false });
  }

  files(): TokenizerFiles {
    return { tokenizer: this.tokenizerJson, config: this.config };
  }
}

/** A tokenizer from the parsed contents of tokenizer.json and tokenizer_config.json. */
export function huggingFaceTokenizer(
  tokenizerJson: Record<string, unknown>,
  config: Record<string, unknown> = {},
  source = 'tokenizer.json',
): Tokenizer {
  return new HuggingFaceTokenizer(tokenizerJson, config, source);
}
