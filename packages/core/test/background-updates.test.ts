// AdamW's updates in the background (cpu/background-updates.ts): inside backgroundUpdates a 2-thread
// CPU step leaves each parameter pending, finished when something first touches it. Every result must
// equal the synchronous update bit for bit; reads must never see a stale weight; the gradient the update
// reads in place must not change under it. Most cases run "unpublished" (the workers never see the
// tasks), so every parameter is updated exactly when first touched: a read path without the hook reads
// the old weight every time, not only when the worker happens to lag.
import { afterEach, describe, expect, it } from 'vitest';
import * as T from '../src/index.js';
import { cpu, type CpuStorage } from '../src/cpu/backend.js';
import { backgroundUpdateStats, backgroundUpdateTesting } from '../src/cpu/background-updates.js';
import { gemmConfig } from '../src/cpu/gemm/config.js';
import { isResident, sgemmDeferred } from '../src/cpu/gemm/index.js';
import { cpuData } from '../src/kept-grads.js';
import { takeF32 } from '../src/cpu/pool.js';
import { anyDeferred, backgroundUpdates, deferringPass, finishDeferred, isDeferred } from '../src/deferred.js';
import { randomF32 } from './adamw-reference.js';

const DEFAULT_THREADS = gemmConfig.threads;
afterEach(() => {
  finishDeferred();
  backgroundUpdateTesting.unpublished = false;
  gemmConfig.backgroundUpdates = true;
  gemmConfig.threads = DEFAULT_THREADS;
});

const SIZES = [33, 4097, 1, 70_001, 32_768];
const storageOf = (t: T.Tensor) => (t.storage as CpuStorage).data;
const pending = (p: T.Parameter) => isDeferred(storageOf(p.value));
const firstDiff = (a: ArrayLike<number>, b: ArrayLike<number>) =>
  Array.from(a).findIndex((x, i) => !Object.is(x, b[i]));

/** A tensor whose storage lies in the GEMM engine's memory (as a training step's gradients do). */
function resident(values: Float32Array, shape: number[]): T.Tensor {
  const s = cpu.allocResident('f32', values.length, false);
  (s.data as Float32Array).set(values);
  return new T.Tensor(cpu, s, shape, 'f32');
}

function params(seed: number): T.Parameter[] {
  const rng = new T.Rng(seed);
  return SIZES.map((n) => new T.Parameter(T.tensor(randomF32(n, rng, 0.5), { shape: [n] })));
}

/** Step `step`'s gradients: resident ones, and one host gradient (a norm's, in a training step). */
function gradsOf(ps: T.Parameter[], step: number): void {
  const rng = new T.Rng(100 + step);
  ps.forEach((p, i) => {
    const g = randomF32(p.value.size, rng, 1);
    p.grad = i === 0 ? T.tensor(g, { shape: p.value.shape }) : resident(g, [...p.value.shape]);
  });
}

/** Runs `steps` AdamW steps of fresh parameters (background or not), `touch` after each step's update. */
function run(
  background: boolean,
  steps: number,
  stateDType: 'f32' | 'bf16',
  touch: (ps: T.Parameter[], o: T.AdamW, step: number) => void = () => {},
): { ps: T.Parameter[]; o: T.AdamW } {
  const ps = params(1);
  const o = new T.AdamW(ps, { lr: 1e-2, weightDecay: 0.1, stateDType });
  for (let step = 1; step <= steps; step++) {
    gradsOf(ps, step);
    const factor = T.tensor([Math.fround(0.37 + step / 10)], { shape: [], dtype: 'f32' });
    if (background) backgroundUpdates(() => o.stepUpdate(undefined, factor));
    else o.stepUpdate(undefined, factor);
    touch(ps, o, step);
  }
  return { ps, o };
}

/** Weights and moments of each parameter as bytes read now (reads finish pending updates). */
function state(ps: T.Parameter[], o: T.AdamW): Uint8Array[] {
  return ps.flatMap((p) => {
    const m = o.moments(p)!;
    return [p.value, m.m, m.v].map((t) => {
      const r = t.rawSync();
      return new Uint8Array(r.buffer, r.byteOffset, r.byteLength).slice();
    });
  });
}

