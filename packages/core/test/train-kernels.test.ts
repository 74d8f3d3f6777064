// The fused CPU training kernels and the primitive kernels' fast paths: against float64 references
// and the general kernels on random ragged shapes, with gradients checked by central differences.
import { describe, expect, it } from 'vitest';
import * as T from '../src/index.js';
import { expectSameBits } from '../src/testing.js';
import type { KernelTensor } from '../src/backend.js';
import { binaryKernel, unaryKernel } from '../src/cpu/elementwise.js';
import { padKernel, stridedKernel } from '../src/cpu/indexing.js';
import { gradcheck, rand64, relErr } from './helpers.js';

const f32 = (t: T.Tensor): T.Tensor => T.noGrad(() => T.cast(t, 'f32'));
const vals = (t: T.Tensor | KernelTensor): number[] =>
  Array.from(t instanceof T.Tensor ? t.dataSync() : T.exec1('cast', [t as T.Tensor], { dtype: 'f64' }).dataSync());
const kernelOut = (k: KernelTensor[]): T.Tensor => new T.Tensor(T.cpu, k[0]!.storage, k[0]!.shape, k[0]!.dtype);

describe('fast paths of the primitive kernels equal the general kernels', () => {
  const shapes: [number[], number[]][] = [
    [
      [3, 7],
      [3, 7],
    ], // equal
    [[5, 3, 7], []], // scalar
    [[1], [4, 5]], // scalar on the left
    [[2, 5, 7], [7]], // trailing
    [
      [2, 5, 7],
      [1, 5, 7],
    ], // trailing with a leading 1
    [
      [5, 7],
      [2, 5, 7],
    ], // trailing on the left
    [
      [3, 5, 7],
      [3, 5, 1],
    ], // per row
    [
      [3, 1],
      [3, 6],
    ], // per row on the left
    [
      [4, 1, 6],
      [1, 3, 1],
    ], // general broadcast (falls through)
  ];
  for (const dtype of ['f64', 'f32'] as const)
    it(`binary add/sub/mul/div, ${dtype}`, () => {
      shapes.forEach(([sa, sb], i) => {
        const a = T.cast(rand64(sa, 10 + i), dtype);
        const b = T.cast(rand64(sb, 30 + i, 0.5, 2), dtype);
        for (const op of ['add', 'sub', 'mul', 'div'] as const) {
          const fast = T.exec1('binary', [a, b], { op });
          const general = kernelOut(binaryKernel(T.cpu, [a, b], { op }));
          expect(fast.shape, `${op} ${sa} ${sb}`).toEqual(general.shape);
          expect(vals(fast), `${op} ${sa} ${sb}`).toEqual(vals(general));
        }
      });
    });

  it('unary ops, pad and strided copies', () => {
    for (const dtype of ['f64', 'f32'] as const) {
      const x = T.cast(rand64([3, 5, 9], 3, 0.2, 3), dtype);
      for (const op of ['sqrt', 'rsqrt', 'exp', 'neg', 'square', 'sigmoid', 'silu'] as const)
        expect(vals(T.exec1('unary', [x], { op })), op).toEqual(vals(kernelOut(unaryKernel(T.cpu, [x], { op }))));
      const pad = { before: [1, 0, 2], after: [0, 3, 1], value: -1.5 };
      expect(vals(T.exec1('pad', [x], pad))).toEqual(vals(kernelOut(padKernel(T.cpu, [x], pad))));
      for (const strided of [
        { shape: [5, 3, 9], strides: [9, 45, 1], offset: 0 },
        { shape: [2, 4, 3], strides: [45, 1, 9], offset: 10 },
        { shape: [3, 2, 70], strides: [0, 1, 0], offset: 4 },
      ])
        expect(vals(T.exec1('strided', [x], strided))).toEqual(vals(kernelOut(stridedKernel(T.cpu, [x], strided))));
    }
    expect(vals(T.full([2, 3], 7, { dtype: 'i32' }))).toEqual([7, 7, 7, 7, 7, 7]);
    expect(vals(T.iota([2, 3], 1))).toEqual([0, 1, 2, 0, 1, 2]);
  });
});

