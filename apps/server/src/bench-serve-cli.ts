#!/usr/bin/env node
// dsv3-bench-serve: benchmark an OpenAI-compatible server (Poisson arrivals; table and JSON).
import { writeFileSync } from 'node:fs';
import { Command, InvalidArgumentError } from 'commander';
import { formatTable, runBenchmark } from './bench-serve.js';

const positiveInt = (s: string): number => {
  const n = Number(s);
  if (!Number.isInteger(n) || n < 1) throw new InvalidArgumentError(`"${s}" is not a positive integer`);
  return n;
};
const rate = (s: string): number => {
  const n = s === 'inf' ? Infinity : Number(s);
  if (!(n > 0)) throw new InvalidArgumentError(`"${s}" is not a positive rate (requests per second, or inf)`);
  return n;
};

new Command('dsv3-bench-serve')
  .description('Benchmark an OpenAI-compatible completions server: TTFT, TPOT, ITL, end-to-end latency, throughput')
  .requiredOption('--url <url>', 'server base URL, e.g. http://127.0.0.1:8000')
  .requiredOption('--model <name>', 'model name the server serves')
  .option('--requests <n>', 'requests to send', positiveInt, 32)
  .option('--rate <r>', 'mean request arrivals per second (Poisson), or inf for all at once', rate, Infinity)
  .option('--input-len <n>', 'prompt tokens per request (random token ids)', positiveInt, 128)
  .option('--output-len <n>', 'tokens to generate per request (ignore_eos)', positiveInt, 64)
  .option('--concurrency <n>', 'most requests in flight at once', positiveInt)
  .option('--vocab <n>', 'draw prompt token ids from [10, n)', positiveInt, 1000)
  .option('--seed <n>', 'seed of arrivals and prompts', positiveInt, 1)
  .option('--api-key <key>', 'Bearer token')
  .option('--json <file>', 'also write the result as JSON to this file')
  .action(
    async (o: {
      url: string;
      model: string;
      requests: number;
      rate: number;
      inputLen: number;
      outputLen: number;
      concurrency?: number;
      vocab: number;
      seed: number;
      apiKey?: string;
      json?: string;
    }) => {
      const r = await runBenchmark({ ...o });
      console.log(formatTable(r));
      const json = JSON.stringify(
        { options: { ...o, apiKey: undefined, rate: Number.isFinite(o.rate) ? o.rate : 'inf' }, ...r },
        null,
        2,
      );
      if (o.json) writeFileSync(o.json, `${json}\n`);
      else console.log(json);
      if (r.failed) {
        console.error(`${r.failed} request(s) failed: ${r.errors.join('; ')}`);
        process.exitCode = 1;
      }
    },
  )
  .parseAsync()
  .catch((e: unknown) => {
    console.error(`dsv3-bench-serve: ${e instanceof Error ? e.message : String(e)}`);
    process.exit(1);
  });
