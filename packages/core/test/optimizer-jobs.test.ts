// The optimizer step as jobs of the GEMM engine's threads: AdamW over many parameters (adamwMany) with
// clipping's factor folded into its read of g, and the gradients' sums of squares (sumSquaresMany),
// against the scalar loops they must equal bit for bit, on 1 and 2 threads, resident and host operands.
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import * as T from '../src/index.js';
import { cpu, CpuStorage } from '../src/cpu/backend.js';
import { gemmConfig } from '../src/cpu/gemm/config.js';
import { isResident } from '../src/cpu/gemm/index.js';
import { adamwManyKernel, sumOfSquares, sumSquaresManyKernel, toResidentKernel } from '../src/cpu/train-kernels.js';
import type { KernelTensor } from '../src/backend.js';
import { adamwReference, attrsAt, randomF32 } from './adamw-reference.js';

const DEFAULT_THREADS = gemmConfig.threads;
afterEach(() => {
  gemmConfig.threads = DEFAULT_THREADS;
});

const kt = (a: Float32Array | Uint16Array): KernelTensor => ({
  storage: new CpuStorage(a),
  shape: [a.length],
  dtype: a instanceof Uint16Array ? 'bf16' : 'f32',
});
const data = (t: KernelTensor) => (t.storage as CpuStorage).data as Float32Array | Uint16Array;
const firstDiff = (a: ArrayLike<number>, b: ArrayLike<number>) =>
  Array.from(a).findIndex((x, i) => !Object.is(x, b[i]));

// ragged sizes: one element, odd, around adamw's 32,768-element tasks and the 4,096-float chunk
const SIZES = [1, 2, 7, 128, 4097, 32_767, 32_769, 70_001];

describe('adamwMany: AdamW over many parameters as one job', () => {
  for (const bf16 of [false, true])
    for (const place of ['resident state, host gradients', 'all resident', 'all host'] as const)
      it(`equals the scalar update bitwise (${bf16 ? 'bf16' : 'f32'} moments, ${place}, 1 and 2 threads)`, () => {
        const results: (Float32Array | Uint16Array)[][] = [];
        for (const threads of [1, 2]) {
          T.setGemmThreads(threads);
          const rng = new T.Rng(7);
          const enc = (a: Float32Array) => (bf16 ? (T.encodeBf16(a) as Uint16Array) : a);
          const state = SIZES.map((n) => [
            randomF32(n, rng, 0.5),
            enc(randomF32(n, rng, 1e-3)),
            enc(randomF32(n, rng, 1e-3, true)),
          ]);
          const want = state.map((s) => s.map((a) => a.slice()));
          const move = (a: Float32Array | Uint16Array, resident: boolean) =>
            resident ? toResidentKernel(cpu, [kt(a)])[0]! : kt(a.slice());
          const live = state.map((s) => s.map((a) => move(a, place !== 'all host')));
          if (place !== 'all host') expect(live.every((s) => s.every((t) => isResident(data(t))))).toBe(true);
          for (let step = 1; step <= 3; step++) {
            const a = attrsAt(step, bf16);
            // clipping's factor (an f32 value) on two steps, none on the other
            const s = step === 2 ? 1 : Math.fround(0.37 + step / 10);
            const gs = SIZES.map((n) => {
              const g = randomF32(n, rng, 10 ** -step);
              g[0] = step === 3 ? -0 : 0;
              return g;
            });
            const inputs: KernelTensor[] = [kt(Float64Array.of(s) as never)];
            inputs[0]!.dtype = 'f64';
            live.forEach((l, i) =>
              inputs.push(l[0]!, place === 'all resident' ? move(gs[i]!, true) : kt(gs[i]!), l[1]!, l[2]!),
            );
            adamwManyKernel(cpu, inputs, a);
            want.forEach((x, i) => adamwReference(x[0] as Float32Array, gs[i]!, x[1]!, x[2]!, a, s));
            live.forEach((l, i) =>
              l.forEach((t, j) => {
                expect(firstDiff(data(t), want[i]![j]!), `size ${SIZES[i]}, operand ${j}, step ${step}`).toBe(-1);
              }),
            );
          }
          results.push(live.flatMap((l) => l.map((t) => data(t).slice())));
        }
        results[1]!.forEach((x, i) => expect(firstDiff(x, results[0]![i]!)).toBe(-1));
      });

  it('rounds every bf16 moment pattern as encodeBf16 does (NaN quieted, infinities kept)', () => {
    const n = 65_536;
    const bits = Uint16Array.from({ length: n }, (_, i) => i);
    const w = randomF32(n, new T.Rng(5), 0.5);
    const g = randomF32(n, new T.Rng(6), 1e-2);
    const a = attrsAt(2, true);
    const want = [w.slice(), bits.slice(), bits.slice()] as const;
    adamwReference(want[0], g, want[1], want[2], a, 1);
    const live = [w, bits, bits.slice()].map((x) => toResidentKernel(cpu, [kt(x)])[0]!);
    adamwManyKernel(cpu, [kt(Float32Array.of(1)), live[0]!, kt(g), live[1]!, live[2]!], a);
    live.forEach((t, j) => expect(firstDiff(data(t), want[j]!), `operand ${j}`).toBe(-1));
  });

  it('rejects operands of other dtypes or sizes with a clear error', () => {
    const f = (n: number) => kt(new Float32Array(n));
    const a = attrsAt(1, false);
    expect(() => adamwManyKernel(cpu, [kt(Float32Array.of(1)), f(4), f(3), f(4), f(4)], a)).toThrow(
      /operand of shape \[3\]/,
    );
    expect(() => adamwManyKernel(cpu, [kt(Float32Array.of(1)), f(4), f(4), f(4)], a)).toThrow(/\[w, g, m, v\] groups/);
    expect(() => adamwManyKernel(cpu, [kt(new Uint16Array(1)), f(4), f(4), f(4), f(4)], a)).toThrow(
      /one f32 or f64 value/,
    );
  });
});