describe('AdamW updates in the background', () => {
  for (const stateDType of ['f32', 'bf16'] as const)
    it(`leave every parameter pending and equal the synchronous update bitwise (${stateDType} moments, 3 steps)`, () => {
      T.setGemmThreads(2);
      backgroundUpdateTesting.unpublished = true;
      const want = run(false, 3, stateDType);
      const posted = backgroundUpdateStats.tasks;
      const got = run(true, 3, stateDType, (ps) => {
        expect(ps.every(pending)).toBe(true);
        expect(ps.every((p) => isResident(storageOf(p.value)))).toBe(true);
      });
      // 1 + 1 + 1 + 3 + 1 tasks of at most 32,768 elements a step
      expect(backgroundUpdateStats.tasks - posted).toBe(3 * 7);
      const [a, b] = [state(got.ps, got.o), state(want.ps, want.o)];
      a.forEach((x, i) => expect(firstDiff(x, b[i]!), `array ${i}`).toBe(-1));
      expect(anyDeferred()).toBe(false);
    });

  it('equals the synchronous update when the worker runs the tasks (published)', async () => {
    T.setGemmThreads(2);
    const want = state(...(Object.values(run(false, 3, 'f32')) as [T.Parameter[], T.AdamW]));
    const got = run(true, 3, 'f32', () => {});
    await new Promise((r) => setTimeout(r, 20)); // the worker is likely done; either way the reads finish them
    const b = state(got.ps, got.o);
    b.forEach((x, i) => expect(firstDiff(x, want[i]!), `array ${i}`).toBe(-1));
  });

  it('each read path finishes only the parameter it reads, before reading it', () => {
    T.setGemmThreads(2);
    backgroundUpdateTesting.unpublished = true;
    const want = run(false, 1, 'f32').ps.map((p) => p.value.dataSync().slice());
    const { ps } = run(true, 1, 'f32');
    const reads: [string, (p: T.Parameter) => ArrayLike<number>][] = [
      ['an op (exec)', (p) => T.noGrad(() => T.mul(p.value, 1)).dataSync()],
      ['dataSync', (p) => p.value.dataSync()],
      ['cpuData', (p) => cpuData(p.value)!],
      ['settledData', (p) => T.settledData(p.value.storage) as Float32Array],
      [
        'a Linear weight operand',
        (p) => {
          const l = new T.Linear(p.value.size, 1, { bias: false });
          l.weight.value = p.value; // the pending weight itself (its shape does not matter to the operand)
          return l.cpuWeightOperand()!.w as Float32Array;
        },
      ],
    ];
    reads.forEach(([name, read], i) => {
      const p = ps[i]!;
      expect(pending(p), name).toBe(true);
      expect(firstDiff(read(p), want[i]!), name).toBe(-1);
      expect(pending(p), name).toBe(false);
      ps.slice(i + 1).forEach((q) => expect(pending(q), `${name}: a later parameter`).toBe(true));
    });
  });

  it('the gradient read in place: overwriting, recycling or releasing it finishes the update first', () => {
    T.setGemmThreads(2);
    backgroundUpdateTesting.unpublished = true;
    const want = state(...(Object.values(run(false, 2, 'f32')) as [T.Parameter[], T.AdamW]));
    const got = run(true, 2, 'f32', (ps) => {
      const [, g1, g2, g3, g4] = ps.map((p) => p.grad!);
      // summed into in place (a gradient accumulated over micro-batches)
      T.exec('addInPlace', [g1!, T.full(g1!.shape, 3)], {});
      // released: its block goes back to the engine, which hands it out again
      g2!.dispose();
      const reuse = cpu.allocResident('f32', g2!.size, false);
      (reuse.data as Float32Array).fill(Number.NaN);
      // dropped (zero_grad): the free list then hands arrays of its size out
      ps[3]!.value.zeroGrad();
      ps[4]!.grad = null;
      takeF32(g3!.size).fill(Number.NaN);
      takeF32(g4!.size).fill(Number.NaN);
    });
    state(got.ps, got.o).forEach((x, i) => expect(firstDiff(x, want[i]!), `array ${i}`).toBe(-1));
  });

  it('a backward pass posting products finishes the updates first; a second step finishes the first', () => {
    T.setGemmThreads(2);
    backgroundUpdateTesting.unpublished = true;
    const want = state(...(Object.values(run(false, 3, 'f32')) as [T.Parameter[], T.AdamW]));
    const got = run(true, 3, 'f32', (ps, _o, step) => {
      if (step !== 2) return; // step 1's updates stay pending into step 2's stepUpdate
      const [m, n, k] = [96, 128, 1024];
      const rng = new T.Rng(9);
      const a = randomF32(m * k, rng, 1),
        b = randomF32(k * n, rng, 1),
        c = new Float32Array(m * n);
      deferringPass(() => {
        expect(sgemmDeferred({ m, n, k, a, b, c, transA: false, transB: false })).toBe(true);
        expect(ps.some(pending)).toBe(false);
      });
    });
    state(got.ps, got.o).forEach((x, i) => expect(firstDiff(x, want[i]!), `array ${i}`).toBe(-1));
  });

  it('runs at once outside the scope, on one thread, or when switched off', () => {
    for (const [threads, open, on] of [
      [2, false, true],
      [1, true, true],
      [2, true, false],
    ] as const) {
      T.setGemmThreads(threads);
      gemmConfig.backgroundUpdates = on;
      run(open, 1, 'f32', (ps) => expect(ps.some(pending)).toBe(false));
    }
  });
});
