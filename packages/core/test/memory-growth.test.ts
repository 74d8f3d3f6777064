// A job started right after the engine's memory grew: the calling thread publishes the memory's size
// (worker-pool.ts's MEMORY_PAGES) at every job start and background post, so a worker whose view of the
// shared memory is still the old length refreshes it before its task reads the new pages.
import { describe, expect, it } from 'vitest';
import { GROW_STEP, PAGE } from '../src/cpu/gemm/arena.js';
import { getEngine } from '../src/cpu/gemm/runtime.js';
import { CTRL_BYTES, ERROR_TEXT, JOB_GATE_US, MEMORY_PAGES } from '../src/cpu/gemm/worker-pool.js';
import { setGemmThreads } from '../src/index.js';

describe('memory growth and the workers', () => {
  it('MEMORY_PAGES is a control word of its own', () => {
    expect(MEMORY_PAGES).toBeGreaterThan(JOB_GATE_US);
    expect(MEMORY_PAGES).toBeGreaterThan(ERROR_TEXT);
    expect(MEMORY_PAGES).toBeLessThan(CTRL_BYTES / 4);
  });

  it('a threaded job right after each growth publishes the new size, and its tasks write the new pages', () => {
    setGemmThreads(2);
    const engine = getEngine();
    if (!engine?.canThread()) return;
    const kept: number[] = [];
    for (let round = 0; round < 8; round++) {
      const before = engine.arena.buffer().byteLength;
      // a block past the memory's end (kept, so each round's lies past the last; over a grow step, which
      // the arena may have grown ahead by): the arena grows the memory (address space: untouched pages)
      const bytes = GROW_STEP + 3 * PAGE + 4096 * round;
      const at = engine.arena.alloc(bytes, 0, false);
      expect(at).not.toBeNull();
      kept.push(at!);
      const buf = engine.arena.buffer();
      expect(buf.byteLength).toBeGreaterThan(before);
      const ctl = new Int32Array(buf, 0, CTRL_BYTES / 4);
      // fillRows(o, count4, bits): 16 tasks of 256 floats each, all in the new pages
      const value = 1.5 + round;
      const bits = new Int32Array(Float32Array.of(value).buffer)[0]!;
      const list = Array.from({ length: 16 }, (_, t) => [(at as number) + t * 1024, 64, bits]);
      engine.runRowKernelList('fillRows', list, 2);
      // (the job's own set-up may grow it further, before it starts: its size at the start is the one published)
      expect(Atomics.load(ctl, MEMORY_PAGES)).toBe(engine.arena.buffer().byteLength / PAGE);
      const out = new Float32Array(buf, at as number, 16 * 256);
      expect(out.every((v) => v === value)).toBe(true);
    }
    for (const at of kept) engine.arena.release(at);
  });
});
