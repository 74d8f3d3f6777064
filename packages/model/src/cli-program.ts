// dsv3-model's program: inspect a checkpoint, compute logits, or generate, on the CPU or WebGPU (the
// entry, cli.ts, settles the process first).
import { readdirSync, readFileSync, realpathSync } from 'node:fs';
import { join } from 'node:path';
import { Command, InvalidArgumentError, Option } from 'commander';
import {
  defaultBackend,
  gemmInfo,
  noGrad,
  readShardedCheckpoint,
  saveSafetensors,
  setGemmThreads,
  tensor,
  type Backend,
} from '@dsv3/core';
import { benchGeneration, copyBandwidth, storedWeightBytes, weightBytesPerToken } from './bench.js';
import { countParameters, flopsPerToken, kvBytesPerToken, parseConfig } from './index.js';
import { generate } from './generate.js';
import { type LoadOptions, loadModel, prefillActivationsFor } from './loader.js';
import { DEFAULT_WARMUP_TOKENS, warmUp, warmupTokensWithin } from './warm-up.js';

function parseIdRows(s: string): number[][] {
  const rows = s.split(';').map((r) =>
    r.split(',').map((v) => {
      const n = Number(v.trim());
      if (v.trim() === '' || !Number.isInteger(n) || n < 0)
        throw new InvalidArgumentError(`"${v}" is not a token id (non-negative integer)`);
      return n;
    }),
  );
  if (rows.some((r) => r.length !== rows[0]!.length))
    throw new InvalidArgumentError('every row of ids must have the same length');
  return rows;
}

function parseInt10(s: string): number {
  const n = Number(s);
  if (!Number.isInteger(n) || n < 0) throw new InvalidArgumentError(`"${s}" is not a non-negative integer`);
  return n;
}

function parseNumber(s: string): number {
  const n = Number(s);
  if (!Number.isFinite(n)) throw new InvalidArgumentError(`"${s}" is not a number`);
  return n;
}

async function backendFor(name: string): Promise<Backend> {
  if (name === 'cpu') return defaultBackend();
  if (name === 'webgpu') {
    const { createNodeWebGpuBackend } = await import('@dsv3/core/node');
    const gpu = await createNodeWebGpuBackend();
    process.stderr.write(`webgpu adapter: ${JSON.stringify(gpu.adapterInfo)}\n`);
    return gpu;
  }
  throw new InvalidArgumentError(`unknown backend "${name}" (cpu or webgpu)`);
}

type Weights = 'f32' | 'bf16' | 'f16' | 'fp8';
type HeadDtype = 'bf16' | 'fp8';

/** --dtype: how the projection weights are stored (loadModel's `weights`). */
const dtypeOption = (): Option =>
  new Option(
    '--dtype <d>',
    'weight storage: f32; bf16 (weight-only); fp8 (cpu: E4M3 + 128x128 scales); f16 (webgpu with shader-f16: f16 weights and GEMMs, f32 accumulation). Activations stay f32',
  )
    .choices(['f32', 'bf16', 'f16', 'fp8'])
    .default('f32');

/** --prefill-activations: f32 or i16 activations in the bf16 / FP8 prefill products (loadModel's `prefillActivations`). */
const prefillActivationsOption = (): Option =>
  new Option(
    '--prefill-activations <a>',
    'CPU, --dtype bf16 / fp8: activations of the prefill products, i16 (the default: integer dot products, ~1.3x less CPU a prefill; error bounds in core i16-gemm-kernel.ts) or f32',
  ).choices(['f32', 'i16']);

/** --head-dtype: the LM head's storage under --dtype fp8 (loadModel's `headDtype`). */
const headDtypeOption = (): Option =>
  new Option(
    '--head-dtype <d>',
    "LM head storage with --dtype fp8 on the cpu: bf16 (as in DeepSeek-V3's checkpoints) or fp8 (quantized at load, 128x128 blocks: about half the bytes a decode step reads)",
  )
    .choices(['bf16', 'fp8'])
    .default('bf16');

/**
 * --map-weights / --no-map-weights: resident weights stored in their storage dtype map from the file
 * (loadModel's `mapWeights`); neither: 'auto', mapped where the load keeps resident CPU weights.
 */
const mapWeightsOption = (): Option =>
  new Option(
    '--map-weights',
    'CPU: map the weights the checkpoint stores as they are kept (bf16 under --dtype bf16, FP8 bytes under fp8, f32 from an F32 checkpoint) from the file, as llama.cpp maps a GGUF — the default where the load keeps CPU weights (a load several times faster); given, an error where it keeps none',
  );