describe('sumSquaresMany: the gradients sums of squares as one job', () => {
  it('equals sumOfSquares per array bitwise (resident, host, f64; 1 and 2 threads) and the exact sum within its bound', () => {
    const rng = new T.Rng(11);
    const arrays = [...SIZES, 100_003].map((n, i) => randomF32(n, rng, 10 ** ((i % 5) - 2)));
    const tensors: KernelTensor[] = arrays.map((x, i) => (i % 2 ? toResidentKernel(cpu, [kt(x)])[0]! : kt(x)));
    const f64 = Float64Array.from(arrays[3]!, (x) => x * 1.5);
    tensors.push({ storage: new CpuStorage(f64), shape: [f64.length], dtype: 'f64' });
    tensors.push(tensors[1]!); // the same array twice
    const outs = [1, 2].map((threads) => {
      T.setGemmThreads(threads);
      return (sumSquaresManyKernel(cpu, tensors)[0]!.storage as CpuStorage).data as Float64Array;
    });
    expect(firstDiff(outs[0]!, outs[1]!)).toBe(-1);
    // gemmConfig.forceJs: every sum on this thread, the same bits
    gemmConfig.forceJs = true;
    try {
      const js = (sumSquaresManyKernel(cpu, tensors)[0]!.storage as CpuStorage).data as Float64Array;
      expect(firstDiff(js, outs[0]!)).toBe(-1);
    } finally {
      gemmConfig.forceJs = false;
    }
    const want = [...arrays, f64, arrays[1]!].map((x) => sumOfSquares(x));
    expect(firstDiff(outs[0]!, want)).toBe(-1);
    // against the exact sum of the exact squares (f32² is exact in f64; BigInt sums of scaled values):
    // one f64 chain of n terms is within (n − 1)·2^−53 relative
    arrays.forEach((x, i) => {
      const exact = exactSumOfSquares(x);
      expect(Math.abs(outs[0]![i]! - exact) / exact).toBeLessThanOrEqual((x.length - 1) * 2 ** -53);
    });
  });
});

/** Σ x² exactly (each f32 square is a dyadic rational; summed as BigInt at a common scale), as f64. */
function exactSumOfSquares(x: Float32Array): number {
  const SCALE = 2n ** 320n;
  let s = 0n;
  for (const v of x) {
    const q = v * v; // exact in f64
    if (q === 0) continue;
    const e = Math.floor(Math.log2(q)) - 52;
    const mant = BigInt(q / 2 ** e);
    s += e >= 0 ? (mant << BigInt(e)) * SCALE : (mant * SCALE) >> BigInt(-e);
  }
  const top = s.toString(2).length;
  const shift = Math.max(0, top - 60);
  return (Number(s >> BigInt(shift)) * 2 ** shift) / 2 ** 320;
}

