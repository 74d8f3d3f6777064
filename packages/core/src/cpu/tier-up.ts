// V8's tier-up, made sooner for inference processes (the model and server CLIs). V8 hands a function to
// its optimizing compiler once the function has run through its "interrupt budget" of bytecode (66 KiB
// in Node 20's V8) three or more times with stable type feedback — 1,034 calls of a function of a
// hundred-odd bytes of bytecode (134 at an eighth of it; the test's probe). A decode step calls most of its functions once a layer or once a step,
// so at the default they were still compiling (on a V8 thread, against the two GEMM threads for two
// cores) 200 steps past the warm-up's 64, and some ran unoptimized until then: V3-mini FP8, the 64
// decode steps right after the warm-up had 36 compiles (~190 ms of compiler time), the next 64 had 23.
// At an eighth of the budget the warm-up compiles most of them (17, 12 and 4 compiles in three 64-step
// generations after it, against 36, 23 and 13; what is left is mostly what the next prompt's prefill
// deoptimized) and decode ran 71.6 / 71.5 → 78.2 / 77.7 tok/s in the two quiet rounds of an alternating
// A/B (docs/benchmarks-sessions.md, thirty-first session). V8 reads the budget each time it
// resets one, so setting it once the program is loaded applies to everything that runs after, the
// GEMM engine's worker threads included (V8's flags are process-wide).
import { setV8Flags } from './v8-flags.js';

/** The flag: an eighth of Node 20's V8 default (67,584). */
export const TIER_UP_SOONER_FLAG = '--interrupt-budget=8192';

/** Makes V8 optimize this process's hot functions after fewer calls; false outside Node. */
export function tierUpSooner(): boolean {
  return setV8Flags(TIER_UP_SOONER_FLAG);
}