const noMapWeightsOption = (): Option =>
  new Option('--no-map-weights', 'read the weights into memory instead of mapping them');

/** The options of a command that loads a model: where it runs and how its weights are kept. */
interface WeightOptions {
  backend: string;
  dtype: Weights;
  headDtype: HeadDtype;
  prefillActivations?: 'f32' | 'i16';
  mapWeights?: boolean;
}

/** Adds WeightOptions' flags (--backend, --dtype, --head-dtype, --prefill-activations, --[no-]map-weights). */
const withWeightOptions = (command: Command): Command =>
  command
    .option('--backend <name>', 'cpu or webgpu', 'cpu')
    .addOption(dtypeOption())
    .addOption(headDtypeOption())
    .addOption(prefillActivationsOption())
    .addOption(mapWeightsOption())
    .addOption(noMapWeightsOption());

/** loadModel's options for WeightOptions on `backend` (backendFor(o.backend)). */
const loadOptionsFor = (o: WeightOptions, backend: Backend): LoadOptions => ({
  backend,
  weights: o.dtype,
  headDtype: o.headDtype,
  prefillActivations: o.prefillActivations,
  mapWeights: mapWeightsFor(o.mapWeights),
});

/** Whether this process maps a safetensors file of checkpoint `dir` (its weights mapped at load; Linux). */
function mapsCheckpointFiles(dir: string): boolean {
  try {
    const files = readdirSync(dir)
      .filter((f) => f.endsWith('.safetensors'))
      .map((f) => realpathSync(join(dir, f)));
    return readFileSync('/proc/self/maps', 'utf8')
      .split('\n')
      .some((l) => files.some((f) => l.endsWith(` ${f}`)));
  } catch {
    return false; // no /proc: not Linux, where nothing maps
  }
}

/** loadModel's `mapWeights` for the parsed flags (undefined: neither given). */
const mapWeightsFor = (flag: boolean | undefined): boolean | 'auto' => flag ?? 'auto';

const program = new Command('dsv3-model')
  .description('DeepSeek-V3 checkpoints: inspect, logits, generate')
  .showHelpAfterError();

