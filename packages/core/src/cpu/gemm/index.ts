// CPU f32 GEMM for @dsv3/core: WebAssembly SIMD128 kernel generated at run time, spread over Node
// worker threads when available; pure-JS blocked kernel where SIMD128 is missing.
import { normalizeGemm, type GemmArgs } from './args.js';
import { gemmConfig } from './config.js';
import { sgemmJs } from './js-kernel.js';
import { effectiveThreads, getEngine } from './runtime.js';

export type { GemmArgs } from './args.js';

/** C = op(A) @ op(B) (optionally batched), synchronously. */
export function sgemm(args: GemmArgs): void {
  const g = normalizeGemm(args);
  const e = gemmConfig.forceJs ? null : getEngine();
  if (e) e.run(g, effectiveThreads(e));
  else sgemmJs(g);
}

/** Threads for large GEMMs (the calling thread counts as one). Default: available parallelism in Node, 1 elsewhere. */
export function setGemmThreads(n: number): void {
  if (!Number.isInteger(n) || n < 1) throw new RangeError(`setGemmThreads: expected an integer >= 1, got ${n}`);
  gemmConfig.threads = Math.min(n, 64);
}

export function gemmInfo(): { simd: boolean; threads: number } {
  const e = gemmConfig.forceJs ? null : getEngine();
  return { simd: e !== null, threads: effectiveThreads(e) };
}
