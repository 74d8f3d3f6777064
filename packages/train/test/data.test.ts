import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { byteLevelTokenizer } from '@dsv3/model';
import { brownFiles, hashUnit, readDocuments, TokenStream, untagBrown } from '../src/index.js';
import { tempDir } from './helpers.js';

const tok = byteLevelTokenizer();
const EOS = tok.eosTokenId!;

function stream(path: string | null, extra: Partial<ConstructorParameters<typeof TokenStream>[0]> = {}): TokenStream {
  return new TokenStream({ path, tokenizer: tok, seqLen: 16, seed: 1, evalFraction: 0, shuffleBuffer: 4, ...extra });
}

describe('built-in corpus', () => {
  it('is the 500 Brown samples, untagged into prose', () => {
    expect(brownFiles()).toHaveLength(500);
    expect(
      untagBrown(
        "\n\n\tThe/at jury/nn said/vbd ``/`` no/at ''/'' ,/, it's/pps+bez (/( fine/jj )/) ./.\n\n\tNext/ap ./.\n",
      ),
    ).toBe('The jury said "no", it\'s (fine).\nNext.\n');
  });
});

describe('TokenStream', () => {
  it('joins documents with EOS and packs them into full sequences', async () => {
    const dir = tempDir('data');
    writeFileSync(join(dir, 'a.txt'), 'abcdefghij');
    writeFileSync(join(dir, 'b.jsonl'), '{"text": "0123456789"}\n\n{"text": "xyz"}\n');
    const s = stream(dir, { shuffleBuffer: 1 });
    // 10 + EOS + 10 + EOS + 3 + EOS = 27 tokens → one sequence of 16 per epoch
    const seqs = await s.next(3);
    expect(seqs.map((q) => q.length)).toEqual([16, 16, 16]);
    const all = [...seqs[0]!].map((id) => (id === EOS ? '|' : String.fromCharCode(id))).join('');
    expect(['abcdefghij|01234', '0123456789|xyz|a']).toContain(all);
    expect(s.dataPosition.epoch).toBe(2);
  });

  it('shuffles by seed, holds documents out by hash, and resumes at a position exactly', async () => {
    const a = await stream(null, { seed: 1 }).next(12);
    const b = await stream(null, { seed: 1 }).next(12);
    const c = await stream(null, { seed: 2 }).next(12);
    expect(b).toEqual(a);
    expect(c).not.toEqual(a);
    const s = stream(null, { seed: 1 });
    await s.next(5);
    const pos = s.dataPosition;
    const rest = await s.next(7);
    const resumed = stream(null, { seed: 1 });
    await resumed.seek(pos);
    expect(await resumed.next(7)).toEqual(rest);
    expect(rest).toEqual(a.slice(5));

    const held = brownFiles().filter((f) => hashUnit(f.id) < 0.05);
    expect(held.length).toBeGreaterThan(5);
    const withEval = stream(null, { evalFraction: 0.05 });
    const evalSeqs = await withEval.evalSequences(4);
    expect(evalSeqs).toHaveLength(4);
    const train = await withEval.next(64);
    const key = (q: Int32Array) => q.join(',');
    const trainKeys = new Set(train.map(key));
    expect(evalSeqs.some((q) => trainKeys.has(key(q)))).toBe(false);
  });

  it('streams a text file larger than its read chunk as paragraph-aligned pieces, losing nothing', async () => {
    const dir = tempDir('big');
    const para = `${'A line of a long paragraph. '.repeat(40)}\n\n`;
    const text = para.repeat(Math.ceil(2.5e6 / para.length));
    writeFileSync(join(dir, 'big.txt'), text);
    const docs = [];
    for await (const d of readDocuments({ path: join(dir, 'big.txt'), id: 'big.txt', kind: 'text' })) docs.push(d);
    expect(docs.length).toBeGreaterThanOrEqual(3);
    expect(docs.map((d) => d.id)).toEqual(docs.map((_, i) => `big.txt#${i}`));
    for (const d of docs.slice(0, -1)) expect(d.text.endsWith('\n\n')).toBe(true);
    expect(docs.map((d) => d.text).join('')).toBe(text);
  });

  it('gives clear errors for missing, empty or malformed data', async () => {
    const dir = tempDir('bad');
    expect(() => stream(join(dir, 'nope'))).toThrow(/data path .*nope does not exist/);
    mkdirSync(join(dir, 'empty'));
    expect(() => stream(join(dir, 'empty'))).toThrow(/holds no non-empty files/);
    writeFileSync(join(dir, 'short.txt'), 'hi');
    await expect(stream(join(dir, 'short.txt')).next(1)).rejects.toThrow(/no complete sequence of 16 tokens/);
    writeFileSync(join(dir, 'bad.jsonl'), '{"text": "ok"}\n{"body": "no text"}\n');
    await expect(stream(join(dir, 'bad.jsonl')).next(1)).rejects.toThrow(
      /bad\.jsonl:2: expected an object with a string "text" field/,
    );
  });
});