describe('AdamW on the CPU: state resident, clipping folded in', () => {
  const params = (seed: number) => {
    const rng = new T.Rng(seed);
    return [33, 4097, 1, 70_001].map((n) => new T.Parameter(T.tensor(randomF32(n, rng, 0.5), { shape: [n] })));
  };
  const gradsOf = (ps: T.Parameter[], step: number) => {
    const rng = new T.Rng(100 + step);
    for (const p of ps) p.grad = T.tensor(randomF32(p.value.size, rng, 1), { shape: p.value.shape });
  };

  it('stepUpdate(lr, factor) equals clipping the gradients then stepUpdate() bitwise, leaving the gradients as they were', () => {
    for (const stateDType of ['f32', 'bf16'] as const) {
      const [a, b] = [params(1), params(1)];
      const oa = new T.AdamW(a, { lr: 1e-2, weightDecay: 0.1, stateDType });
      const ob = new T.AdamW(b, { lr: 1e-2, weightDecay: 0.1, stateDType });
      for (let step = 1; step <= 3; step++) {
        gradsOf(a, step);
        gradsOf(b, step);
        const before = a.map((p) => p.grad!.dataSync().slice());
        const clip = T.clipFactorOnDevice(a, 5)!;
        expect(clip.factor.dataSync()[0]).toBeLessThan(1); // the norm of ~74K N(0, 1) values is past 5: clipping acts
        oa.stepUpdate(undefined, clip.factor);
        const norm = T.clipGradNormOnDevice(b, 5)!;
        ob.stepUpdate();
        expect(norm.dataSync()[0]).toBe(clip.norm.dataSync()[0]);
        a.forEach((p, i) => {
          expect(firstDiff(p.value.dataSync(), b[i]!.value.dataSync()), `${stateDType}, step ${step}`).toBe(-1);
          expect(firstDiff(p.grad!.dataSync(), before[i]!)).toBe(-1);
          expect(isResident((p.value.storage as CpuStorage).data)).toBe(true);
        });
        // moments read for a checkpoint are copies: writing them changes nothing the optimizer holds
        for (const p of a) {
          const got = oa.moments(p)!;
          expect(firstDiff(got.m.rawSync(), ob.moments(b[a.indexOf(p)]!)!.m.rawSync())).toBe(-1);
          (got.m.rawSync() as Float32Array).fill(7);
          ((got.v.storage as CpuStorage).data as Float32Array | Uint16Array).fill(7);
        }
      }
    }
  });

  it('falls back to host state when the engine has no room, with the same bits', () => {
    const headroom = gemmConfig.residentHeadroom;
    const run = (full: boolean) => {
      if (full) gemmConfig.residentHeadroom = Number.MAX_SAFE_INTEGER;
      try {
        const ps = params(2);
        const o = new T.AdamW(ps, { lr: 1e-2, stateDType: 'bf16' });
        for (let step = 1; step <= 2; step++) {
          gradsOf(ps, step);
          o.stepUpdate(undefined, T.tensor([0.37], { shape: [], dtype: 'f64' }));
        }
        expect(ps.map((p) => isResident((p.value.storage as CpuStorage).data))).toEqual(ps.map(() => !full));
        return ps.map((p) => p.value.dataSync());
      } finally {
        gemmConfig.residentHeadroom = headroom;
      }
    };
    const [resident, host] = [run(false), run(true)];
    resident.forEach((x, i) => expect(firstDiff(x, host[i]!)).toBe(-1));
  });

  it('resident parameters round-trip through a safetensors file', async () => {
    const ps = params(3);
    const o = new T.AdamW(ps, { lr: 1e-2 });
    gradsOf(ps, 1);
    o.stepUpdate();
    const named = Object.fromEntries(ps.map((p, i) => [`p${i}`, p.value]));
    expect(ps.every((p) => isResident((p.value.storage as CpuStorage).data))).toBe(true);
    const path = join(mkdtempSync(join(tmpdir(), 'dsv3-adamw-')), 'w.safetensors');
    await T.saveSafetensors(path, named);
    const back = T.loadSafetensors(path);
    ps.forEach((p, i) => expect(firstDiff(back[`p${i}`]!.dataSync(), p.value.dataSync())).toBe(-1));
  });
});
