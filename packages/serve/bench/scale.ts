// Serving at scale on this machine (tiny-v3; the V3-shaped checkpoint's cache sizes are computed from
// its config): colocated vs disaggregated TTFT and TPOT under the same open-loop load, latent bytes
// moved per request vs an MHA cache of the same model, per-rank expert load with and without
// redundant experts, and EP step time with and without the two-micro-batch overlap. Runs of the two
// sides of each comparison are interleaved and reported as ratios.
//   npx tsx --conditions=@dsv3/source bench/scale.ts [--reps 2] [--v3-config /work/ckpt/v3-mini/config.json]
import { existsSync, readFileSync } from 'node:fs';
import { kvElementsPerToken } from '@dsv3/mla';
import { AsyncEngine, imbalance, type GenerationChunk } from '../src/index.js';
import { startCluster, workerStatus } from '../test/disagg-helpers.js';
import { runJob } from '../test/ep-helpers.js';
import { greedy, makeCore, prompt } from '../test/helpers.js';
import { tinyTokenizer } from '../test/tokenizer.js';

const arg = (name: string, def: string): string => {
  const i = process.argv.indexOf(name);
  return i >= 0 ? process.argv[i + 1]! : def;
};
const reps = Number(arg('--reps', '2'));
const v3Config = arg('--v3-config', '/work/ckpt/v3-mini/config.json');

const REQUESTS = 16;
const PROMPT = 48;
const NEW = 16;
const GAP_MS = 40;

interface Timing {
  ttft: number[];
  tpot: number[];
}

async function load(engine: AsyncEngine): Promise<Timing> {
  const t: Timing = { ttft: [], tpot: [] };
  const one = async (i: number): Promise<void> => {
    await new Promise((r) => setTimeout(r, i * GAP_MS));
    const t0 = performance.now();
    let first = 0;
    let n = 0;
    for await (const c of engine.generate({
      promptIds: prompt(PROMPT, 500 + i),
      params: greedy(NEW, { ignoreEos: true }),
    }) as AsyncIterable<GenerationChunk>) {
      if (c.tokenIds.length && !first) first = performance.now();
      n += c.tokenIds.length;
    }
    t.ttft.push(first - t0);
    t.tpot.push((performance.now() - first) / Math.max(1, n - 1));
  };
  await Promise.all(Array.from({ length: REQUESTS }, (_, i) => one(i)));
  return t;
}

const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

async function main(): Promise<void> {
  console.log(
    `# serving at scale (tiny-v3; ${REQUESTS} requests, ${PROMPT}-token prompts, ${NEW} new tokens, one every ${GAP_MS} ms)`,
  );
  // the workers' token budget per step equals the colocated engine's
  process.env.DSV3_PREFILL_BUDGET = '64';
  const cluster = await startCluster(1, 1);
  const colocated = new AsyncEngine(makeCore({ maxBatchedTokens: 64, maxRunningSeqs: 16 }), tinyTokenizer());
  const col: Timing = { ttft: [], tpot: [] };
  const dis: Timing = { ttft: [], tpot: [] };
  for (let r = 0; r < reps; r++) {
    for (const [eng, acc] of [
      [colocated, col],
      [cluster.engine, dis],
    ] as const) {
      const t = await load(eng);
      acc.ttft.push(median(t.ttft));
      acc.tpot.push(median(t.tpot));
    }
  }
  const st = await Promise.all(cluster.workers.map((w) => workerStatus(w.url)));
  await cluster.close();
  console.log(
    `colocated (1 process):          TTFT median ${median(col.ttft).toFixed(0)} ms, TPOT median ${median(col.tpot).toFixed(1)} ms`,
  );
  console.log(
    `disaggregated (1P + 1D procs):  TTFT median ${median(dis.ttft).toFixed(0)} ms, TPOT median ${median(dis.tpot).toFixed(1)} ms`,
  );
  console.log(
    `ratio disaggregated / colocated: TTFT ${(median(dis.ttft) / median(col.ttft)).toFixed(2)}, TPOT ${(median(dis.tpot) / median(col.tpot)).toFixed(2)}`,
  );
  const prefill = st.find((s) => s.role === 'prefill')!;
  const perReq = prefill.pageBytes / prefill.handled;
  const tinyMha = kvElementsPerToken({ kind: 'mha', numLayers: 4, numHeads: 4, headDim: 32 + 16 }) * 4 * (PROMPT - 1);
  console.log(
    `bytes moved per request (tiny-v3, ${PROMPT - 1} tokens): ${perReq} latent (${prefill.bytesPerToken} B/token) vs ${tinyMha} for an MHA cache (${(tinyMha / perReq).toFixed(1)}x)`,
  );
  if (existsSync(v3Config)) {
    const c = JSON.parse(readFileSync(v3Config, 'utf8')) as Record<string, number>;
    const l = c.num_hidden_layers!;
    const mla =
      kvElementsPerToken({ kind: 'mla', numLayers: l, kvLoraRank: c.kv_lora_rank!, ropeDim: c.qk_rope_head_dim! }) * 4;
    const mha =
      kvElementsPerToken({
        kind: 'mha',
        numLayers: l,
        numHeads: c.num_attention_heads!,
        headDim: c.qk_nope_head_dim! + c.qk_rope_head_dim!,
      }) * 4;
    console.log(
      `V3-shaped checkpoint (${v3Config}): ${mla} B/token latent vs ${mha} B/token MHA (${(mha / mla).toFixed(1)}x); a 1024-token prompt moves ${((mla * 1023) / 2 ** 20).toFixed(1)} MiB vs ${((mha * 1023) / 2 ** 20).toFixed(1)} MiB`,
    );
  }

  console.log('\n# expert-parallel serving (2 tcp processes, tiny-v3: 16 routed experts + the shared one)');
  const lengths = [3, 17, 8, 30, 1, 12, 25, 5];
  const maxNew = [6, 4, 9, 3, 7, 5, 4, 8];
  const prompts = lengths.map((n, i) => prompt(n, i + 11));
  const rr = await runJob(2, { prompts, maxNew, slotsPerRank: 12, rounds: 3, replaceEachRound: true });
  const reps0 = rr[0]!.replacements;
  console.log(
    `per-rank rows max/mean: ${imbalance(reps0[0]!.rankRows).toFixed(3)} without redundant experts (round-robin, 9 slots used of 12) -> ${imbalance(reps0[1]!.rankRows).toFixed(3)} with EPLB's redundant experts (12 slots/rank)`,
  );
  const ms: Record<'off' | 'on', number[]> = { off: [], on: [] };
  const big = Array.from({ length: 16 }, (_, i) => prompt(24, i + 200));
  for (let r = 0; r < reps; r++) {
    for (const overlap of [false, true]) {
      const res = await runJob(2, { prompts: big, maxNew: big.map(() => 8), twoMicroBatches: overlap });
      ms[overlap ? 'on' : 'off'].push(Math.max(...res.map((x) => x.runMs / x.steps)));
    }
  }
  console.log(
    `EP step time: ${median(ms.off).toFixed(1)} ms without, ${median(ms.on).toFixed(1)} ms with the two-micro-batch overlap (ratio ${(median(ms.on) / median(ms.off)).toFixed(2)})`,
  );
}

await main();
process.exit(0);
