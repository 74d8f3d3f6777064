// dsv3-serve --role router|prefill|decode: prefill/decode disaggregation (@dsv3/serve's disagg). The
// router serves the OpenAI API with the model directory's tokenizer and chat template only (no
// weights); workers load the checkpoint, listen for the router and their peers, and register.
import { defaultBackend, noGrad, type Backend } from '@dsv3/core';
import { loadModel, loadTokenizer } from '@dsv3/model';
import {
  AsyncEngine,
  chatTemplateFor,
  DecodeWorker,
  keepRegistered,
  ModelExecutor,
  PrefillWorker,
  RouterCore,
} from '@dsv3/serve';
import { createServer } from './app.js';
import { servedWarmupTokens } from './load.js';

export type Role = 'colocated' | 'router' | 'prefill' | 'decode';

export interface RoleOptions {
  dir: string;
  name: string;
  host: string;
  port: number;
  backend: 'cpu' | 'webgpu';
  /** projection weight storage (loadModel's `weights`) */
  dtype: 'f32' | 'bf16' | 'f16' | 'fp8';
  /** cpu: weights stored as they are kept mapped from the checkpoint file (loadModel's `mapWeights`) */
  mapWeights?: boolean | 'auto';
  maxNumSeqs: number;
  maxNumBatchedTokens: number;
  maxQueue: number;
  maxModelLen?: number;
  kvCacheTokens: number;
  /** cpu workers: tokens of the warm-up prefill at load (load.ts's LoadServedOptions.warmupTokens) */
  warmup?: number;
  prefixCaching: boolean;
  /** MTP speculative decoding on the decode workers (the prefill workers then ship the MTP layer too) */
  mtp: number;
  apiKey?: string;
  /** router: the port workers register on */
  controlPort: number;
  /** workers: the router's control URL */
  router?: string;
  /** workers: the host peers reach this worker at (default: --host) */
  advertiseHost?: string;
  /** router: workers of each role to wait for before serving */
  minWorkers: number;
}

async function backendFor(name: 'cpu' | 'webgpu'): Promise<Backend> {
  if (name === 'cpu') return defaultBackend();
  const { createNodeWebGpuBackend } = await import('@dsv3/core/node');
  return createNodeWebGpuBackend();
}

export async function runRouter(o: RoleOptions): Promise<void> {
  const router = new RouterCore();
  const control = await router.control.listen({ port: o.controlPort, host: o.host });
  const server = createServer({ modelName: o.name, ...(o.apiKey && { apiKey: o.apiKey }) });
  const address = await server.app.listen({ port: o.port, host: o.host });
  const stop = (signal: string): void => {
    process.stderr.write(`${signal}: draining\n`);
    void server
      .drain()
      .then(() => router.close())
      .then(() => process.exit(0));
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
  const tokenizer = await loadTokenizer(o.dir);
  console.log(
    `dsv3-serve router: workers register at ${control}; waiting for ${o.minWorkers} prefill and ${o.minWorkers} decode workers`,
  );
  await router.waitForWorkers(o.minWorkers, o.minWorkers, 24 * 3600_000);
  server.ready({
    engine: new AsyncEngine(router, tokenizer, { maxQueue: o.maxQueue }),
    chatTemplate: chatTemplateFor(tokenizer, o.dir),
  });
  console.log(`dsv3-serve ready (router): model "${o.name}" on ${address}`);
}

export async function runWorker(role: 'prefill' | 'decode', o: RoleOptions): Promise<void> {
  if (!o.router) throw new Error(`--role ${role} needs --router <control url> (the router's --control-port)`);
  const backend = await backendFor(o.backend);
  const warmupTokens = servedWarmupTokens(o.dir, {
    backend: o.backend,
    ...(o.warmup !== undefined && { warmupTokens: o.warmup }),
  });
  const model = noGrad(() =>
    loadModel(o.dir, {
      backend,
      weights: o.dtype,
      warmupTokens,
      ...(o.mapWeights !== undefined && { mapWeights: o.mapWeights }),
    }),
  );
  const tokenizer = await loadTokenizer(o.dir);
  const maxModelLen = Math.min(o.maxModelLen ?? model.config.maxPositionEmbeddings, model.config.maxPositionEmbeddings);
  const blockSize = 16;
  const cache = model.newCache(Math.max(o.kvCacheTokens, maxModelLen + (o.mtp + 1) * blockSize), { blockSize });
  const executor = new ModelExecutor(model, cache);
  const eos = new Set<number>(model.config.eosTokenIds);
  if (tokenizer.eosTokenId !== null) eos.add(tokenizer.eosTokenId);
  const worker =
    role === 'prefill'
      ? new PrefillWorker(executor, {
          maxBatchedTokens: o.maxNumBatchedTokens,
          maxRunningSeqs: o.maxNumSeqs,
          prefixCaching: o.prefixCaching,
          maxModelLen,
          speculativeTokens: o.mtp,
        })
      : new DecodeWorker(executor, {
          maxBatchedTokens: o.maxNumBatchedTokens,
          maxRunningSeqs: o.maxNumSeqs,
          prefixCaching: o.prefixCaching,
          maxModelLen,
          eosTokenIds: [...eos],
          vocabLimit: tokenizer.vocabSize,
          speculativeTokens: o.mtp,
        });
  const bound = await worker.app.listen({ port: o.port, host: o.host });
  const url = o.advertiseHost ? `http://${o.advertiseHost}:${new URL(bound).port}` : bound;
  const reg = keepRegistered(o.router, role, url);
  const stop = (): void => {
    reg.stop();
    void worker.app.close().then(() => process.exit(0));
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
  await reg.registered;
  console.log(`dsv3-serve ${role} worker on ${url}, registered with ${o.router}`);
}
