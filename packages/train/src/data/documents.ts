// Documents from disk, streamed: a text file, a folder of text / JSONL files, or a JSONL file whose
// lines carry a `text` field. Large text files are cut at paragraph boundaries so memory stays bounded.
import { createReadStream, existsSync, readdirSync, statSync } from 'node:fs';
import { join, relative } from 'node:path';
import { createInterface } from 'node:readline';

export interface Document {
  /** Stable id (file path relative to the data root, plus line or chunk number). */
  id: string;
  text: string;
}

/** One source file and how to read it. */
export interface SourceFile {
  path: string;
  id: string;
  kind: 'text' | 'jsonl' | 'brown';
}

const TEXT_CHUNK_CHARS = 1 << 20;

/** The files under `path` (sorted), or a clear error for a missing or empty path. */
export function listSourceFiles(path: string): SourceFile[] {
  if (!existsSync(path)) throw new Error(`data path ${path} does not exist`);
  const kindOf = (p: string): SourceFile['kind'] => (p.endsWith('.jsonl') ? 'jsonl' : 'text');
  const st = statSync(path);
  if (st.isFile()) return [{ path, id: path.split('/').pop()!, kind: kindOf(path) }];
  const out: SourceFile[] = [];
  const walk = (dir: string): void => {
    for (const name of readdirSync(dir).sort()) {
      if (name.startsWith('.')) continue;
      const p = join(dir, name);
      const s = statSync(p);
      if (s.isDirectory()) walk(p);
      else if (s.isFile() && s.size > 0) out.push({ path: p, id: relative(path, p), kind: kindOf(p) });
    }
  };
  walk(path);
  if (out.length === 0)
    throw new Error(`data folder ${path} holds no non-empty files (expected text files or .jsonl with a "text" field)`);
  return out;
}

/** The documents of one file, in order. */
export async function* readDocuments(file: SourceFile, transform?: (text: string) => string): AsyncGenerator<Document> {
  if (file.kind === 'jsonl') {
    const lines = createInterface({ input: createReadStream(file.path, { encoding: 'utf8' }), crlfDelay: Infinity });
    let n = 0;
    for await (const line of lines) {
      n++;
      if (line.trim() === '') continue;
      let rec: unknown;
      try {
        rec = JSON.parse(line);
      } catch (e) {
        throw new Error(`${file.path}:${n}: not valid JSON (${(e as Error).message})`);
      }
      const text = (rec as { text?: unknown } | null)?.text;
      if (typeof text !== 'string') throw new Error(`${file.path}:${n}: expected an object with a string "text" field`);
      if (text.length > 0) yield { id: `${file.id}:${n}`, text };
    }
    return;
  }
  // Text: whole file as one document, read in chunks cut after a blank line (or a newline) so a file
  // larger than memory streams.
  let pending = '';
  let chunk = 0;
  for await (const piece of createReadStream(file.path, { encoding: 'utf8', highWaterMark: 1 << 16 })) {
    pending += piece as string;
    if (pending.length >= TEXT_CHUNK_CHARS) {
      // after a blank line, else after a newline, else everything
      const para = pending.lastIndexOf('\n\n');
      const end = para >= 0 ? para + 2 : pending.lastIndexOf('\n') + 1 || pending.length;
      const text = pending.slice(0, end);
      pending = pending.slice(end);
      yield { id: `${file.id}#${chunk++}`, text: transform ? transform(text) : text };
    }
  }
  const text = transform ? transform(pending) : pending;
  if (text.trim().length > 0 || chunk === 0) yield { id: chunk === 0 ? file.id : `${file.id}#${chunk}`, text };
}
