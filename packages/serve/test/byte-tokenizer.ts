// A byte-level tokenizer for tests over tiny-v3 (vocabulary 1024): 0 <bos>, 1 <eos>, 2 <pad>, then
// bytes; ids past the 256 bytes wrap onto them, so every id the model can emit decodes.
import type { ServingTokenizer } from '../src/index.js';

const SPECIAL = ['<bos>', '<eos>', '<pad>'];

export const testChatTemplate =
  "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}";

export function byteTokenizer(vocabSize = 1024): ServingTokenizer {
  const enc = new TextEncoder();
  const dec = new TextDecoder('utf-8', { fatal: false });
  return {
    vocabSize,
    bosTokenId: 0,
    eosTokenId: 1,
    chatTemplate: testChatTemplate,
    specialTokens: new Map(SPECIAL.map((s, i) => [s, i])),
    encode(text: string, opts?: { addSpecialTokens?: boolean }): number[] {
      const ids: number[] = opts?.addSpecialTokens ? [0] : [];
      let rest = text;
      while (rest.length) {
        const sp = SPECIAL.findIndex((s) => rest.startsWith(s));
        if (sp >= 0) {
          ids.push(sp);
          rest = rest.slice(SPECIAL[sp]!.length);
          continue;
        }
        const next = Math.min(...SPECIAL.map((s) => rest.indexOf(s)).filter((i) => i > 0), rest.length);
        for (const b of enc.encode(rest.slice(0, next))) ids.push(b + 3);
        rest = rest.slice(next);
      }
      return ids;
    },
    decode(ids: readonly number[], opts?: { skipSpecialTokens?: boolean }): string {
      let out = '';
      let bytes: number[] = [];
      const flush = (): void => {
        out += dec.decode(Uint8Array.from(bytes));
        bytes = [];
      };
      for (const id of ids) {
        if (id < 3) {
          flush();
          if (!opts?.skipSpecialTokens) out += SPECIAL[id];
        } else bytes.push((id - 3) % 256);
      }
      flush();
      return out;
    },
  };
}
