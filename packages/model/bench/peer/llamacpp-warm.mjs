// llama.cpp (node-llama-cpp's CPU build) timed after a warm-up at load, as `dsv3-model bench` is: one
// throwaway evaluation of WARMUP prompt tokens and one decode step, the sequence's history cleared, then the
// same prefill and batch-1 decode timings as ../shared/scripts/peer/llamacpp-bench.mjs (same prompt, same
// JSON line). bench/vs-llamacpp.ts copies it into the peer work directory, where node-llama-cpp resolves.
// usage: node llamacpp-warm.mjs FILE.gguf PREFILL_TOKENS DECODE_TOKENS   (env THREADS, WARMUP)
import { statSync } from 'node:fs';
import { getLlama, LlamaLogLevel } from 'node-llama-cpp';

const [gguf, prefillLen, decodeLen] = process.argv.slice(2);
const P = Number(prefillLen),
  N = Number(decodeLen),
  W = Number(process.env.WARMUP ?? 128);
if (!gguf || !(P >= 1) || !(N >= 1) || !(W >= 1))
  throw new Error(`usage: llamacpp-warm.mjs FILE.gguf PREFILL DECODE (env WARMUP >= 1), got ${process.argv.slice(2)}`);
// load_s: the binding, the model (mmap'd and read in) and the context, as dsv3-model bench's load_s
// counts its backend and loadModel; the warm-up is apart (warmup_s), as there
const loadStart = performance.now();
const llama = await getLlama({ gpu: false, logLevel: LlamaLogLevel.error });
const model = await llama.loadModel({ modelPath: gguf });
const ctx = await model.createContext({
  contextSize: 2048,
  batchSize: 512,
  sequences: 1,
  threads: Number(process.env.THREADS ?? 2),
});
const loadS = (performance.now() - loadStart) / 1000;
const seq = ctx.getSequence();
const greedy = { generateNext: { token: true, options: { temperature: 0 } } };

/** Evaluates `prompt` then `decode` greedy steps; returns the seconds of each part. */
async function run(prompt, decode) {
  let t0 = performance.now();
  let r = await seq.controlledEvaluate(prompt.map((t, i) => (i === prompt.length - 1 ? [t, greedy] : t)));
  const prefillS = (performance.now() - t0) / 1000;
  let tok = r[prompt.length - 1].next.token;
  t0 = performance.now();
  for (let i = 0; i < decode; i++) {
    r = await seq.controlledEvaluate([[tok, greedy]]);
    tok = r[0].next.token;
  }
  return { prefillS, decodeS: (performance.now() - t0) / 1000 };
}

// the warm-up: other tokens than the timed prompt's, then nothing of it left in the KV cache
const warmStart = performance.now();
await run(
  Array.from({ length: W }, (_, i) => 3 + ((i * 104729) % 1000)),
  1,
);
await seq.clearHistory();
const warmupS = (performance.now() - warmStart) / 1000;
const { prefillS, decodeS } = await run(
  Array.from({ length: P }, (_, i) => 2 + ((i * 7919) % 1000)),
  N,
);
console.log(
  JSON.stringify({
    gguf: gguf.split('/').pop(),
    prefill_tokens: P,
    warmup_tokens: W,
    prefill_tok_s: +(P / prefillS).toFixed(1),
    decode_tok_s: +(N / decodeS).toFixed(2),
    load_s: +loadS.toFixed(2),
    warmup_s: +warmupS.toFixed(2),
    // the process's peak resident set: with mmap'd weights, the file's pages it touched count here
    peak_rss_bytes: process.resourceUsage().maxRSS * 1024,
    weight_bytes: statSync(gguf).size,
  }),
);
await ctx.dispose();
await model.dispose();
