// Recycling scopes hand a step's recorded activations back to the free list when the step ends;
// nothing the caller can still reach (the result, the kept roots, tensors made under noGrad) is reused.
import { afterEach, describe, expect, it } from 'vitest';
import * as T from '../src/index.js';
import { expectSameBits } from '../src/testing.js';
import { takeF32 } from '../src/cpu/pool.js';
import type { StorageArray } from '../src/dtype.js';
import { rand64 } from './helpers.js';

const SHAPE = [64, 128]; // 8,192 elements: above the free list's lower bound

function leaf(seed: number): T.Tensor {
  return T.cast(rand64(SHAPE, seed), 'f32').detach().requireGrad();
}

/** The array behind t (the free list hands out whole arrays: host buffers or blocks of the engine's memory). */
function arrayOf(t: T.Tensor): StorageArray {
  return (t.storage as T.CpuStorage).data;
}

/** One small training-like step: two recorded activations, a backward. */
function step(x: T.Tensor): { y: T.Tensor; z: T.Tensor } {
  const y = x.mul(2);
  const z = y.exp();
  z.sum().backward();
  return { y, z };
}

afterEach(() => {
  T.setPoisonRecycled(false);
});

describe('recyclingScope', () => {
  it('hands a step’s activations to the next step (their buffers are reused, the tensors disposed)', () => {
    const x = leaf(1);
    let first: { y: T.Tensor; z: T.Tensor } | undefined;
    const firstBuffers = new Set<StorageArray>();
    const before = T.recyclingScopeTotals();
    T.recyclingScope(() => {
      first = step(x);
      firstBuffers.add(arrayOf(first.y)).add(arrayOf(first.z));
    });
    const after = T.recyclingScopeTotals();
    expect(after.buffers - before.buffers).toBe(2);
    expect(after.bytes - before.bytes).toBe(2 * 8192 * 4);
    expect(first!.y.disposed && first!.z.disposed).toBe(true);
    T.recyclingScope(() => {
      const second = step(x);
      expect(firstBuffers.has(arrayOf(second.y))).toBe(true);
      expect(firstBuffers.has(arrayOf(second.z))).toBe(true);
      expect(arrayOf(second.y)).not.toBe(arrayOf(second.z));
    });
  });

  it('keeps what the scope returns, what the kept roots reach and noGrad results, bit for bit, through later steps', () => {
    const x = leaf(2);
    const holder: { cached: T.Tensor | null; nested: Map<string, T.Tensor[]> } = { cached: null, nested: new Map() };
    const { out, view } = T.recyclingScope(
      () => {
        const r = step(x);
        holder.cached = r.y.add(1); // a recorded activation the kept root holds
        holder.nested.set('a', [r.y.sub(3)]);
        const fromCache = T.noGrad(() => x.mul(5)); // not recorded: never the scope's
        holder.nested.set('b', [fromCache]);
        return { out: r.z, view: r.y.reshape([128, 64]) };
      },
      { keep: [holder] },
    );
    const snapshot = (t: T.Tensor) => Float32Array.from(t.dataSync() as Float32Array);
    const kept = [out, view, holder.cached!, holder.nested.get('a')![0]!, holder.nested.get('b')![0]!];
    const values = kept.map(snapshot);
    for (let i = 0; i < 3; i++) {
      T.recyclingScope(() => {
        step(leaf(10 + i));
        for (let j = 0; j < 4; j++) takeF32(8192).fill(-1); // whatever the free list holds gets overwritten
      });
    }
    kept.forEach((t, i) => {
      expect(t.disposed, `kept tensor ${i}`).toBe(false);
      expectSameBits(snapshot(t), values[i]!, `kept tensor ${i}`);
    });
    expect(x.grad!.disposed).toBe(false); // made by the backward, not recorded: never the scope's
  });

  it('poison mode: a raw array kept past the scope reads NaN, a tensor kept past it throws', () => {
    T.setPoisonRecycled(true);
    const x = leaf(3);
    let escaped: T.Tensor | undefined;
    let raw: Float32Array | undefined;
    T.recyclingScope(() => {
      const { y } = step(x);
      escaped = y; // a deliberate escape: neither returned nor reachable from a kept root
      raw = (y.storage as T.CpuStorage).data as Float32Array;
      expect(raw.some(Number.isNaN)).toBe(false);
    });
    expect(raw!.every(Number.isNaN)).toBe(true);
    expect(() => escaped!.dataSync()).toThrow(/disposed/);
  });

  it('recycles nothing when the step throws, and nothing made before the scope', () => {
    const x = leaf(4);
    const before = x.mul(3); // recorded outside any scope
    let inside: T.Tensor | undefined;
    expect(() =>
      T.recyclingScope(() => {
        inside = step(x).z;
        throw new Error('step failed');
      }),
    ).toThrow('step failed');
    expect(inside!.disposed).toBe(false);
    T.recyclingScope(() => step(x));
    expect(before.disposed).toBe(false);
    expect(inside!.disposed).toBe(false);
  });

  it('nests: what an inner scope keeps the outer one recycles', () => {
    const x = leaf(5);
    let inner: T.Tensor | undefined;
    T.recyclingScope(() => {
      inner = T.recyclingScope(() => step(x).z);
      expect(inner.disposed).toBe(false);
    });
    expect(inner!.disposed).toBe(true);
  });

  it('names async scopes closed out of order, and recycles nothing of them', async () => {
    const x = leaf(6);
    const gates = [0, 1].map(() => {
      let open: () => void = () => {};
      const p = new Promise<void>((r) => {
        open = r;
      });
      return { p, open };
    });
    const made: T.Tensor[] = [];
    const scoped = (i: number) =>
      T.recyclingScopeAsync(async () => {
        made.push(x.mul(i + 2));
        await gates[i]!.p;
        return null;
      });
    const first = scoped(0);
    const second = scoped(1);
    gates[0]!.open();
    await expect(first).rejects.toThrow(/closed out of order/);
    gates[1]!.open();
    await expect(second).rejects.toThrow(/closed out of order/);
    expect(made.some((t) => t.disposed)).toBe(false);
  });
});
