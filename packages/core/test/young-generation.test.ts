// holdYoungGeneration in this test process (a file of its own: it changes a process-wide V8 flag).
// V8 grows its semi-spaces as objects survive scavenges; held, they stay — also after the engine starts
// its worker threads, though V8 resets the flag as it configures each new isolate (the engine's workers
// set it again as they start). The control — growth before holding — runs first.
import { getHeapSpaceStatistics } from 'node:v8';
import { describe, expect, it } from 'vitest';
import { holdYoungGeneration, youngGenerationHeld } from '../src/cpu/young-generation.js';
import { setGemmThreads, sgemm } from '../src/cpu/gemm/index.js';
import { gemmConfig } from '../src/cpu/gemm/config.js';

const newSpace = (): number => getHeapSpaceStatistics().find((s) => s.space_name === 'new_space')!.space_size;
/** Allocations of which ~1 MB survives each scavenge: what makes V8 grow the young generation. */
const churn = (): void => {
  const keep: object[] = [];
  for (let i = 0; i < 1_500_000; i++) {
    keep.push({ a: i, b: [i] });
    if (keep.length > 20_000) keep.splice(0, 10_000);
  }
};

describe('holdYoungGeneration', () => {
  it('the young generation grows under surviving allocations (the control, before holding)', () => {
    expect(youngGenerationHeld()).toBe(false);
    const start = newSpace();
    churn();
    churn();
    expect(newSpace()).toBeGreaterThan(start);
  });

  it('held: stays at its size, also once the engine has started its worker threads', async () => {
    expect(holdYoungGeneration()).toBe(true);
    expect(youngGenerationHeld()).toBe(true);
    const held = newSpace();
    churn();
    expect(newSpace()).toBe(held);
    // a threaded product: the engine spawns its worker (a new isolate) now
    const saved = { ...gemmConfig };
    try {
      setGemmThreads(2);
      gemmConfig.threadMinWork = 1;
      const n = 256;
      const a = new Float32Array(n * n).fill(1),
        c = new Float32Array(n * n);
      sgemm({ m: n, n, k: n, a, b: a, c });
      expect(c[0]).toBe(n);
    } finally {
      Object.assign(gemmConfig, saved);
    }
    await new Promise((r) => setTimeout(r, 1000)); // the worker's isolate starts and runs its first lines
    churn();
    churn();
    expect(newSpace()).toBe(held);
  });
});
