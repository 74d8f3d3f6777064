// V8's young generation held where it is, for inference processes (the model and server CLIs). V8
// doubles its two semi-spaces from 1 MiB up to 16 MiB each as objects survive its scavenges: 32 MiB of
// resident memory that an inference loop, whose JavaScript allocates small short-lived objects, gains
// nothing from (V3-mini bf16, dsv3-model bench: peak RSS 1.170x → 1.142x the weights held;
// docs/benchmarks-sessions.md, twenty-seventh session). Held at 4 MiB semi-spaces, the size the CLIs'
// module loading grows them to, not at core's 1 MiB: a decode step allocates ~0.85 MiB of them, and at
// 1 MiB a ~0.5 ms scavenge came every 1.2 steps (V3-mini FP8: 0.45 → 0.18 ms of scavenges a step, +8 MiB
// peak RSS; thirtieth session). The size cap (--max-semi-space-size) is read only when V8 starts, so it
// cannot come from the CLI itself; the growth factor is read at each growth, and 1 holds the semi-spaces
// where they are. V8 raises a factor under 2 back to 2 whenever it configures a new isolate's heap — a
// worker thread starting — so the engine's workers set it again as they start (worker-pool.ts).
import { setV8Flags } from './v8-flags.js';

/** The flag that holds the semi-spaces (a worker sets it again once its isolate is up). */
export const HOLD_YOUNG_GENERATION_FLAG = '--semi-space-growth-factor=1';

/** Held or not, process-wide (a global: the ESM and CJS builds of core may both be loaded). */
const HELD = Symbol.for('@dsv3/core: young generation held');
const flags = globalThis as { [HELD]?: boolean };

/**
 * Holds this process's young generation (and its GEMM worker threads', started later) at the size it
 * has now: an inference process's entry calls it once its program's modules are loaded, before it runs
 * (core's own loading leaves the semi-spaces at 1 MiB, the CLIs' at 4 MiB: 8 MiB in all, where a run
 * would grow them to 32). Returns whether it applied (false outside Node). Isolates started by other code
 * after it reset it.
 */
export function holdYoungGeneration(): boolean {
  if (!setV8Flags(HOLD_YOUNG_GENERATION_FLAG)) return false;
  flags[HELD] = true;
  return true;
}

/** Whether holdYoungGeneration() applied in this process (the worker pool passes it on). */
export function youngGenerationHeld(): boolean {
  return flags[HELD] === true;
}