program
  .command('inspect')
  .argument('<dir>', 'checkpoint directory (config.json + safetensors)')
  .option('--json', 'print JSON')
  .description('summarise the config, parameter counts and tensors of a checkpoint')
  .action((dir: string, o: { json?: boolean }) => {
    const config = parseConfig(JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8')));
    const ckpt = readShardedCheckpoint(dir);
    const dtypes: Record<string, number> = {};
    let bytes = 0;
    for (const n of ckpt.names()) {
      const i = ckpt.info(n);
      dtypes[i.stDtype] = (dtypes[i.stDtype] ?? 0) + 1;
      bytes += i.byteLength;
    }
    ckpt.close();
    const p = countParameters(config);
    const summary = {
      layers: config.numHiddenLayers,
      hidden: config.hiddenSize,
      heads: config.numHeads,
      experts: {
        routed: config.nRoutedExperts,
        shared: config.nSharedExperts,
        perToken: config.numExpertsPerTok,
        groups: config.nGroup,
        topkGroup: config.topkGroup,
      },
      mla: {
        qLoraRank: config.qLoraRank,
        kvLoraRank: config.kvLoraRank,
        nope: config.qkNopeHeadDim,
        rope: config.qkRopeHeadDim,
        v: config.vHeadDim,
      },
      mtpModules: config.numNextnPredictLayers,
      fp8: config.quantization !== null,
      parameters: { total: p.total, activated: p.activated, mtp: p.mtp },
      kvBytesPerTokenBf16: kvBytesPerToken(config),
      flopsPerTokenPrefill4k: flopsPerToken(config, { context: 4096 }),
      tensors: { count: Object.values(dtypes).reduce((a, b) => a + b, 0), dtypes, bytes },
    };
    if (o.json) console.log(JSON.stringify(summary));
    else {
      console.log(
        `${dir}: deepseek_v3, ${summary.layers} layers, hidden ${summary.hidden}, ${summary.heads} heads${summary.fp8 ? ', FP8 weights' : ''}`,
      );
      console.log(
        `  experts: ${config.nRoutedExperts} routed + ${config.nSharedExperts} shared, ${config.numExpertsPerTok} per token, ${config.nGroup} groups keep ${config.topkGroup}`,
      );
      console.log(
        `  parameters: ${p.total.toLocaleString()} total, ${p.activated.toLocaleString()} activated per token, ${p.mtp.toLocaleString()} in MTP modules`,
      );
      console.log(`  latent KV cache: ${summary.kvBytesPerTokenBf16.toLocaleString()} bytes per token (bf16)`);
      console.log(
        `  tensors: ${summary.tensors.count} (${Object.entries(dtypes)
          .map(([k, v]) => `${v} ${k}`)
          .join(', ')}), ${(bytes / 1e6).toFixed(1)} MB`,
      );
    }
  });

withWeightOptions(
  program
    .command('logits')
    .argument('<dir>', 'checkpoint directory')
    .requiredOption('--input-ids <rows>', 'token ids, rows separated by ";" (e.g. 1,2,3;4,5,6)', parseIdRows)
    .requiredOption('--out <file>', 'output .safetensors file (f32 "logits" [batch, seq, vocab])'),
)
  .description('full-sequence logits of the input ids')
  .action(async (dir: string, o: WeightOptions & { inputIds: number[][]; out: string }) => {
    const backend = await backendFor(o.backend);
    const model = loadModel(dir, loadOptionsFor(o, backend));
    const rows = o.inputIds;
    const ids = tensor(Int32Array.from(rows.flat()), {
      shape: [rows.length, rows[0]!.length],
      dtype: 'i32',
      backend,
    });
    const out = noGrad(() => model.forward(ids));
    await saveSafetensors(o.out, { logits: out.logits }, { format: 'pt' });
    console.error(`wrote logits [${out.logits.shape.join(', ')}] to ${o.out}`);
    backend.dispose?.();
  });

withWeightOptions(
  program
    .command('generate')
    .argument('<dir>', 'checkpoint directory')
    .requiredOption('--prompt-ids <rows>', 'prompt token ids, rows separated by ";"', parseIdRows)
    .requiredOption('--max-new-tokens <n>', 'tokens to generate per row', parseInt10)
    .option('--temperature <t>', 'sampling temperature (0 = greedy)', parseNumber, 0)
    .option('--top-k <k>', 'sample among the k most likely tokens', parseInt10)
    .option('--top-p <p>', 'nucleus sampling threshold', parseNumber)
    .option('--seed <n>', 'sampling seed', parseInt10, 0)
    .option('--mtp <n>', 'draft n tokens per step with the MTP modules (speculative decoding)', parseInt10, 0),
)
  .option('--json', 'print {"ids": [[...]]}')
  .description('generate continuations through the absorbed latent cache')
  .action(
    async (
      dir: string,
      o: WeightOptions & {
        promptIds: number[][];
        maxNewTokens: number;
        temperature: number;
        topK?: number;
        topP?: number;
        seed: number;
        mtp: number;
        json?: boolean;
      },
    ) => {
      const backend = await backendFor(o.backend);
      const model = noGrad(() => loadModel(dir, loadOptionsFor(o, backend)));
      const t0 = performance.now();
      const res = await generate(model, o.promptIds, {
        maxNewTokens: o.maxNewTokens,
        temperature: o.temperature,
        seed: o.seed,
        mtpDraftTokens: o.mtp,
        ...(o.topK !== undefined && { topK: o.topK }),
        ...(o.topP !== undefined && { topP: o.topP }),
      });
      const secs = (performance.now() - t0) / 1000;
      if (o.json) console.log(JSON.stringify({ ids: res.ids }));
      else for (const row of res.ids) console.log(row.join(','));
      const n = res.newTokens.reduce((s, r) => s + r.length, 0);
      console.error(
        `${n} tokens in ${secs.toFixed(2)} s (${(n / secs).toFixed(1)} tokens/s)${res.stats ? `, MTP acceptance ${(res.stats.conditionalRate(0) * 100).toFixed(1)}%` : ''}`,
      );
      backend.dispose?.();
    },
  );

function parseList(s: string): number[] {
  return s.split(',').map((v) => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < 1) throw new InvalidArgumentError(`"${v}" is not a positive integer`);
    return n;
  });
}

