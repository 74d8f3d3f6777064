// Serving benchmark on a checkpoint (default: the V3-shaped /work/ckpt/v3-mini), against llama.cpp
// (node-llama-cpp, ../shared/scripts/peer-llamacpp.sh) on the same checkpoint measured in the same run:
//   1. batch-1 prefill and decode tokens/s of the engine (in process) and of llama.cpp, interleaved;
//   2. dsv3-bench-serve against dsv3-serve (its own process) at 1, 4 and 16 concurrent clients.
// env: MODEL_DIR, PEER_DIR (/work/peer-llamacpp), PEER_GGUF (v3-mini-f32.gguf), PREFILL (128),
// DECODE (32), ROUNDS (2), SERVE_INPUT (64), SERVE_OUTPUT (16), CONCURRENCY (1,4,16)
import { spawn, spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { basename, join } from 'node:path';
import { createInterface } from 'node:readline';
import { noGrad } from '@dsv3/core';
import { loadModel } from '@dsv3/model';
import { defaultSamplingParams, EngineCore, ModelExecutor } from '@dsv3/serve';
import { formatTable, runBenchmark, type BenchResult } from '../src/bench-serve.js';

const modelDir = process.env.MODEL_DIR ?? '/work/ckpt/v3-mini';
const peerDir = process.env.PEER_DIR ?? '/work/peer-llamacpp';
const gguf = join(peerDir, process.env.PEER_GGUF ?? `${basename(modelDir)}-f32.gguf`);
const P = Number(process.env.PREFILL ?? 128);
const N = Number(process.env.DECODE ?? 32);
const rounds = Number(process.env.ROUNDS ?? 2);
const threads = process.env.THREADS ?? '2';

async function engineBatch1(core: EngineCore, round: number): Promise<{ prefill: number; decode: number }> {
  const prompt = Array.from({ length: P }, (_, i) => 2 + ((i * 7919 + round) % 1000));
  core.add({
    id: `b${round}`,
    promptIds: prompt,
    params: { ...defaultSamplingParams, temperature: 0, maxTokens: N + 1, ignoreEos: true },
  });
  let t0 = performance.now();
  await core.step(); // the whole prompt in one chunk, then the first token
  const prefill = P / ((performance.now() - t0) / 1000);
  t0 = performance.now();
  let steps = 0;
  while (core.hasWork) {
    await core.step();
    steps++;
  }
  return { prefill, decode: steps / ((performance.now() - t0) / 1000) };
}

function peerBatch1(): { prefill: number; decode: number } | null {
  if (!existsSync(gguf)) return null;
  const r = spawnSync(process.execPath, [join(peerDir, 'llamacpp-bench.mjs'), gguf, String(P), String(N)], {
    cwd: peerDir,
    env: { ...process.env, THREADS: threads },
    encoding: 'utf8',
  });
  const line = r.stdout.trim().split('\n').pop() ?? '';
  try {
    const j = JSON.parse(line) as { prefill_tok_s: number; decode_tok_s: number };
    return { prefill: j.prefill_tok_s, decode: j.decode_tok_s };
  } catch {
    console.error(`llama.cpp bench failed: ${r.stderr.slice(-500)}`);
    return null;
  }
}

const best = (xs: number[]): number => Math.max(...xs);

async function main(): Promise<void> {
  console.log(
    `model ${modelDir}; peer ${existsSync(gguf) ? gguf : '(none)'}; prefill ${P}, decode ${N}, ${rounds} interleaved rounds`,
  );
  const ours: { prefill: number; decode: number }[] = [];
  const peer: { prefill: number; decode: number }[] = [];
  // BATCH1=0 skips part 1 (serving only)
  const model = process.env.BATCH1 === '0' ? null : noGrad(() => loadModel(modelDir));
  const core =
    model &&
    new EngineCore(new ModelExecutor(model, model.newCache(4096, { blockSize: 16 })), {
      maxBatchedTokens: Math.max(512, P),
      prefixCaching: false,
    });
  if (core) await engineBatch1(core, -1); // warm-up
  for (let r = 0; core && r < rounds; r++) {
    const p = peerBatch1();
    if (p) peer.push(p);
    ours.push(await engineBatch1(core, r));
    console.log(`round ${r}: dsv3 ${JSON.stringify(ours.at(-1))}, llama.cpp ${JSON.stringify(p)}`);
  }
  const batch1 = {
    dsv3: ours.length
      ? { prefill: best(ours.map((o) => o.prefill)), decode: best(ours.map((o) => o.decode)) }
      : { prefill: NaN, decode: NaN },
    llamacpp: peer.length
      ? { prefill: best(peer.map((o) => o.prefill)), decode: best(peer.map((o) => o.decode)) }
      : null,
  };

  // the server in its own process
  const server = spawn(
    process.execPath,
    [
      '--import',
      'tsx',
      '--conditions=@dsv3/source',
      join(import.meta.dirname, '../src/cli.ts'),
      '--model',
      modelDir,
      '--port',
      '0',
      '--kv-cache-tokens',
      '8192',
      '--max-num-seqs',
      '16',
    ],
    { stdio: ['ignore', 'pipe', 'inherit'] },
  );
  const url = await new Promise<string>((res, rej) => {
    createInterface({ input: server.stdout! }).on('line', (l) => {
      const m = /ready: .* on (http:\/\/\S+)/.exec(l);
      if (m) res(m[1]!);
    });
    server.once('exit', () => rej(new Error('dsv3-serve exited')));
  });
  const serving: Record<string, BenchResult> = {};
  try {
    for (const c of (process.env.CONCURRENCY ?? '1,4,16').split(',').map(Number)) {
      const r = await runBenchmark({
        url,
        model: basename(modelDir),
        requests: 2 * c,
        rate: Infinity,
        concurrency: c,
        inputLen: Number(process.env.SERVE_INPUT ?? 64),
        outputLen: Number(process.env.SERVE_OUTPUT ?? 16),
        seed: c,
      });
      serving[c] = r;
      console.log(`\n${c} concurrent client(s):\n${formatTable(r)}`);
    }
  } finally {
    server.kill('SIGTERM');
  }
  const ratio = (a: number, b: number | undefined): string => (b ? (a / b).toFixed(2) : '-');
  console.log('\n| metric | dsv3 | llama.cpp (node-llama-cpp) | dsv3 / llama.cpp |\n|---|---|---|---|');
  console.log(
    `| batch-1 prefill tok/s (${P} tokens) | ${batch1.dsv3.prefill.toFixed(1)} | ${batch1.llamacpp?.prefill.toFixed(1) ?? '-'} | ${ratio(batch1.dsv3.prefill, batch1.llamacpp?.prefill)} |`,
  );
  console.log(
    `| batch-1 decode tok/s | ${batch1.dsv3.decode.toFixed(2)} | ${batch1.llamacpp?.decode.toFixed(2) ?? '-'} | ${ratio(batch1.dsv3.decode, batch1.llamacpp?.decode)} |`,
  );
  console.log(
    '\n| clients | output tok/s | TTFT p50 (ms) | TPOT p50 (ms) | ITL p50 (ms) | output tok/s vs 1 client |\n|---|---|---|---|---|---|',
  );
  const one = serving[1]?.outputThroughput;
  for (const [c, r] of Object.entries(serving))
    console.log(
      `| ${c} | ${r.outputThroughput.toFixed(2)} | ${r.ttftMs.p50.toFixed(0)} | ${r.tpotMs.p50.toFixed(0)} | ${r.itlMs.p50.toFixed(0)} | ${ratio(r.outputThroughput, one)} |`,
    );
  console.log(
    JSON.stringify({
      batch1,
      serving: Object.fromEntries(Object.entries(serving).map(([c, r]) => [c, { ...r, errors: undefined }])),
    }),
  );
}

await main();
