// backwardAsync accumulates into core's persistent gradient buffers (keepGradientIn) bitwise as the plain
// rule (grad = grad + g per backward pass), in the buffer the caller gave (no new gradient-sized array per
// micro-batch or step).
import {
  backward,
  cpuData,
  fromRaw,
  gradIsKept,
  keepGradientIn,
  matmul,
  Parameter,
  tanh,
  type DType,
  type GradientArray,
  type Tensor,
} from '@dsv3/core';
import { randomUniform } from '@dsv3/core/testing';
import { describe, expect, it } from 'vitest';
import { backwardAsync } from '../src/index.js';

const param = (shape: number[], seed: number, dtype: 'f32' | 'f64') => {
  const v = randomUniform(
    shape.reduce((a, b) => a * b, 1),
    seed,
  );
  return new Parameter(fromRaw(dtype, shape, dtype === 'f32' ? Float32Array.from(v) : v));
};

/** A small two-layer graph whose weight gradients depend on the micro-batch `m`. */
function loss(w1: Parameter, w2: Parameter, m: number, rows: number, dtype: DType): Tensor {
  const x = fromRaw(
    dtype,
    [rows, w1.value.shape[0]!],
    (dtype === 'f32' ? Float32Array : Float64Array).from(randomUniform(rows * w1.value.shape[0]!, 100 + m)),
  );
  return tanh(matmul(tanh(matmul(x, w1.value)), w2.value)).sum();
}

const bits = (t: Tensor) => Array.from(cpuData(t)!);

describe('gradients kept in persistent buffers', () => {
  for (const dtype of ['f32', 'f64'] as const)
    for (const [inner, hidden, rows] of [
      [5, 3, 7],
      [17, 9, 2],
    ] as const)
      it(`${dtype} [${inner}x${hidden}], ${rows} rows: equal bits to plain accumulation, in the given buffer, over steps`, async () => {
        const make = () => [param([inner, hidden], 1, dtype), param([hidden, 4], 2, dtype)] as const;
        const [a1, a2] = make();
        const [b1, b2] = make();
        const Flat = dtype === 'f32' ? Float32Array : Float64Array;
        const flat: GradientArray = new Flat(inner * hidden + hidden * 4);
        const views = [flat.subarray(0, inner * hidden), flat.subarray(inner * hidden)];
        for (let step = 0; step < 2; step++) {
          for (const p of [a1, a2, b1, b2]) p.value.zeroGrad();
          keepGradientIn(a1.value, views[0]!);
          keepGradientIn(a2.value, views[1]!);
          for (let m = 0; m < 3; m++) {
            await backwardAsync(loss(a1, a2, 3 * step + m, rows, dtype));
            backward(loss(b1, b2, 3 * step + m, rows, dtype));
          }
          expect(bits(a1.grad!)).toEqual(bits(b1.grad!));
          expect(bits(a2.grad!)).toEqual(bits(b2.grad!));
          // the gradients are the flat buffer's slices, not new arrays
          expect(gradIsKept(a1.value) && gradIsKept(a2.value)).toBe(true);
          expect(cpuData(a1.grad!)!.buffer).toBe(flat.buffer);
          expect(Array.from(flat.subarray(inner * hidden))).toEqual(bits(b2.grad!));
          // a parameter's new value (the optimizer's assign) keeps the buffer once re-registered
          const prev = a1.value;
          a1.assign(fromRaw(dtype, a1.value.shape, cpuData(a1.value)!.slice()));
          keepGradientIn(a1.value, views[0]!, prev);
          expect(gradIsKept(a1.value)).toBe(true);
          b1.assign(fromRaw(dtype, b1.value.shape, cpuData(b1.value)!.slice()));
        }
      });
});