withWeightOptions(
  program
    .command('bench')
    .argument('<dir>', 'checkpoint directory')
    .option('--prefill <n>', 'prompt tokens per sequence', parseInt10, 512)
    .option('--decode <n>', 'greedy decode steps', parseInt10, 64),
)
  .option('--threads <n>', 'CPU threads (default: all cores)', parseInt10)
  .option('--batch <list>', 'also decode this many sequences at once, e.g. 4,16 (prefill shortened to 64)', parseList)
  .option('--json', 'print one JSON line')
  .option(
    '--warmup <tokens>',
    'CPU: a throwaway prefill of this many tokens (at most max_position_embeddings - 1) and up to 64 decode steps after loading (warmup_s, apart from load_s), so the timed prefill runs at steady speed; 0: time the cold first prefill',
    parseInt10,
    DEFAULT_WARMUP_TOKENS,
  )
  .description('prefill and decode tokens/s, load time and peak memory on a checkpoint')
  .action(
    async (
      dir: string,
      o: WeightOptions & {
        prefill: number;
        decode: number;
        threads?: number;
        batch?: number[];
        json?: boolean;
        warmup: number;
      },
    ) => {
      const weights = o.dtype;
      if (o.threads !== undefined) setGemmThreads(Math.max(1, o.threads));
      const t = performance.now();
      const backend = await backendFor(o.backend);
      const headDtype = o.headDtype;
      const model = noGrad(() => loadModel(dir, loadOptionsFor(o, backend)));
      const loadS = (performance.now() - t) / 1000;
      const tw = performance.now();
      if (o.backend === 'cpu' && o.warmup > 0) noGrad(() => warmUp(model, warmupTokensWithin(model.config, o.warmup)));
      const warmupS = (performance.now() - tw) / 1000;
      const main = await benchGeneration(model, { prefill: o.prefill, decode: o.decode });
      const batched = [];
      for (const b of o.batch ?? []) {
        const r = await benchGeneration(model, {
          prefill: Math.min(o.prefill, 64),
          decode: Math.min(o.decode, 32),
          batch: b,
        });
        batched.push({ batch: b, decode_tok_s: r.decodeTokS, prefill_tok_s: r.prefillTokS });
      }
      const peakRss = process.resourceUsage().maxRSS * 1024; // before the bandwidth probe's buffers
      const bw = copyBandwidth();
      const bytesPerToken = weightBytesPerToken(model, weights, headDtype);
      const out = {
        dir,
        backend: o.backend,
        dtype: o.dtype,
        head_dtype: o.headDtype,
        map_weights: mapsCheckpointFiles(dir),
        prefill_activations:
          prefillActivationsFor({ backend, weights, prefillActivations: o.prefillActivations }) ?? 'f32',
        threads: gemmInfo().threads,
        relaxed_simd: gemmInfo().relaxedSimd,
        prefill: o.prefill,
        decode: o.decode,
        prefill_tok_s: main.prefillTokS,
        decode_tok_s: main.decodeTokS,
        prefill_cpu_ms: main.prefillThreads?.runMs ?? null,
        prefill_cpu_wait_ms: main.prefillThreads?.waitMs ?? null,
        load_s: loadS,
        warmup_s: warmupS,
        peak_rss_bytes: peakRss,
        weight_bytes: storedWeightBytes(model),
        kv_cache_bytes: kvBytesPerToken(model.config, 4) * (o.prefill + o.decode),
        weight_bytes_per_token: bytesPerToken,
        copy_bandwidth_bytes_s: bw,
        bandwidth_fraction: (main.decodeTokS * bytesPerToken) / bw,
        batched,
        tokens: main.tokens,
        decode_step_ms: main.stepMs.map((ms) => Math.round(ms * 100) / 100),
      };
      backend.dispose?.();
      if (o.json) console.log(JSON.stringify(out));
      else {
        console.log(
          `${dir} (${o.dtype} weights, ${out.threads} threads): load ${loadS.toFixed(1)} s (+ warm-up ${warmupS.toFixed(1)} s), peak RSS ${(out.peak_rss_bytes / 2 ** 30).toFixed(2)} GiB (${(out.peak_rss_bytes / (out.weight_bytes + out.kv_cache_bytes)).toFixed(2)}x the stored weights and the KV cache)`,
        );
        console.log(
          `  prefill ${o.prefill}: ${main.prefillTokS.toFixed(1)} tok/s; decode ${o.decode}: ${main.decodeTokS.toFixed(2)} tok/s (${(out.bandwidth_fraction * 100).toFixed(0)}% of ${(bw / 1e9).toFixed(1)} GB/s copy bandwidth)`,
        );
        if (main.prefillThreads)
          console.log(
            `  prefill threads: ${main.prefillThreads.runMs.toFixed(0)} ms on a CPU, ${main.prefillThreads.waitMs.toFixed(0)} ms waiting for one (other processes' load)`,
          );
        for (const b of batched) console.log(`  batch ${b.batch}: decode ${b.decode_tok_s.toFixed(1)} tok/s`);
      }
    },
  );

/** Runs the command line (the entry calls it once the program's modules are loaded). */
export function runProgram(): void {
  program.parseAsync().catch((e: unknown) => {
    console.error(`dsv3-model: ${e instanceof Error ? e.message : String(e)}`);
    process.exit(1);
  });
}
