// dsv3-serve's program: serve a model directory over OpenAI's HTTP API (the entry, cli.ts, settles the
// process first).
import { basename, resolve } from 'node:path';
import { Command, InvalidArgumentError, Option } from 'commander';
import { DEFAULT_WARMUP_TOKENS } from '@dsv3/model';
import { exitAfterDrainOnSignal } from './drain-on-signal.js';
import { createServer } from './app.js';
import { loadServed } from './load.js';
import { runRouter, runWorker, type Role } from './roles.js';
import { runExpertParallel } from './ep.js';

function positiveInt(s: string): number {
  const n = Number(s);
  if (!Number.isInteger(n) || n < 1) throw new InvalidArgumentError(`"${s}" is not a positive integer`);
  return n;
}
function nonNegativeInt(s: string): number {
  const n = Number(s);
  if (!Number.isInteger(n) || n < 0) throw new InvalidArgumentError(`"${s}" is not a non-negative integer`);
  return n;
}
function nonNegativeNumber(s: string): number {
  const n = Number(s);
  if (!Number.isFinite(n) || n < 0) throw new InvalidArgumentError(`"${s}" is not a non-negative number`);
  return n;
}
function port(s: string): number {
  const n = Number(s);
  if (!Number.isInteger(n) || n < 0 || n > 65535) throw new InvalidArgumentError(`"${s}" is not a port (0-65535)`);
  return n;
}

interface CliOptions {
  model: string;
  port: number;
  host: string;
  backend: 'cpu' | 'webgpu';
  dtype: 'f32' | 'bf16' | 'f16' | 'fp8';
  mapWeights?: boolean;
  servedModelName?: string;
  maxNumSeqs: number;
  maxNumBatchedTokens: number;
  maxQueue: number;
  maxModelLen?: number;
  kvCacheTokens: number;
  warmup: number;
  mtp: number;
  apiKey?: string;
  prefixCaching: boolean;
  role: Role;
  controlPort?: number;
  router?: string;
  advertiseHost?: string;
  minWorkers: number;
  ep?: number;
  epRank: number;
  epMaster?: string;
  epSlots?: number;
  eplbInterval: number;
  twoMicroBatches: boolean;
}

