// Incremental detokenization never splits a UTF-8 character; stop strings cut the text and hold back
// what could still become one; chat templates render.
import { describe, expect, it } from 'vitest';
import {
  ChatTemplate,
  chatTemplateFor,
  deepseekV3ChatTemplate,
  IncrementalDetokenizer,
  PLAIN_CHAT_TEMPLATE,
  StopStringMatcher,
} from '../src/index.js';
import { deepseekV3Tokenizer } from '@dsv3/model';
import { testChatTemplate, tinyTokenizer } from './tokenizer.js';

const tok = tinyTokenizer();

describe('IncrementalDetokenizer', () => {
  it('emits nothing until a multi-byte character is complete, and the pieces join to the full text', () => {
    const text = 'añ€😀 ok';
    const ids = tok.encode(text, { addSpecialTokens: false });
    const d = new IncrementalDetokenizer(tok);
    const pieces = ids.map((t) => d.push([t]));
    pieces.push(d.flush());
    for (const p of pieces) expect(p.includes('\uFFFD')).toBe(false);
    expect(pieces.join('')).toBe(text);
    // the 4 bytes of 😀 yield one piece on the 4th byte
    const start = tok.encode('añ€', { addSpecialTokens: false }).length;
    expect(pieces.slice(start, start + 3)).toEqual(['', '', '']);
    expect(pieces[start + 3]).toBe('😀');
  });

  it('skips special tokens and releases an unfinished character at the end', () => {
    const d = new IncrementalDetokenizer(tok);
    expect(d.push([...tok.encode('hi', { addSpecialTokens: false }), tok.eosTokenId!])).toBe('hi');
    const e = new IncrementalDetokenizer(tok);
    expect(e.push(tok.encode('€', { addSpecialTokens: false }).slice(0, 2))).toBe('');
    expect(e.flush()).toBe('\uFFFD');
  });

  it('random token streams: streamed pieces always equal the whole decode', () => {
    for (let seed = 1; seed < 20; seed++) {
      const ids = Array.from({ length: 60 }, (_, i) => (seed * 7919 + i * 104729) % 1024);
      const d = new IncrementalDetokenizer(tok);
      let s = '';
      for (let i = 0; i < ids.length; i += 1 + (i % 3)) s += d.push(ids.slice(i, i + 1 + (i % 3)));
      s += d.flush();
      expect(s).toBe(tok.decode(ids, { skipSpecialTokens: true }));
    }
  });
});

describe("IncrementalDetokenizer with DeepSeek-V3's tokenizer (Hugging Face tokenizer.json)", () => {
  it('streams token by token to the whole decode, CJK and emoji included', async () => {
    const v3 = await deepseekV3Tokenizer();
    const text = 'Multi-head latent attention 多头潜在注意力 🚀 compresses the KV cache.';
    const ids = v3.encode(text, { addSpecialTokens: false });
    const d = new IncrementalDetokenizer(v3);
    let s = '';
    for (const t of ids) {
      const piece = d.push([t]);
      expect(piece.includes('\uFFFD')).toBe(false);
      s += piece;
    }
    s += d.flush();
    expect(s).toBe(text);
  });
});

describe('StopStringMatcher', () => {
  it('cuts before the first stop string even when it arrives in pieces', () => {
    const m = new StopStringMatcher(['STOP', '\n\n']);
    const out: string[] = [];
    let stopped = false;
    for (const p of ['Hel', 'lo S', 'TO', 'P more']) {
      const r = m.push(p);
      out.push(r.emit);
      if (r.stopped) {
        stopped = true;
        break;
      }
    }
    expect(stopped).toBe(true);
    expect(out.join('')).toBe('Hello ');
    expect(m.output).toBe('Hello ');
  });

  it('holds back a possible prefix and releases it when it does not match', () => {
    const m = new StopStringMatcher(['abc']);
    expect(m.push('xxab').emit).toBe('xx');
    expect(m.push('d').emit).toBe('abd');
    expect(m.push('ab', true).emit).toBe('ab');
  });

  it('without stop strings passes everything through', () => {
    const m = new StopStringMatcher([]);
    expect(m.push('abc').emit).toBe('abc');
  });
});

describe('ChatTemplate', () => {
  it('renders a checkpoint template with the generation prompt', () => {
    const t = new ChatTemplate(testChatTemplate, { bosToken: '<bos>' });
    expect(
      t.render([
        { role: 'system', content: 'be brief' },
        { role: 'user', content: 'hi' },
      ]),
    ).toBe('<bos><|system|>be brief\n<|user|>hi\n<|assistant|>');
  });

  it("renders DeepSeek-V3's own template", () => {
    const t = new ChatTemplate(deepseekV3ChatTemplate(), { bosToken: '<｜begin▁of▁sentence｜>' });
    const s = t.render([
      { role: 'system', content: 'S' },
      { role: 'user', content: 'Hello' },
    ]);
    expect(s).toBe('<｜begin▁of▁sentence｜>S<｜User｜>Hello<｜Assistant｜>');
  });

  it('a checkpoint without a template gets the plain one, with its BOS text', () => {
    const t = chatTemplateFor(tok);
    expect(t.source).toBe(PLAIN_CHAT_TEMPLATE);
    expect(t.render([{ role: 'user', content: 'hi' }])).toBe('<｜begin▁of▁sentence｜>user: hi\nassistant:');
  });

  it('a template that does not parse is a clear error', () => {
    expect(() => new ChatTemplate('{% for %}')).toThrow(/does not parse/);
  });
});
