// Every primitive kernel on WebGPU against the CPU backend, on random (never all-zero) inputs with
// ragged shapes, broadcasting, every unary/binary op and every dtype path.
import { afterAll, describe, expect, it } from 'vitest';
import { cpu, fromRaw, UNARY_OPS, ARITH_OPS, COMPARE_OPS, type DType, type Tensor } from '../../src/index.js';
import { exec } from '../../src/ops/exec.js';
import { acquireGpu, compareOp, cpuT, rint, rnd, toGpu } from './gpu.js';

const gpu = await acquireGpu();
afterAll(() => gpu?.dispose());

const f = (shape: number[], seed: number, lo = -1, hi = 1, dtype: DType = 'f32'): Tensor =>
  cpuT(
    dtype,
    shape,
    rnd(
      shape.reduce((a, b) => a * b, 1),
      seed,
      lo,
      hi,
    ),
  );
const ints = (shape: number[], seed: number, lo: number, hi: number, dtype: DType = 'i32'): Tensor =>
  cpuT(
    dtype,
    shape,
    rint(
      shape.reduce((a, b) => a * b, 1),
      seed,
      lo,
      hi,
    ),
  );
/** Values from a small set, so ties are common. */
const tied = (shape: number[], seed: number, dtype: DType = 'f32'): Tensor =>
  cpuT(
    dtype,
    shape,
    Array.from(
      rint(
        shape.reduce((a, b) => a * b, 1),
        seed,
        -3,
        4,
      ),
      (v) => v * 0.5,
    ),
  );

