// The test tokenizer for tiny-v3 (vocabulary 1024): @dsv3/model's byte-level tokenizer with 766 extra
// special tokens, so every id the model can emit decodes.
import { byteLevelTokenizer, type Tokenizer } from '@dsv3/model';

export const testChatTemplate =
  "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}";

export function tinyTokenizer(): Tokenizer {
  return byteLevelTokenizer({ extraSpecialTokens: Array.from({ length: 1024 - 258 }, (_, i) => `<extra_${i}>`) });
}
