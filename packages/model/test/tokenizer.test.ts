import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { Rng } from '@dsv3/core';
import {
  BYTE_LEVEL_EOS,
  byteLevelTokenizer,
  deepseekV3Tokenizer,
  huggingFaceTokenizer,
  loadTokenizer,
  saveTokenizer,
} from '../src/index.js';

const FIXTURES = join(__dirname, 'fixtures', 'tokenizer');
const tmp = mkdtempSync(join(tmpdir(), 'dsv3-tok-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

/** Random strings mixing ASCII, Latin-1, CJK, emoji, whitespace and the special tokens' text. */
function randomTexts(n: number, seed: number): string[] {
  const rng = new Rng(seed);
  const pieces = [
    'a',
    'Z',
    ' ',
    '  ',
    '\n',
    '\t',
    'é',
    'ß',
    '你',
    '好',
    '🚀',
    '—',
    '1',
    '42',
    '.',
    ',',
    BYTE_LEVEL_EOS,
    'the ',
    'ing',
  ];
  return Array.from({ length: n }, () =>
    Array.from(
      { length: 1 + Math.floor(rng.uniform() * 40) },
      () => pieces[Math.floor(rng.uniform() * pieces.length)]!,
    ).join(''),
  );
}

describe('byteLevelTokenizer', () => {
  const tok = byteLevelTokenizer();

  it('maps UTF-8 bytes to ids 0..255, specials after them, and round-trips', () => {
    expect(tok.vocabSize).toBe(258);
    expect(tok.encode('hé', { addSpecialTokens: false })).toEqual([104, 195, 169]);
    expect(tok.encode('a')).toEqual([256, 97]);
    expect(tok.encode(`x${BYTE_LEVEL_EOS}y`, { addSpecialTokens: false })).toEqual([120, 257, 121]);
    for (const t of randomTexts(50, 1)) {
      expect(tok.decode(tok.encode(t), { skipSpecialTokens: false })).toBe(tok.decode([256]) + t);
      expect(tok.decode(tok.encode(t, { addSpecialTokens: false }))).toBe(t);
    }
    expect(tok.decode([104, 256, 105], { skipSpecialTokens: true })).toBe('hi');
    expect(() => tok.decode([258])).toThrow(/outside the vocabulary \[0, 258\)/);
  });

  it('saves a tokenizer.json that the JS tokenizer library reads as the same tokenizer', async () => {
    const generic = huggingFaceTokenizer(tok.files().tokenizer, tok.files().config);
    expect(generic.vocabSize).toBe(tok.vocabSize);
    expect(generic.bosTokenId).toBe(256);
    expect(generic.eosTokenId).toBe(257);
    for (const t of randomTexts(50, 2)) {
      expect(generic.encode(t)).toEqual(tok.encode(t));
      expect(generic.encode(t, { addSpecialTokens: false })).toEqual(tok.encode(t, { addSpecialTokens: false }));
      expect(generic.decode(tok.encode(t))).toBe(tok.decode(tok.encode(t)));
    }
    const dir = join(tmp, 'bl');
    await saveTokenizer(tok, dir);
    const loaded = await loadTokenizer(dir);
    expect(loaded.encode('héllo')).toEqual(tok.encode('héllo'));
    expect([...loaded.specialTokens]).toEqual([...tok.specialTokens]);
  });

  it('the committed byte-level fixture (which HF loads for the golden) is what saveTokenizer writes today', () => {
    const files = byteLevelTokenizer().files();
    expect(JSON.parse(readFileSync(join(FIXTURES, 'byte-level', 'tokenizer.json'), 'utf8'))).toEqual(files.tokenizer);
    expect(JSON.parse(readFileSync(join(FIXTURES, 'byte-level', 'tokenizer_config.json'), 'utf8'))).toEqual(
      files.config,
    );
  });
});

describe('loadTokenizer', () => {
  it("uses DeepSeek-V3's tokenizer for a checkpoint with its vocabulary and no tokenizer files", async () => {
    const dir = join(tmp, 'v3');
    rmSync(dir, { recursive: true, force: true });
    await import('node:fs/promises').then((fs) => fs.mkdir(dir));
    writeFileSync(join(dir, 'config.json'), JSON.stringify({ vocab_size: 129280 }));
    const tok = await loadTokenizer(dir);
    expect(tok.vocabSize).toBe(128815);
    expect(tok.bosTokenId).toBe(0);
    expect(tok.eosTokenId).toBe(1);
    expect(tok.chatTemplate).toMatch(/add_generation_prompt/);
    expect(tok.specialTokens.get('<｜end▁of▁sentence｜>')).toBe(1);
  }, 60_000);

  it('says what is missing when a directory has no tokenizer', async () => {
    const dir = join(tmp, 'none');
    await import('node:fs/promises').then((fs) => fs.mkdir(dir));
    await expect(loadTokenizer(dir)).rejects.toThrow(/no tokenizer in .*expected tokenizer\.json/);
    writeFileSync(join(dir, 'config.json'), JSON.stringify({ vocab_size: 1000 }));
    await expect(loadTokenizer(dir)).rejects.toThrow(/vocab_size 1000 is not DeepSeek-V3's 129280/);
    writeFileSync(join(dir, 'tokenizer.json'), '{"model": ');
    await expect(loadTokenizer(dir)).rejects.toThrow(/tokenizer\.json is not valid JSON/);
    writeFileSync(join(dir, 'tokenizer.json'), '{"version": "1.0"}');
    await expect(loadTokenizer(dir)).rejects.toThrow(/not a Hugging Face tokenizer\.json \(no model\.vocab\)/);
  });
});

const GOLDEN = join(FIXTURES, 'golden.json');
describe('Hugging Face golden (fixtures/tokenizer/make-golden.py)', () => {
  const golden = JSON.parse(readFileSync(GOLDEN, 'utf8')) as {
    texts: string[];
    deepseek_v3: Record<'with_special' | 'without_special', number[][]>;
    byte_level: Record<'with_special' | 'without_special', number[][]>;
    byte_level_decode: string[];
  };

  it("DeepSeek-V3's tokenizer encodes like the Rust tokenizers library (+ BOS per add_bos_token)", async () => {
    const tok = await deepseekV3Tokenizer();
    golden.texts.forEach((t, i) => {
      expect(tok.encode(t)).toEqual(golden.deepseek_v3.with_special[i]);
      expect(tok.encode(t, { addSpecialTokens: false })).toEqual(golden.deepseek_v3.without_special[i]);
    });
  }, 60_000);

  it('transformers loads our byte-level tokenizer and encodes and decodes like it', async () => {
    const tok = await loadTokenizer(join(FIXTURES, 'byte-level'));
    golden.texts.forEach((t, i) => {
      expect(tok.encode(t)).toEqual(golden.byte_level.with_special[i]);
      expect(tok.encode(t, { addSpecialTokens: false })).toEqual(golden.byte_level.without_special[i]);
      expect(tok.decode(golden.byte_level.with_special[i]!)).toBe(golden.byte_level_decode[i]);
    });
  });
});
