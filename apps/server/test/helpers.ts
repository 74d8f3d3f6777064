// A server over tiny-v3 with a byte-level tokenizer, listening on a free loopback port.
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import OpenAI from 'openai';
import { saveTokenizer } from '@dsv3/model';
import { createServer, loadServed, type LoadServedOptions, type Server, type ServerOptions } from '../src/index.js';
import { testChatTemplate, tinyTokenizer } from '../../../packages/serve/test/tokenizer.js';

export const tinyDir = join(import.meta.dirname, '../../../packages/core/test/fixtures/tiny-v3');
export const MODEL = 'tiny-v3';

/**
 * A model directory as users have it: tiny-v3's config and weights (linked) plus tokenizer.json and
 * tokenizer_config.json (with a chat_template) written by @dsv3/model's saveTokenizer. Made once per
 * process, in a fresh temporary directory: a name reused from an earlier run could hold links into a
 * checkout since deleted.
 */
export function tinyModelDir(): Promise<string> {
  modelDir ??= makeTinyModelDir();
  return modelDir;
}

let modelDir: Promise<string> | undefined;

async function makeTinyModelDir(): Promise<string> {
  const root = mkdtempSync(join(tmpdir(), `dsv3-serve-${MODEL}-`));
  const dir = join(root, MODEL);
  mkdirSync(dir);
  for (const f of ['config.json', 'model.safetensors']) symlinkSync(join(tinyDir, f), join(dir, f));
  await saveTokenizer(tinyTokenizer(), dir);
  const cfgPath = join(dir, 'tokenizer_config.json');
  const cfg = JSON.parse(readFileSync(cfgPath, 'utf8')) as Record<string, unknown>;
  writeFileSync(cfgPath, JSON.stringify({ ...cfg, chat_template: testChatTemplate }, null, 2));
  return dir;
}

export interface Running {
  server: Server;
  url: string;
  client: OpenAI;
  close(): Promise<void>;
}

export async function startServer(
  opts: Partial<ServerOptions> & { load?: LoadServedOptions; ready?: boolean } = {},
): Promise<Running> {
  const server = createServer({ modelName: MODEL, ...opts });
  const url = await server.app.listen({ port: 0, host: '127.0.0.1' });
  if (opts.ready ?? true)
    server.ready(await loadServed(await tinyModelDir(), { kvCacheTokens: 4096, blockSize: 8, ...opts.load }));
  const client = new OpenAI({ baseURL: `${url}/v1`, apiKey: opts.apiKey ?? 'none', maxRetries: 0, timeout: 60_000 });
  return { server, url, client, close: () => server.app.close() };
}

/** Raw HTTP: status and parsed JSON body. */
export async function post(
  url: string,
  path: string,
  body: string | object,
  headers: Record<string, string> = {},
  // biome-ignore lint/suspicious/noExplicitAny: response bodies of many shapes, read field by field in assertions
): Promise<{ status: number; json: any }> {
  const res = await fetch(url + path, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...headers },
    body: typeof body === 'string' ? body : JSON.stringify(body),
  });
  const text = await res.text();
  // biome-ignore lint/suspicious/noExplicitAny: as above
  let json: any = null;
  try {
    json = JSON.parse(text);
  } catch {
    json = text;
  }
  return { status: res.status, json };
}

const cliPath = join(import.meta.dirname, '../src/cli.ts');

export interface CliProcess {
  proc: ChildProcess;
  /** Resolves with the first match of `re` in the process's stdout (rejects if it exits first). */
  waitFor(re: RegExp): Promise<RegExpExecArray>;
  /** Everything printed on stdout so far. */
  readonly stdout: string;
}

/** Runs `dsv3-serve args` as users do (a process); the caller kills it (see killAll). */
export function startCli(args: string[], procs: ChildProcess[]): CliProcess {
  const proc = spawn(process.execPath, ['--import', 'tsx', '--conditions=@dsv3/source', cliPath, ...args], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  procs.push(proc);
  let out = '';
  proc.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  return {
    proc,
    get stdout() {
      return out;
    },
    waitFor: (re) =>
      new Promise((resolve, reject) => {
        const check = (): void => {
          const m = re.exec(out);
          if (m) return resolve(m);
          if (proc.exitCode !== null || proc.signalCode !== null)
            return reject(
              new Error(`dsv3-serve ${args.join(' ')} exited (${proc.exitCode ?? proc.signalCode}): ${out}`),
            );
          setTimeout(check, 50);
        };
        check();
      }),
  };
}

/** SIGKILLs every process of `procs` still running. */
export function killAll(procs: ChildProcess[]): void {
  for (const p of procs) if (p.exitCode === null && p.signalCode === null) p.kill('SIGKILL');
}

/**
 * The SSE `data:` payloads of a streamed completion; `onFirst` runs when the first payload arrives, or,
 * with `at: 'headers'`, as soon as the stream is open (before the server can have finished the request).
 */
export async function streamEvents(
  url: string,
  body: object,
  onFirst: () => void,
  at: 'first-event' | 'headers' = 'first-event',
): Promise<string[]> {
  const res = await fetch(`${url}/v1/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ ...body, stream: true }),
  });
  if (res.status !== 200) throw new Error(`streamed completion answered ${res.status}: ${await res.text()}`);
  if (at === 'headers') onFirst();
  const events: string[] = [];
  let buf = '';
  const decoder = new TextDecoder();
  for await (const piece of res.body as unknown as AsyncIterable<Uint8Array>) {
    buf += decoder.decode(piece, { stream: true });
    let i = buf.indexOf('\n\n');
    while (i >= 0) {
      const line = buf.slice(0, i).trim();
      buf = buf.slice(i + 2);
      if (line.startsWith('data: ')) {
        if (!events.length && at === 'first-event') onFirst();
        events.push(line.slice(6));
      }
      i = buf.indexOf('\n\n');
    }
  }
  return events;
}