describe.skipIf(!gpu)('webgpu primitive kernels vs cpu', () => {
  const be = gpu!;

  it('reports its adapter', () => {
    expect(be.adapterInfo.vendor.length + be.adapterInfo.description.length).toBeGreaterThan(0);
    expect(be.name).toBe('webgpu');
    expect(be.supportsDType('f64')).toBe(false);
    for (const d of ['f32', 'f16', 'bf16', 'i32', 'u32', 'u8', 'bool', 'fp8-e4m3'] as DType[])
      expect(be.supportsDType(d)).toBe(true);
  });

  it('unary: every op on f32, f16 and bf16', async () => {
    const positive = new Set(['log', 'sqrt', 'rsqrt']);
    for (const op of UNARY_OPS) {
      for (const dtype of ['f32', 'f16', 'bf16'] as DType[]) {
        const x = positive.has(op) ? f([7, 13], 1, 0.05, 4, dtype) : f([7, 13], 2, -4, 4, dtype);
        await compareOp(be, 'unary', [x], { op }, { tol: dtype === 'f32' ? 1e-5 : 4e-3 });
      }
    }
    // recip away from zero, trig over a wider range
    await compareOp(be, 'unary', [f([300], 3, 0.2, 5)], { op: 'recip' });
    await compareOp(be, 'unary', [f([300], 4, -60, 60)], { op: 'sin' });
    await compareOp(be, 'unary', [f([300], 5, -60, 60)], { op: 'cos' });
    await compareOp(be, 'unary', [f([300], 6, -0.6, 0.6)], { op: 'tanh' });
    await compareOp(be, 'unary', [f([300], 7, -20, 20)], { op: 'tanh' });
  });

  it('unary on integers and special values', async () => {
    for (const op of ['neg', 'abs', 'sign', 'square'] as const)
      await compareOp(be, 'unary', [ints([5, 9], 10, -1000, 1000)], { op }, { exact: true });
    await compareOp(be, 'unary', [cpuT('i32', [3], [-2147483648, 2147483647, 0])], { op: 'neg' }, { exact: true });
    await compareOp(be, 'unary', [ints([40], 11, 0, 100)], { op: 'sqrt' }, { exact: true });
    const special = cpuT('f32', [8], [NaN, Infinity, -Infinity, 0, -0, 1e-30, -2.5, 88]);
    for (const op of ['neg', 'abs', 'sign', 'exp', 'sigmoid', 'tanh', 'square'] as const)
      await compareOp(be, 'unary', [special], { op });
  });

  it('binary: every op, with broadcasting', async () => {
    const a = f([4, 1, 5], 20, -2, 2);
    const b = f([3, 5], 21, -2, 2);
    for (const op of [...ARITH_OPS, ...COMPARE_OPS]) {
      if (op === 'pow') continue;
      await compareOp(be, 'binary', [a, b], { op }, COMPARE_OPS.includes(op as never) ? { exact: true } : {});
      await compareOp(be, 'binary', [b, a], { op }, COMPARE_OPS.includes(op as never) ? { exact: true } : {});
    }
    // same shapes, a scalar operand, and a middle-axis broadcast
    await compareOp(be, 'binary', [f([6, 7], 22), f([6, 7], 23)], { op: 'mul' });
    await compareOp(be, 'binary', [f([6, 7], 24), f([], 25)], { op: 'sub' });
    await compareOp(be, 'binary', [f([2, 3, 4, 5], 26), f([3, 1, 5], 27)], { op: 'add' });
    await compareOp(be, 'binary', [f([2, 1, 4, 1], 28), f([1, 3, 1, 5], 29)], { op: 'div' });
    // pow: positive bases, negative bases with integer exponents, zeros
    await compareOp(be, 'binary', [f([50], 30, 0.1, 3), f([50], 31, -3, 3)], { op: 'pow' });
    await compareOp(be, 'binary', [f([50], 32, -3, 3), cpuT('f32', [50], Array.from(rint(50, 33, -4, 5)))], {
      op: 'pow',
    });
    await compareOp(be, 'binary', [cpuT('f32', [6], [0, -0, 0, 2, -2, NaN]), cpuT('f32', [6], [2, 3, -1, 0, 0.5, 0])], {
      op: 'pow',
    });
    // NaN handling of max/min/compare
    const n1 = cpuT('f32', [6], [NaN, 1, NaN, 2, -0, 3]);
    const n2 = cpuT('f32', [6], [1, NaN, NaN, 2, 0, -3]);
    for (const op of ['max', 'min'] as const) await compareOp(be, 'binary', [n1, n2], { op }, { exact: true });
    for (const op of COMPARE_OPS) await compareOp(be, 'binary', [n1, n2], { op }, { exact: true });
  });

  it('binary on f16 / bf16 (bit-exact for + - *) and integer dtypes', async () => {
    for (const dtype of ['f16', 'bf16'] as DType[]) {
      for (const op of ['add', 'sub', 'mul'] as const)
        await compareOp(be, 'binary', [f([5, 7], 40, -3, 3, dtype), f([7], 41, -3, 3, dtype)], { op }, { exact: true });
      await compareOp(be, 'binary', [f([5, 7], 42, -3, 3, dtype), f([5, 7], 43, 0.5, 3, dtype)], { op: 'div' });
      await compareOp(
        be,
        'binary',
        [f([33], 44, -3, 3, dtype), f([33], 45, -3, 3, dtype)],
        { op: 'lt' },
        { exact: true },
      );
    }
    const ia = ints([4, 9], 50, -50, 50);
    const ib = cpuT('i32', [9], [3, -7, 0, 1, -1, 12, 5, 0, -2]);
    for (const op of [...ARITH_OPS, ...COMPARE_OPS]) {
      const y = op === 'pow' ? cpuT('i32', [9], [0, 1, 2, 3, 4, -1, -2, 5, 7]) : ib;
      await compareOp(be, 'binary', [ia, y], { op }, { exact: true });
    }
    await compareOp(
      be,
      'binary',
      [cpuT('i32', [3], [2147483647, -2147483648, -2147483648]), cpuT('i32', [3], [1, -1, 1])],
      { op: 'add' },
      { exact: true },
    );
    await compareOp(
      be,
      'binary',
      [cpuT('i32', [2], [-2147483648, 7]), cpuT('i32', [2], [-1, -2])],
      { op: 'div' },
      { exact: true },
    );
    for (const dtype of ['u8', 'bool', 'u32'] as DType[]) {
      const x = ints([3, 11], 51, 0, dtype === 'bool' ? 2 : 200, dtype);
      const y = ints([11], 52, 0, dtype === 'bool' ? 2 : 200, dtype);
      for (const op of ['add', 'sub', 'mul', 'div', 'max', 'min', 'eq', 'gt'] as const)
        await compareOp(be, 'binary', [x, y], { op }, { exact: true });
    }
  });

  it('where with broadcasting, every storage width', async () => {
    const c = ints([4, 1, 6], 60, 0, 2, 'bool');
    for (const dtype of ['f32', 'f16', 'bf16', 'i32', 'u8', 'bool'] as DType[]) {
      const a = dtype === 'u8' || dtype === 'bool' ? ints([3, 6], 61, 0, 2, dtype) : f([3, 6], 61, -2, 2, dtype);
      const b = dtype === 'u8' || dtype === 'bool' ? ints([4, 3, 1], 62, 0, 2, dtype) : f([4, 3, 1], 62, -2, 2, dtype);
      await compareOp(be, 'where', [c, a, b], {}, { exact: true });
    }
    await compareOp(be, 'where', [ints([5, 7], 63, 0, 2, 'bool'), f([5, 7], 64), f([], 65)], {}, { exact: true });
  });

  it('cast: f32 ↔ bf16 / f16 bit-exact, floats → ints truncate, every pair', async () => {
    const specials = [
      NaN,
      -NaN,
      Infinity,
      -Infinity,
      0,
      -0,
      1,
      -1,
      65504,
      65519.99,
      65520,
      70000,
      -65520,
      2 ** -24,
      2 ** -25,
      2 ** -25 * 1.5,
      3 * 2 ** -26,
      2 ** -14,
      2 ** -15 + 2 ** -25,
      1e-40,
      -3e-39,
      1.00048828125,
      1.000732421875,
      1.0009765625,
      1.00390625,
      1.005859375,
      3.4e38,
      -3.4e38,
      0.1,
      1 / 3,
      12345.678,
    ];
    const sx = cpuT('f32', [specials.length], specials);
    const rx = f([37, 29], 70, -1000, 1000);
    const small = f([101], 71, -1e-3, 1e-3);
    for (const to of ['bf16', 'f16'] as DType[]) {
      for (const x of [sx, rx, small]) await compareOp(be, 'cast', [x], { dtype: to }, { exact: true });
    }
    // every f16 / bf16 bit pattern decodes exactly (f16→f32, bf16→f32)
    for (const from of ['f16', 'bf16'] as DType[]) {
      const t = fromRaw(
        from,
        [65536],
        new Uint16Array(65536).map((_, i) => i),
        cpu,
      );
      await compareOp(be, 'cast', [t], { dtype: 'f32' }, { exact: true });
      await compareOp(be, 'cast', [t], { dtype: from === 'f16' ? 'bf16' : 'f16' }, { exact: true });
    }
    const toInts = cpuT(
      'f32',
      [12],
      [1.9, -1.9, 0.5, -0.5, NaN, Infinity, -Infinity, 3e9, -3e9, 2147483647, 1e20, -2.5e9],
    );
    for (const to of ['i32', 'u32', 'u8', 'bool'] as DType[]) {
      await compareOp(be, 'cast', [toInts], { dtype: to }, { exact: true });
      await compareOp(be, 'cast', [rx], { dtype: to }, { exact: true });
    }
    const bigInts = cpuT('i32', [8], [16777217, -16777217, 2147483647, -2147483648, 123456789, 33554435, 7, -7]);
    for (const to of ['f32', 'f16', 'bf16', 'u32', 'u8', 'bool'] as DType[])
      await compareOp(be, 'cast', [bigInts], { dtype: to }, { exact: true });
    const u = cpuT('u32', [5], [4294967295, 2147483648, 16777217, 0, 255]);
    for (const to of ['f32', 'i32', 'u8', 'bf16'] as DType[])
      await compareOp(be, 'cast', [u], { dtype: to }, { exact: true });
    const b8 = ints([9], 72, 0, 2, 'bool');
    const u8 = ints([9], 73, 0, 256, 'u8');
    for (const to of ['f32', 'f16', 'i32', 'u8', 'bool'] as DType[]) {
      await compareOp(be, 'cast', [b8], { dtype: to }, { exact: true });
      await compareOp(be, 'cast', [u8], { dtype: to }, { exact: true });
    }
    for (const dtype of ['f32', 'f16', 'bf16', 'i32', 'u8', 'bool'] as DType[])
      await compareOp(be, 'cast', [ints([7], 74, 0, 2, dtype)], { dtype }, { exact: true });
  });

  it('reduce: sum / max / min / argmax / argmin on every axis, ties and NaN', async () => {
    for (const shape of [
      [3, 7, 4],
      [5, 70, 3],
      [2, 3000],
      [1100, 3],
    ]) {
      for (let axis = 0; axis < shape.length; axis++) {
        for (const op of ['sum', 'max', 'min', 'argmax', 'argmin'] as const) {
          await compareOp(
            be,
            'reduce',
            [f(shape, 80 + axis, -2, 2)],
            { op, axis },
            op === 'sum' ? {} : { exact: true },
          );
          if (op !== 'sum') await compareOp(be, 'reduce', [tied(shape, 90 + axis)], { op, axis }, { exact: true });
        }
      }
    }
    const withNaN = f([4, 150], 100);
    const v = withNaN.rawSync() as Float32Array;
    v[10] = NaN;
    v[20] = NaN;
    v[300 + 5] = NaN;
    v[450 + 149] = NaN;
    v[149] = Infinity;
    for (const op of ['max', 'min', 'argmax', 'argmin', 'sum'] as const) {
      await compareOp(be, 'reduce', [withNaN], { op, axis: 1 }, op === 'sum' ? {} : { exact: true });
      await compareOp(be, 'reduce', [withNaN], { op, axis: 0 }, op === 'sum' ? {} : { exact: true });
    }
    for (const op of ['sum', 'max', 'argmin'] as const) {
      await compareOp(be, 'reduce', [ints([6, 90], 101, -1000, 1000)], { op, axis: 1 }, { exact: true });
      await compareOp(
        be,
        'reduce',
        [f([6, 90], 102, -2, 2, 'f16')],
        { op, axis: 1 },
        op === 'sum' ? {} : { exact: true },
      );
      await compareOp(
        be,
        'reduce',
        [f([6, 9], 103, -2, 2, 'bf16')],
        { op, axis: 0 },
        op === 'sum' ? {} : { exact: true },
      );
      await compareOp(be, 'reduce', [ints([5, 77], 104, 0, 2, 'bool')], { op, axis: 1 }, { exact: true });
    }
  });

  it('softmax / log-softmax and rmsnorm', async () => {
    for (const log of [false, true]) {
      for (const shape of [
        [6, 37],
        [3, 300],
        [2, 2, 1000],
        [1, 5],
      ])
        await compareOp(be, 'softmax', [f(shape, 110, -5, 5)], { log });
      await compareOp(be, 'softmax', [f([4, 37], 111, -5, 5, 'f16')], { log });
      await compareOp(be, 'softmax', [f([4, 37], 112, -5, 5, 'bf16')], { log });
      const masked = cpuT('f32', [2, 3], [-Infinity, -Infinity, -Infinity, 1, -Infinity, 2]);
      await compareOp(be, 'softmax', [masked], { log });
    }
    for (const shape of [[5, 48], [3, 300], [7]]) {
      const d = shape[shape.length - 1]!;
      await compareOp(be, 'rmsnorm', [f(shape, 120, -3, 3), f([d], 121, 0.5, 1.5)], { eps: 1e-6 });
    }
    await compareOp(be, 'rmsnorm', [f([4, 50], 122, -3, 3, 'f16'), f([50], 123, 0.5, 1.5, 'f16')], { eps: 1e-5 });
    await compareOp(be, 'rmsnorm', [f([4, 50], 124, -3, 3, 'bf16'), f([50], 125, 0.5, 1.5, 'bf16')], { eps: 1e-5 });
  });

  it('gather / takeAlong with repeats, every storage width', async () => {
    for (const dtype of ['f32', 'f16', 'bf16', 'i32', 'u8', 'bool'] as DType[]) {
      const x =
        dtype === 'u8' || dtype === 'bool' ? ints([5, 7, 3], 130, 0, 2, dtype) : f([5, 7, 3], 130, -2, 2, dtype);
      await compareOp(be, 'gather', [x, cpuT('i32', [2, 3], [4, 0, 4, 1, 2, 2])], { axis: 0 }, { exact: true });
      await compareOp(be, 'gather', [x, cpuT('i32', [5], [6, 0, 3, 3, 1])], { axis: 1 }, { exact: true });
      await compareOp(be, 'gather', [x, cpuT('i32', [3], [2, 2, 0])], { axis: 2 }, { exact: true });
      await compareOp(be, 'takeAlong', [x, ints([5, 4, 3], 131, 0, 7)], { axis: 1 }, { exact: true });
      await compareOp(be, 'takeAlong', [x, ints([2, 7, 3], 132, 0, 5)], { axis: 0 }, { exact: true });
      await compareOp(be, 'takeAlong', [x, ints([5, 7, 5], 133, 0, 3)], { axis: 2 }, { exact: true });
    }
  });

  it('scatterAdd (scanned and sorted paths) and scatterAlong', async () => {
    for (const dtype of ['f32', 'f16', 'i32'] as DType[]) {
      const mk = (shape: number[], seed: number): Tensor =>
        dtype === 'i32' ? ints(shape, seed, -100, 100) : f(shape, seed, -2, 2, dtype);
      const tol = dtype === 'f32' ? {} : dtype === 'f16' ? { tol: 2e-3 } : { exact: true };
      // few indices: every output element scans them
      await compareOp(
        be,
        'scatterAdd',
        [mk([6, 5], 140), cpuT('i32', [4], [2, 0, 2, 5]), mk([4, 5], 141)],
        { axis: 0 },
        tol,
      );
      await compareOp(
        be,
        'scatterAdd',
        [mk([3, 9, 2], 142), cpuT('i32', [5], [8, 8, 1, 0, 8]), mk([3, 5, 2], 143)],
        { axis: 1 },
        tol,
      );
      // many indices with heavy repeats: sorted (CSR) path
      const idx = rint(300, 144, 0, 13);
      await compareOp(
        be,
        'scatterAdd',
        [mk([13, 6], 145), cpuT('i32', [300], idx), mk([300, 6], 146)],
        { axis: 0 },
        tol,
      );
      await compareOp(
        be,
        'scatterAdd',
        [mk([2, 13, 3], 147), cpuT('i32', [300], idx), mk([2, 300, 3], 148)],
        { axis: 1 },
        tol,
      );
      // scatterAlong: the adjoint of takeAlong, on each axis
      await compareOp(
        be,
        'scatterAlong',
        [mk([5, 7], 150), ints([5, 4], 151, 0, 7), mk([5, 4], 152)],
        { axis: 1 },
        tol,
      );
      await compareOp(
        be,
        'scatterAlong',
        [mk([5, 7], 153), ints([9, 7], 154, 0, 5), mk([9, 7], 155)],
        { axis: 0 },
        tol,
      );
      await compareOp(
        be,
        'scatterAlong',
        [mk([3, 4, 6], 156), ints([3, 10, 6], 157, 0, 4), mk([3, 10, 6], 158)],
        { axis: 1 },
        tol,
      );
    }
  });

  it('strided: permute, slice, broadcast, flip; pad; concat — packed widths with odd sizes', async () => {
    for (const dtype of ['f32', 'f16', 'bf16', 'i32', 'u8', 'bool'] as DType[]) {
      const x =
        dtype === 'u8' || dtype === 'bool' ? ints([3, 5, 7], 160, 0, 2, dtype) : f([3, 5, 7], 160, -2, 2, dtype);
      // permute [2, 0, 1]
      await compareOp(be, 'strided', [x], { shape: [7, 3, 5], strides: [1, 35, 7], offset: 0 }, { exact: true });
      // slice [1:3, 1:4, 2:7]
      await compareOp(
        be,
        'strided',
        [x],
        { shape: [2, 3, 5], strides: [35, 7, 1], offset: 35 + 7 + 2 },
        { exact: true },
      );
      // broadcast a row to [4, 3, 7]
      await compareOp(be, 'strided', [x], { shape: [4, 3, 7], strides: [0, 0, 1], offset: 7 }, { exact: true });
      // flip the last axis
      await compareOp(be, 'strided', [x], { shape: [3, 5, 7], strides: [35, 7, -1], offset: 6 }, { exact: true });
      // identity (a plain copy)
      await compareOp(be, 'strided', [x], { shape: [15, 7], strides: [7, 1], offset: 0 }, { exact: true });
      await compareOp(
        be,
        'pad',
        [x],
        { before: [1, 0, 2], after: [0, 3, 1], value: dtype === 'bool' ? 1 : 7 },
        { exact: true },
      );
      const y =
        dtype === 'u8' || dtype === 'bool' ? ints([3, 2, 7], 161, 0, 2, dtype) : f([3, 2, 7], 161, -2, 2, dtype);
      const z =
        dtype === 'u8' || dtype === 'bool' ? ints([3, 1, 7], 162, 0, 2, dtype) : f([3, 1, 7], 162, -2, 2, dtype);
      await compareOp(be, 'concat', [x, y, z], { axis: 1 }, { exact: true });
      await compareOp(be, 'concat', [z, x, z], { axis: 1 }, { exact: true });
      await compareOp(be, 'concat', [x, x], { axis: 0 }, { exact: true });
      const w =
        dtype === 'u8' || dtype === 'bool' ? ints([3, 5, 1], 163, 0, 2, dtype) : f([3, 5, 1], 163, -2, 2, dtype);
      await compareOp(be, 'concat', [x, w, x], { axis: 2 }, { exact: true });
    }
    await compareOp(be, 'pad', [f([4, 5], 164)], { before: [0, 0], after: [0, 0], value: 0 }, { exact: true });
    await compareOp(
      be,
      'pad',
      [f([4, 5], 165, -1, 1, 'f16')],
      { before: [2, 1], after: [1, 2], value: -Infinity },
      { exact: true },
    );
  });

  it('topk: ties lowest index first, NaN as largest, every k', async () => {
    for (const k of [1, 3, 8]) {
      await compareOp(be, 'topk', [tied([5, 8], 170)], { k }, { exact: true });
      await compareOp(be, 'topk', [f([4, 300], 171)], { k }, { exact: true });
    }
    const nan = cpuT('f32', [2, 6], [1, NaN, Infinity, 3, NaN, -1, 2, 2, -Infinity, 2, 5, 5]);
    await compareOp(be, 'topk', [nan], { k: 6 }, { exact: true });
    await compareOp(be, 'topk', [tied([3, 20], 172, 'f16')], { k: 5 }, { exact: true });
    await compareOp(be, 'topk', [ints([3, 20], 173, -5, 5)], { k: 20 }, { exact: true });
    await compareOp(be, 'topk', [f([2, 3, 9], 174)], { k: 0 }, { exact: true });
  });

  it('cumsum forwards and reversed, short and long lines', async () => {
    for (const reverse of [false, true]) {
      await compareOp(be, 'cumsum', [f([4, 9, 3], 180)], { axis: 1, reverse });
      await compareOp(be, 'cumsum', [f([4, 9, 3], 181)], { axis: 0, reverse });
      await compareOp(be, 'cumsum', [f([2, 5000], 182)], { axis: 1, reverse });
      await compareOp(be, 'cumsum', [ints([3, 700], 183, -100, 100)], { axis: 1, reverse }, { exact: true });
      await compareOp(be, 'cumsum', [ints([3, 7], 184, -100, 100)], { axis: 0, reverse }, { exact: true });
      await compareOp(be, 'cumsum', [f([3, 40], 185, -1, 1, 'f16')], { axis: 1, reverse });
      await compareOp(be, 'cumsum', [ints([5, 33], 186, 0, 2, 'bool')], { axis: 1, reverse }, { exact: true });
    }
  });

  it('full and iota in every dtype', async () => {
    for (const dtype of ['f32', 'f16', 'bf16', 'i32', 'u32', 'u8', 'bool'] as DType[]) {
      // [3, 5, 7] is uploaded, [41, 33] (past 1024 elements) computed by a dispatch
      for (const value of [0, 1, -2.75, 300.5])
        for (const shape of [
          [3, 5, 7],
          [41, 33],
        ])
          await compareOp(be, 'full', [], { shape, dtype, value }, { exact: true });
      await compareOp(be, 'iota', [], { shape: [3, 5, 7], axis: 1, dtype }, { exact: true });
      await compareOp(be, 'iota', [], { shape: [4099], axis: 0, dtype }, { exact: true });
    }
    await compareOp(be, 'full', [], { shape: [5], dtype: 'f32', value: NaN }, { exact: true });
    await compareOp(be, 'full', [], { shape: [], dtype: 'f32', value: -Infinity }, { exact: true });
  });

  it('out-of-range indices surface at the next read', async () => {
    const x = toGpu(f([4, 3], 190), be);
    const bad = exec('gather', [x, toGpu(cpuT('i32', [2], [1, 9]), be)], { axis: 0 }, be)[0]!;
    await expect(bad.data()).rejects.toThrow(/gather.*out of range/);
    // the flag is cleared afterwards
    const ok = exec('gather', [x, toGpu(cpuT('i32', [2], [1, 3]), be)], { axis: 0 }, be)[0]!;
    expect(Array.from(await ok.data())).toEqual(
      Array.from(exec('gather', [f([4, 3], 190), cpuT('i32', [2], [1, 3])], { axis: 0 }, cpu)[0]!.dataSync()),
    );
  });
});
