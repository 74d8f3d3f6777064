// Soak: 200 concurrent streaming clients on loopback for 60 s against the tiny model in a separate
// server process. No error but the 429s the queue bound implies; every request accounted for
// (completed + rejected = sent); resident memory grows less than 10% after warm-up; SIGTERM exits 0.
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { describe, expect, it } from 'vitest';
import { MODEL } from './helpers.js';

const CLIENTS = 200;
const DURATION_MS = Number(process.env.DSV3_SOAK_MS ?? 60_000);
const WARMUP_MS = DURATION_MS / 4;

/** Resident memory of the server after a full collection. */
async function rss(url: string, pid: number): Promise<number> {
  process.kill(pid, 'SIGUSR2');
  await new Promise((r) => setTimeout(r, 300));
  const text = await (await fetch(`${url}/metrics`)).text();
  return Number(/^process_resident_memory_bytes(?:\{[^}]*\})? (\S+)/m.exec(text)![1]);
}

describe('soak', () => {
  it(
    `${CLIENTS} streaming clients for ${DURATION_MS / 1000} s`,
    async () => {
      const child = spawn(
        process.execPath,
        [
          '--expose-gc',
          '--import',
          'tsx',
          '--conditions=@dsv3/source',
          join(import.meta.dirname, 'fixtures/soak-server.ts'),
        ],
        { stdio: ['ignore', 'pipe', 'inherit'] },
      );
      const exited = new Promise<number | null>((res) => child.on('exit', (code) => res(code)));
      try {
        const url = await new Promise<string>((res, rej) => {
          const rl = createInterface({ input: child.stdout! });
          rl.once('line', res);
          child.once('exit', () => rej(new Error('the server exited before it was ready')));
        });
        const counts = { sent: 0, completed: 0, rejected: 0, errors: [] as string[] };
        const end = Date.now() + DURATION_MS;
        const client = async (i: number): Promise<void> => {
          for (let k = 0; Date.now() < end; k++) {
            counts.sent++;
            try {
              const res = await fetch(`${url}/v1/completions`, {
                method: 'POST',
                headers: { 'content-type': 'application/json' },
                body: JSON.stringify({
                  model: MODEL,
                  prompt: `client ${i} request ${k} `.repeat(1 + (k % 3)),
                  max_tokens: 4 + ((i + k) % 12),
                  stream: true,
                  temperature: 0.8,
                  seed: i * 1000 + k,
                }),
              });
              if (res.status === 429) {
                counts.rejected++;
                await res.text();
                await new Promise((r) => setTimeout(r, 50 + (i % 50)));
                continue;
              }
              if (res.status !== 200) {
                counts.errors.push(`${res.status} ${await res.text()}`);
                continue;
              }
              const text = await res.text();
              if (!text.endsWith('data: [DONE]\n\n') || text.includes('"error"'))
                counts.errors.push(`bad stream: ${text.slice(-200)}`);
              else counts.completed++;
            } catch (e) {
              counts.errors.push(String(e));
            }
          }
        };
        const samples: number[] = [];
        const sampler = (async () => {
          await new Promise((r) => setTimeout(r, WARMUP_MS));
          while (Date.now() < end - 1000) {
            samples.push(await rss(url, child.pid!));
            await new Promise((r) => setTimeout(r, 2000));
          }
        })();
        await Promise.all([...Array.from({ length: CLIENTS }, (_, i) => client(i)), sampler]);
        for (let i = 0; i < 3; i++) {
          await new Promise((r) => setTimeout(r, 500));
          samples.push(await rss(url, child.pid!));
        }
        // medians of three samples on each side, so one sample's jitter does not decide
        const median3 = (xs: number[]): number => [...xs].sort((a, b) => a - b)[1]!;
        const baseline = median3(samples.slice(0, 3));
        const final = median3(samples.slice(-3));
        console.log(`RSS samples (MiB): ${samples.map((b) => (b / 2 ** 20).toFixed(0)).join(' ')}`);
        console.log(
          `soak: sent ${counts.sent}, completed ${counts.completed}, rejected (429) ${counts.rejected}; RSS ${(baseline / 2 ** 20).toFixed(0)} MiB after warm-up, ${(final / 2 ** 20).toFixed(0)} MiB at the end`,
        );
        expect(counts.errors.slice(0, 5)).toEqual([]);
        expect(counts.completed + counts.rejected).toBe(counts.sent);
        expect(counts.completed).toBeGreaterThan(50);
        expect(final / baseline).toBeLessThan(1.1);
        child.kill('SIGTERM');
        expect(await exited).toBe(0);
      } finally {
        if (child.exitCode === null) child.kill('SIGKILL');
      }
    },
    DURATION_MS + 120_000,
  );
});
