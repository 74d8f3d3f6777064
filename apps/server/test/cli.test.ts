// The dsv3-serve CLI on a real model directory: one line when ready, /health, the load tool against it
// (JSON and table), and SIGTERM: stop accepting, finish the running request, exit 0. Also the built bins
// (dist/, what `npm run build` makes and the package's "bin" runs) as a user runs them.
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { describe, expect, it } from 'vitest';
import { formatTable, runBenchmark } from '../src/index.js';
import { tinyModelDir } from './helpers.js';

const tsx = (script: string, args: string[]): ChildProcess =>
  spawn(
    process.execPath,
    ['--import', 'tsx', '--conditions=@dsv3/source', join(import.meta.dirname, '../src', script), ...args],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );

const dist = join(import.meta.dirname, '../dist');
const built = (script: string, args: string[]): ChildProcess =>
  spawn(process.execPath, [join(dist, script), ...args], { stdio: ['ignore', 'pipe', 'pipe'] });

function output(child: ChildProcess): { out: string[]; err: string[]; exit: Promise<number | null> } {
  const out: string[] = [];
  const err: string[] = [];
  createInterface({ input: child.stdout! }).on('line', (l) => out.push(l));
  createInterface({ input: child.stderr! }).on('line', (l) => err.push(l));
  return { out, err, exit: new Promise((res) => child.on('exit', (c) => res(c))) };
}

/** Waits (90 s at most) for the server's one "ready" line; returns the URL it serves on. */
async function ready(child: ChildProcess, io: ReturnType<typeof output>): Promise<string> {
  const deadline = Date.now() + 90_000;
  while (!io.out.some((l) => l.includes('ready')) && Date.now() < deadline && child.exitCode === null)
    await new Promise((r) => setTimeout(r, 100));
  expect(
    io.out.filter((l) => l.includes('ready')),
    io.err.join('\n'),
  ).toHaveLength(1);
  return /on (http:\/\/\S+)/.exec(io.out[0]!)![1]!;
}

describe('dsv3-serve CLI', () => {
  it('serves a model directory, benchmarks, drains on SIGTERM and exits 0', async () => {
    const dir = await tinyModelDir();
    const child = tsx('cli.ts', ['--model', dir, '--port', '0', '--max-num-seqs', '8', '--kv-cache-tokens', '2048']);
    const io = output(child);
    try {
      const url = await ready(child, io);
      expect(io.out[0]).toContain('model "tiny-v3"');
      expect((await fetch(`${url}/health`)).status).toBe(200);

      const r = await runBenchmark({
        url,
        model: 'tiny-v3',
        requests: 6,
        rate: 20,
        inputLen: 12,
        outputLen: 6,
        seed: 3,
      });
      expect(r.failed, r.errors.join('; ')).toBe(0);
      expect(r.completed).toBe(6);
      expect(r.outputTokens).toBe(36);
      expect(r.inputTokens).toBe(6 * 12);
      expect(r.ttftMs.p50).toBeGreaterThan(0);
      expect(r.tpotMs.mean).toBeGreaterThan(0);
      expect(formatTable(r)).toMatch(/TTFT mean \/ p50 \/ p90 \/ p99 \(ms\)/);

      // a long request is running when SIGTERM arrives: it finishes, new ones get 503, then exit 0
      const res = await fetch(`${url}/v1/completions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({
          model: 'tiny-v3',
          prompt: 'x',
          max_tokens: 60,
          ignore_eos: true,
          stream: true,
          stream_options: { include_usage: true },
        }),
      });
      const reader = res.body!.getReader();
      let text = new TextDecoder().decode((await reader.read()).value); // the request is running now
      child.kill('SIGTERM');
      await new Promise((r) => setTimeout(r, 100));
      const late = await fetch(`${url}/v1/completions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ model: 'tiny-v3', prompt: 'y' }),
      }).catch(() => null);
      if (late) expect(late.status).toBe(503);
      for (let c = await reader.read(); !c.done; c = await reader.read()) text += new TextDecoder().decode(c.value);
      expect(text.endsWith('data: [DONE]\n\n')).toBe(true);
      expect(text).toContain('"completion_tokens":60');
      expect(await io.exit).toBe(0);
    } finally {
      if (child.exitCode === null) child.kill('SIGKILL');
    }
  }, 180_000);

  it('the load tool runs as a CLI and refuses bad options', async () => {
    const child = tsx('bench-serve-cli.ts', ['--url', 'http://127.0.0.1:1', '--model', 'x', '--rate', '-2']);
    const io = output(child);
    expect(await io.exit).toBe(1);
    expect(io.err.join('\n')).toMatch(/not a positive rate/);
    const srv = tsx('cli.ts', ['--port', '80000']);
    const so = output(srv);
    expect(await so.exit).not.toBe(0);
    expect(so.err.join('\n')).toMatch(/--model|port/);
  }, 60_000);

  // CI builds before it tests (.ci/run); elsewhere the built bins are checked once there is a build.
  it.skipIf(!process.env.CI && !existsSync(join(dist, 'cli.js')))(
    'the built bins run: dsv3-serve serves and drains, dsv3-bench-serve answers --help',
    async () => {
      const dir = await tinyModelDir();
      const child = built('cli.js', ['--model', dir, '--port', '0', '--max-num-seqs', '2', '--kv-cache-tokens', '512']);
      const io = output(child);
      try {
        const url = await ready(child, io);
        expect((await fetch(`${url}/health`)).status).toBe(200);
        child.kill('SIGTERM');
        expect(await io.exit).toBe(0);
      } finally {
        if (child.exitCode === null) child.kill('SIGKILL');
      }
      const help = output(built('bench-serve-cli.js', ['--help']));
      expect(await help.exit, help.err.join('\n')).toBe(0);
      expect(help.out.join('\n')).toContain('Usage: dsv3-bench-serve');
    },
    120_000,
  );
});
