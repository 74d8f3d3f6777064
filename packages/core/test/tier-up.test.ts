// tierUpSooner in this test process (a file of its own: it changes a process-wide V8 flag). A small
// function of straight-line code is marked for V8's optimizing compiler after ~1,000 calls at Node 20's
// default interrupt budget and ~130 once tierUpSooner has lowered it; the control, at the default, runs
// first. V8's %GetOptimizationStatus (natives syntax, enabled here for the functions this file compiles)
// tells whether a function is optimized or on its way.
import { setFlagsFromString } from 'node:v8';
import { describe, expect, it } from 'vitest';
import { tierUpSooner } from '../src/cpu/tier-up.js';

setFlagsFromString('--allow-natives-syntax');
const status = new Function('f', 'return %GetOptimizationStatus(f)') as (f: unknown) => number;
/** Optimized, marked for optimization (now or concurrently), or being optimized. */
const TIERED_UP = (1 << 4) | (1 << 8) | (1 << 9) | (1 << 10);

let serial = 0;
/** Whether a fresh function (its own source: V8 caches compiled code by source) is tiered up after `calls` calls. */
function tieredUpAfter(calls: number): boolean {
  const f = new Function(
    'a',
    `const b = a + ${++serial}, c = a * 2, d = b * c, e = d - a, g = e / (b + 1); return (g + d) * (e - c) + (a & 7) + (b | 3);`,
  ) as (a: number) => number;
  for (let i = 1; i <= calls; i++) f(i);
  return (status(f) & TIERED_UP) !== 0;
}

describe('tierUpSooner', () => {
  it('at the default budget, 400 calls leave a small function unoptimized (the control)', () => {
    expect(tieredUpAfter(400)).toBe(false);
    expect(tieredUpAfter(4000)).toBe(true); // the probe itself sees V8 tier up
  });

  it('after it, 400 calls tier the function up', () => {
    expect(tierUpSooner()).toBe(true);
    expect(tieredUpAfter(400)).toBe(true);
  });
});
