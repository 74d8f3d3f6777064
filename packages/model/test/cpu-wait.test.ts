import { describe, expect, it } from 'vitest';
import { parseSchedstat, processThreadTimes, threadTimesSince } from '../src/cpu-wait.js';

describe('cpu-wait', () => {
  it('reads a schedstat line: ns on a CPU, ns waiting, timeslices', () => {
    expect(parseSchedstat('1500000000 250000 42\n')).toEqual({ runMs: 1500, waitMs: 0.25 });
  });

  it('refuses a line it cannot read', () => {
    expect(() => parseSchedstat('')).toThrow(/schedstat/);
    expect(() => parseSchedstat('12')).toThrow(/schedstat/);
  });

  it('differences two readings, null when either is missing', () => {
    expect(threadTimesSince({ runMs: 10, waitMs: 2 }, { runMs: 25, waitMs: 3 })).toEqual({ runMs: 15, waitMs: 1 });
    expect(threadTimesSince(null, { runMs: 1, waitMs: 1 })).toBeNull();
    expect(threadTimesSince({ runMs: 1, waitMs: 1 }, null)).toBeNull();
  });

  it.runIf(process.platform === 'linux')("counts this process's CPU time as it spins", () => {
    const before = processThreadTimes()!;
    const t = performance.now();
    let x = 0;
    while (performance.now() - t < 60) x += Math.sqrt(x + 1);
    const d = threadTimesSince(before, processThreadTimes())!;
    expect(x).toBeGreaterThan(0);
    // 60 ms of wall spent spinning: on a CPU or waiting for one, and nothing more than the wall allows per thread
    expect(d.runMs + d.waitMs).toBeGreaterThanOrEqual(50);
    expect(d.runMs).toBeGreaterThan(0);
    expect(d.waitMs).toBeGreaterThanOrEqual(0);
  });
});
