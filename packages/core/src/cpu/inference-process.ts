// An inference process's runtime, settled by its entry before the program's modules load (the model
// and server CLIs): V8's young generation held at the size it has then (young-generation.ts: core's
// own loading leaves 2 MiB, the whole program's would leave 8) and the C heap capped at one malloc
// arena (c-heap.cc: threads' own arenas each kept the pages they freed). V3-mini's peak RSS: see
// docs/benchmarks-sessions.md, twenty-eighth session.
import { capNativeArenas } from './gemm/native-kernels.js';
import { holdYoungGeneration } from './young-generation.js';

/** Malloc arenas an inference process keeps (its hot loops allocate no C memory: contention is moot). */
export const INFERENCE_ARENAS = 1;

/**
 * Settles this process for inference — young generation held, C heap capped — and says what applied.
 * Call it first, before importing the program (its module evaluation is what grows the young generation).
 */
export function prepareInferenceProcess(): { youngGenerationHeld: boolean; arenasCapped: boolean } {
  return { youngGenerationHeld: holdYoungGeneration(), arenasCapped: capNativeArenas(INFERENCE_ARENAS) };
}
