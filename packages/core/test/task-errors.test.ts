// A task that throws on a worker thread never reaches the caller's stack: the job's error must carry
// the exception's text (worker-pool.ts's ERROR_TEXT / BG_ERROR_TEXT), not only "a task failed".
import { describe, expect, it } from 'vitest';
import { gemmConfig } from '../src/cpu/gemm/config.js';
import { setGemmThreads, weightProduct } from '../src/cpu/gemm/index.js';
import { getEngine } from '../src/cpu/gemm/runtime.js';
import {
  BG_ERROR,
  BG_ERROR_TEXT,
  BG_WORK,
  CTRL_BYTES,
  claimBackground,
  claimLoop,
  ERROR,
  ERROR_TEXT,
  ERROR_TEXT_CHARS,
  GATED_FROM,
  taskErrorText,
  WORK,
} from '../src/cpu/gemm/worker-pool.js';

/** A control block with `tasks` job tasks handed out, none gated. */
function control(tasks: number): Int32Array {
  const ctl = new Int32Array(CTRL_BYTES / 4);
  ctl[WORK] = tasks << 16;
  ctl[GATED_FROM] = tasks;
  return ctl;
}

describe('task errors', () => {
  it('the embedded claim loops write their text where taskErrorText reads it, inside the control block', () => {
    // claimLoop / claimBackground run inside the workers' source, so their offsets are literals.
    expect(claimLoop.toString()).toContain(`ctl[${ERROR_TEXT} + k]`);
    expect(claimBackground.toString()).toContain(`ctl[${BG_ERROR_TEXT} + k]`);
    expect(BG_ERROR_TEXT).toBeGreaterThanOrEqual(ERROR_TEXT + ERROR_TEXT_CHARS + 1);
    expect(BG_ERROR_TEXT + ERROR_TEXT_CHARS + 1).toBeLessThanOrEqual(CTRL_BYTES / 4);
  });

  it("a job keeps its first failure's text, cut to ERROR_TEXT_CHARS; the other tasks still run", () => {
    const ctl = control(4);
    const ran: number[] = [];
    claimLoop(ctl, (i) => {
      ran.push(i);
      if (i === 1) throw new Error(`first ${'x'.repeat(500)}`);
      if (i === 3) throw new RangeError('second');
    });
    expect(ran).toEqual([0, 1, 2, 3]);
    expect(ctl[ERROR]).toBe(1);
    const text = taskErrorText(ctl, ERROR_TEXT);
    expect(text.startsWith('Error: first xxx')).toBe(true);
    expect(text).toHaveLength(ERROR_TEXT_CHARS);
  });

  it("a background task's failure has its own text", () => {
    const ctl = control(0);
    ctl[BG_WORK] = 1 << 16;
    expect(claimBackground(ctl, () => {})).toBe(true);
    expect(ctl[BG_ERROR]).toBe(0);
    ctl[BG_WORK] = (2 << 16) | 1;
    expect(
      claimBackground(ctl, () => {
        throw 'not an Error object';
      }),
    ).toBe(true);
    expect(ctl[BG_ERROR]).toBe(1);
    expect(taskErrorText(ctl, BG_ERROR_TEXT)).toBe('not an Error object');
    expect(taskErrorText(ctl, ERROR_TEXT)).toBe('');
  });

  it('a threaded job whose tasks trap names the trap; the next job runs', () => {
    setGemmThreads(2);
    const engine = getEngine();
    if (!engine?.canThread()) return;
    // fillRows(o, count4, bits) at o = 4 GiB - 64: past the engine memory's end in every task.
    const outside = [-64, 4, 0];
    expect(() => engine.runRowKernelList('fillRows', [outside, outside, outside, outside], 2)).toThrow(
      /^row kernel fillRows: a task failed: RuntimeError: memory access out of bounds/,
    );
    const saved = gemmConfig.threadMinWork;
    gemmConfig.threadMinWork = 0;
    const [n, k] = [64, 256];
    const x = Float32Array.from({ length: k }, (_, i) => (i % 7) - 3);
    const w = Float32Array.from({ length: n * k }, (_, i) => (i % 5) - 2);
    const y = new Float32Array(n);
    weightProduct({ m: 1, n, k, x, w, y });
    gemmConfig.threadMinWork = saved;
    for (let j = 0; j < n; j++) {
      let s = 0;
      for (let i = 0; i < k; i++) s += (x[i] as number) * (w[j * k + i] as number);
      expect(y[j]).toBe(s); // small integers: exact in f32
    }
  });
});