const program = new Command('dsv3-serve')
  .description('Serve a DeepSeek-V3-architecture checkpoint over an OpenAI-compatible HTTP API')
  .requiredOption('--model <dir>', 'model directory (config.json, safetensors, tokenizer files)')
  .option('--port <n>', 'port to listen on', port, 8000)
  .option('--host <addr>', 'address to listen on', '127.0.0.1')
  .addOption(new Option('--backend <name>', 'compute backend').choices(['cpu', 'webgpu']).default('cpu'))
  .addOption(
    new Option(
      '--dtype <d>',
      'weight storage: f32; bf16 (weight-only); fp8 (cpu); f16 (webgpu with shader-f16: f16 weights and GEMMs, f32 accumulation)',
    )
      .choices(['f32', 'bf16', 'f16', 'fp8'])
      .default('f32'),
  )
  .option(
    '--map-weights',
    'cpu: map the weights the checkpoint stores as they are kept from the file, as llama.cpp maps a GGUF — the default where the load keeps CPU weights (a load several times faster; processes serving the same file share its pages); given, an error where it keeps none',
  )
  .option('--no-map-weights', 'read the weights into memory instead of mapping them')
  .option('--served-model-name <name>', "the model name clients send (default: the directory's name)")
  .option('--max-num-seqs <n>', 'requests running at once', positiveInt, 64)
  .option(
    '--max-num-batched-tokens <n>',
    'tokens per engine step (prefill chunks and decodes together)',
    positiveInt,
    512,
  )
  .option('--max-queue <n>', 'requests allowed to wait; more get 429', nonNegativeInt, 256)
  .option('--max-model-len <n>', 'longest prompt + completion (default: max_position_embeddings)', positiveInt)
  .option('--kv-cache-tokens <n>', 'tokens the paged latent cache holds, all requests together', positiveInt, 32768)
  .option(
    '--warmup <tokens>',
    'cpu: a throwaway prefill of this many tokens at load, so the first request runs at steady speed (0: none; not on EP ranks)',
    nonNegativeInt,
    DEFAULT_WARMUP_TOKENS,
  )
  .option('--mtp <k>', 'draft k tokens per step with the MTP module (speculative decoding; 0 = off)', nonNegativeInt, 0)
  .option('--api-key <key>', 'require Authorization: Bearer <key> on /v1/* (default: $DSV3_API_KEY)')
  .option('--no-prefix-caching', 'do not share cached prompt prefixes between requests')
  .addOption(
    new Option('--role <role>', 'colocated server, or a part of a disaggregated one')
      .choices(['colocated', 'router', 'prefill', 'decode'])
      .default('colocated'),
  )
  .option('--control-port <n>', 'router: the port workers register on (default: --port + 1)', port)
  .option('--router <url>', "prefill/decode: the router's control URL (http://host:control-port)")
  .option(
    '--advertise-host <addr>',
    'prefill/decode: the address the router and peers reach this worker at (default: --host)',
  )
  .option('--min-workers <n>', 'router: prefill and decode workers (each) to wait for before serving', positiveInt, 1)
  .option(
    '--ep <n>',
    'expert-parallel over n processes: this one serves HTTP, the MoE experts are sharded over all n',
    positiveInt,
  )
  .option('--ep-rank <r>', 'join an expert-parallel group as rank r (r > 0; rank 0 serves HTTP)', nonNegativeInt, 0)
  .option(
    '--ep-master <host:port>',
    "rank 0's rendezvous; on rank 0 it means: wait for ranks started by hand instead of launching them",
  )
  .option('--ep-slots <n>', 'expert slots per rank (default: one copy of each expert, plus one)', positiveInt)
  .option(
    '--eplb-interval <seconds>',
    're-place the experts from live loads this often (0 = never; V3: about 10 minutes)',
    nonNegativeNumber,
    600,
  )
  .option('--two-micro-batches', "overlap one half of the batch's dispatch/combine with the other's compute")
  .action(async (o: CliOptions) => {
    const dir = resolve(o.model);
    const name = o.servedModelName ?? basename(dir);
    const apiKey = o.apiKey ?? process.env.DSV3_API_KEY;
    if (o.ep !== undefined) {
      if (o.role !== 'colocated')
        throw new Error(`--ep runs a colocated server; it cannot be combined with --role ${o.role}`);
      return runExpertParallel({
        dir,
        name,
        host: o.host,
        port: o.port,
        ...(apiKey && { apiKey }),
        maxQueue: o.maxQueue,
        load: {
          backend: o.backend,
          weights: o.dtype,
          mapWeights: o.mapWeights ?? 'auto',
          maxNumSeqs: o.maxNumSeqs,
          maxNumBatchedTokens: o.maxNumBatchedTokens,
          kvCacheTokens: o.kvCacheTokens,
          mtp: o.mtp,
          prefixCaching: o.prefixCaching,
          ...(o.maxModelLen && { maxModelLen: o.maxModelLen }),
        },
        ep: o.ep,
        rank: o.epRank,
        ...(o.epMaster && { master: o.epMaster }),
        ...(o.epSlots && { slots: o.epSlots }),
        eplbIntervalS: o.eplbInterval,
        twoMicroBatches: o.twoMicroBatches ?? false,
      });
    }
    if (o.role !== 'colocated') {
      const ro = {
        ...o,
        mapWeights: o.mapWeights ?? ('auto' as const),
        dir,
        name,
        ...(apiKey && { apiKey }),
        controlPort: o.controlPort ?? (o.port ? o.port + 1 : 0),
      };
      return o.role === 'router' ? runRouter(ro) : runWorker(o.role, ro);
    }
    const server = createServer({ modelName: name, ...(apiKey && { apiKey }) });
    // Listen first: /health answers 503 while the model loads.
    const address = await server.app.listen({ port: o.port, host: o.host });
    const stopping = exitAfterDrainOnSignal(() => server.drain());
    const served = await loadServed(dir, {
      backend: o.backend,
      weights: o.dtype,
      mapWeights: o.mapWeights ?? 'auto',
      maxNumSeqs: o.maxNumSeqs,
      maxNumBatchedTokens: o.maxNumBatchedTokens,
      maxQueue: o.maxQueue,
      kvCacheTokens: o.kvCacheTokens,
      warmupTokens: o.warmup,
      mtp: o.mtp,
      prefixCaching: o.prefixCaching,
      ...(o.maxModelLen && { maxModelLen: o.maxModelLen }),
    });
    if (stopping()) return;
    server.ready(served);
    console.log(
      `dsv3-serve ready: model "${name}" on ${address} (backend ${o.backend}, max ${served.engine.core.maxModelLen} tokens per request)`,
    );
  });

/** Runs the command line (the entry calls it once the program's modules are loaded). */
export function runProgram(): void {
  program.parseAsync().catch((e: unknown) => {
    process.stderr.write(`dsv3-serve: ${e instanceof Error ? e.message : String(e)}\n`);
    process.exit(1);
  });
}