describe('fused training kernels', () => {
  it('rmsNorm, softmax, logSoftmax and silu: gradients vs finite differences (f64, ragged shapes)', () => {
    for (const [i, shape] of [
      [2, 3, 7],
      [5, 13],
      [1, 1, 4],
    ].entries()) {
      const d = shape[shape.length - 1]!;
      gradcheck('rmsNorm', (x, w) => T.rmsNorm(x, w, 1e-5), [rand64(shape, i), rand64([d], 50 + i, 0.5, 1.5)]);
      gradcheck('softmax', (x) => T.softmax(x, -1), [rand64(shape, 10 + i, -2, 2)]);
      gradcheck('logSoftmax', (x) => T.logSoftmax(x, -1), [rand64(shape, 20 + i, -2, 2)]);
      gradcheck('silu', T.silu, [rand64(shape, 30 + i, -3, 3)]);
    }
  });

  it('f32 results and gradients equal float64 within f32 rounding', () => {
    const x = rand64([6, 11], 7, -2, 2);
    const w = rand64([11], 8, 0.5, 1.5);
    const g = rand64([6, 11], 9);
    for (const f of [
      (a: T.Tensor, b: T.Tensor) => T.rmsNorm(a, b, 1e-6),
      (a: T.Tensor) => T.softmax(a, -1),
      (a: T.Tensor) => T.logSoftmax(a, -1),
      (a: T.Tensor) => T.silu(a),
      (a: T.Tensor) => T.causalSoftmax(a, 0.7),
    ]) {
      const run = (conv: (t: T.Tensor) => T.Tensor) => {
        const xs = [conv(x).detach().requireGrad(), conv(w).detach().requireGrad()];
        const y = f(xs[0]!, xs[1]!);
        T.sum(T.mul(y, conv(g))).backward();
        return [vals(y), vals(xs[0]!.grad!), xs[1]!.grad ? vals(xs[1]!.grad) : []];
      };
      const [y64, dx64, dw64] = run((t) => t);
      const [y32, dx32, dw32] = run(f32);
      expect(relErr(y32!, y64!)).toBeLessThan(1e-6);
      expect(relErr(dx32!, dx64!)).toBeLessThan(1e-6);
      if (dw64!.length) expect(relErr(dw32!, dw64!)).toBeLessThan(1e-6);
    }
  });

  it('causalSoftmax equals the masked softmax in float64 (square and offset) and differentiates', () => {
    for (const [q, k] of [
      [5, 5],
      [3, 7],
      [1, 4],
    ] as const) {
      const s = rand64([2, 3, q, k], q * 10 + k, -3, 3);
      const scale = 0.37;
      const got = vals(T.causalSoftmax(s, scale));
      const sv = s.dataSync();
      const want: number[] = [];
      for (let r = 0; r < 6 * q; r++) {
        const i = r % q;
        const row = Array.from({ length: k }, (_, j) => (j <= i + k - q ? Math.exp(sv[r * k + j]! * scale) : 0));
        const z = row.reduce((a, b) => a + b, 0);
        want.push(...row.map((e) => e / z));
      }
      expect(relErr(got, want)).toBeLessThan(1e-14);
      gradcheck('causalSoftmax', (x) => T.causalSoftmax(x, scale), [s]);
    }
  });

  function adamReference(
    w0: number[],
    grads: number[][],
    o: { lr: number; b1: number; b2: number; wd: number },
    bf16: boolean,
  ) {
    const round = (x: number) => (bf16 ? T.bf16BitsToF32(T.f32ToBf16Bits(x)) : Math.fround(x));
    const w = [...w0];
    const m = w.map(() => 0);
    const v = w.map(() => 0);
    grads.forEach((g, t) => {
      for (let i = 0; i < w.length; i++) {
        const mi = o.b1 * m[i]! + (1 - o.b1) * g[i]!;
        const vi = o.b2 * v[i]! + (1 - o.b2) * g[i]! ** 2;
        const upd = mi / (1 - o.b1 ** (t + 1)) / (Math.sqrt(vi / (1 - o.b2 ** (t + 1))) + 1e-8);
        w[i] = Math.fround(w[i]! * (1 - o.lr * o.wd) - o.lr * upd);
        m[i] = round(Math.fround(mi));
        v[i] = round(Math.fround(vi));
      }
    });
    return { w, m, v };
  }

  for (const stateDType of ['f32', 'bf16'] as const)
    it(`AdamW (one fused pass) with ${stateDType} moments equals the update computed in float64`, () => {
      const o = { lr: 0.05, b1: 0.9, b2: 0.95, wd: 0.1 };
      const n = 2 * 4096 + 37; // the in-place kernel's bf16 chunks, the last one ragged
      // the values the f32 parameter and gradients hold
      const w0 = Array.from(rand64([n], 1).dataSync(), Math.fround);
      const grads = [2, 3, 4].map((s) => Array.from(rand64([n], s).dataSync(), Math.fround));
      const p = new T.Parameter(T.tensor(w0));
      const opt = new T.AdamW([p], { lr: o.lr, betas: [o.b1, o.b2], weightDecay: o.wd, stateDType });
      for (const g of grads) {
        p.grad = T.tensor(g);
        opt.stepUpdate();
      }
      const want = adamReference(w0, grads, o, stateDType === 'bf16');
      expect(relErr(vals(p.value), want.w)).toBeLessThan(1e-6);
      const st = opt.moments(p)!;
      expect(st.m.dtype).toBe(stateDType);
      expect(relErr(vals(st.m), want.m)).toBeLessThan(stateDType === 'bf16' ? 8e-3 : 1e-6);
      expect(relErr(vals(st.v), want.v)).toBeLessThan(stateDType === 'bf16' ? 8e-3 : 1e-6);
    });

  for (const [stateDType, dtype] of [
    ['f32', 'f32'],
    ['bf16', 'f32'],
    ['bf16', 'f64'],
  ] as const)
    it(`AdamW updates in place from its second step, bitwise as into fresh buffers (${stateDType} moments, ${dtype} weights)`, () => {
      const n = 2 * 4096 + 37; // past the kernel's bf16 chunk, ragged
      const w0 = rand64([n], 1).dataSync();
      const caller = T.tensor(w0, { dtype });
      const inPlace = new T.Parameter(caller);
      const fresh = new T.Parameter(T.tensor(w0, { dtype }));
      const opts = { lr: 0.05, betas: [0.9, 0.95] as [number, number], weightDecay: 0.1, stateDType };
      const [a, b] = [new T.AdamW([inPlace], opts), new T.AdamW([fresh], opts)];
      const storages: object[] = [];
      const handedOut: { m: number[]; v: number[] }[] = [];
      for (let s = 0; s < 4; s++) {
        const g = rand64([n], 10 + s).dataSync();
        inPlace.grad = T.tensor(g, { dtype });
        fresh.grad = T.tensor(g, { dtype });
        a.stepUpdate();
        b.stepUpdate();
        storages.push(inPlace.value.storage);
        // reading b's moments hands them over, so b's every update writes new buffers
        const mb = b.moments(fresh)!;
        handedOut.push({ m: vals(mb.m), v: vals(mb.v) });
        expectSameBits(inPlace.value.rawSync(), fresh.value.rawSync(), `w after step ${s + 1}`);
      }
      // the first update leaves the caller's tensor alone; later ones reuse the optimizer's own storage
      expectSameBits(
        caller.dataSync(),
        Array.from(w0, (x) => (dtype === 'f32' ? Math.fround(x) : x)),
        'caller',
      );
      expect(storages[0]).not.toBe(caller.storage);
      expect(storages.slice(1).every((st) => st === storages[0])).toBe(true);
      const ma = a.moments(inPlace)!;
      expectSameBits(ma.m.rawSync(), b.moments(fresh)!.m.rawSync(), 'm');
      expectSameBits(ma.v.rawSync(), b.moments(fresh)!.v.rawSync(), 'v');
      // moments once handed out stay as they were while the optimizer goes on
      const held = { m: vals(ma.m), v: vals(ma.v) };
      inPlace.grad = T.tensor(rand64([n], 99).dataSync(), { dtype });
      a.stepUpdate();
      expect(vals(ma.m)).toEqual(held.m);
      expect(vals(ma.v)).toEqual(held.v);
      expect(held).toEqual(handedOut[3]);
    });

  it('clipGradNorm sums squares in one pass per gradient', async () => {
    const a = new T.Parameter(T.tensor(rand64([3, 5], 1).dataSync() as Float64Array, { shape: [3, 5], dtype: 'f32' }));
    const g = rand64([3, 5], 2).dataSync();
    a.grad = T.tensor(g, { shape: [3, 5], dtype: 'f32' });
    const want = Math.sqrt(Array.from(g).reduce((s, x) => s + Math.fround(x) ** 2, 0));
    expect(Math.abs((await T.clipGradNorm([a], 1e9)) - want) / want).toBeLessThan(1e-12);
  });

  it('rotaryEmbedding equals the pairwise rotation in float64 (both layouts, shared or per-batch angles) and differentiates', () => {
    for (const [interleave, bc] of [
      [true, 1],
      [false, 2],
      [true, 2],
    ] as const) {
      const [B, S, H, d] = [2, 3, 5, 6];
      const x = rand64([B, S, H, d], 1);
      const cos = rand64([bc, S, d / 2], 2);
      const sin = rand64([bc, S, d / 2], 3);
      const [xv, cv, sv] = [x, cos, sin].map((t) => t.dataSync());
      const want = new Float64Array(xv!.length);
      for (let b = 0; b < B; b++)
        for (let s = 0; s < S; s++)
          for (let h = 0; h < H; h++)
            for (let i = 0; i < d / 2; i++) {
              const r = ((b * S + s) * H + h) * d;
              const [ia, ib] = interleave ? [r + 2 * i, r + 2 * i + 1] : [r + i, r + i + d / 2];
              const t = ((bc === 1 ? 0 : b) * S + s) * (d / 2) + i;
              want[ia] = xv![ia]! * cv![t]! - xv![ib]! * sv![t]!;
              want[ib] = xv![ib]! * cv![t]! + xv![ia]! * sv![t]!;
            }
      expect(relErr(vals(T.rotaryEmbedding(x, cos, sin, interleave)), want)).toBeLessThan(1e-15);
      gradcheck('rotaryEmbedding', (t) => T.rotaryEmbedding(t, cos, sin, interleave), [x]);
    }
    expect(() => T.rotaryEmbedding(rand64([2, 3, 4], 1), rand64([1, 3, 2], 2), rand64([1, 3, 2], 3), true)).toThrow(
      /rotaryEmbedding: x must be/,
    );
  });

  it('causalAttention equals softmax(scale·q·kᵀ + mask)·v in float64, differentiates, and f32 (GEMM) agrees', () => {
    for (const [B, S, H, dq, dv] of [
      [2, 5, 3, 7, 4],
      [1, 9, 2, 3, 5],
      [1, 16, 2, 8, 8], // whole GEMM tiles: products written in place in the engine's memory
    ] as const) {
      const q = rand64([B, S, H, dq], 1, -2, 2);
      const k = rand64([B, S, H, dq], 2, -2, 2);
      const v = rand64([B, S, H, dv], 3);
      const scale = 0.45;
      const [qv, kv, vv] = [q, k, v].map((t) => t.dataSync());
      const want = new Float64Array(B * S * H * dv);
      for (let b = 0; b < B; b++)
        for (let h = 0; h < H; h++)
          for (let i = 0; i < S; i++) {
            const e = Array.from({ length: i + 1 }, (_, j) => {
              let s = 0;
              for (let c = 0; c < dq; c++)
                s += qv![((b * S + i) * H + h) * dq + c]! * kv![((b * S + j) * H + h) * dq + c]!;
              return Math.exp(s * scale);
            });
            const z = e.reduce((x, y) => x + y, 0);
            for (let c = 0; c < dv; c++)
              want[((b * S + i) * H + h) * dv + c] = e.reduce(
                (acc, w, j) => acc + (w / z) * vv![((b * S + j) * H + h) * dv + c]!,
                0,
              );
          }
      expect(relErr(vals(T.causalAttention(q, k, v, scale)), want)).toBeLessThan(1e-13);
      gradcheck('causalAttention', (a, b, c) => T.causalAttention(a, b, c, scale), [q, k, v]);
      // f32 through the GEMM: outputs and all three gradients within f32 rounding of float64.
      const g = rand64([B, S, H, dv], 4);
      const run = (conv: (t: T.Tensor) => T.Tensor) => {
        const xs = [q, k, v].map((t) => conv(t).detach().requireGrad());
        const o = T.causalAttention(xs[0]!, xs[1]!, xs[2]!, scale);
        T.sum(T.mul(o, conv(g))).backward();
        return [o, ...xs.map((x) => x.grad!)].map(vals);
      };
      const r64 = run((t) => t);
      const r32 = run(f32);
      r64.forEach((x, i) => expect(relErr(r32[i]!, x), `output ${i}`).toBeLessThan(2e-6));
    }
    expect(() =>
      T.causalAttention(rand64([1, 2, 3, 4], 1), rand64([1, 3, 3, 4], 2), rand64([1, 2, 3, 4], 3), 1),
    ).toThrow(/causalAttention: q and k must be/);
  });

  it('crossEntropy (one fused pass each way) equals −log softmax in float64, with ignored targets, and differentiates', () => {
    const logits = rand64([2, 3, 7], 5, -3, 3);
    const targets = T.tensor(Int32Array.from([1, -100, 6, 0, 3, -100]), { shape: [2, 3], dtype: 'i32' });
    const lv = logits.dataSync();
    const tv = targets.dataSync();
    const want = Array.from(tv, (t, n) => {
      if (t === -100) return 0;
      const row = Array.from({ length: 7 }, (_, j) => lv[n * 7 + j]!);
      return Math.log(row.reduce((s, x) => s + Math.exp(x), 0)) - row[t]!;
    });
    expect(relErr(vals(T.crossEntropy(logits, targets, { reduction: 'none' })), want)).toBeLessThan(1e-14);
    const mean = want.reduce((a, b) => a + b, 0) / 4;
    expect(Math.abs(vals(T.crossEntropy(logits, targets))[0]! - mean) / mean).toBeLessThan(1e-14);
    for (const reduction of ['mean', 'sum', 'none'] as const)
      gradcheck(`crossEntropy ${reduction}`, (x) => T.crossEntropy(x, targets, { reduction }), [logits]);
    // f32 within f32 rounding of float64, value and gradient.
    const run = (x: T.Tensor) => {
      const leaf = x.detach().requireGrad();
      const l = T.crossEntropy(leaf, targets);
      l.backward();
      return [vals(l), vals(leaf.grad!)];
    };
    const [l64, g64] = run(logits);
    const [l32, g32] = run(f32(logits));
    expect(relErr(l32!, l64!)).toBeLessThan(1e-6);
    expect(relErr(g32!, g64!)).toBeLessThan(1e-6);
  });
});
