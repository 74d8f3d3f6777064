// MLA's down-projections on the CPU (absorbed-cpu.ts's downProjectionsCpu): kv_a's latent and rotary key
// as two products of its weight's row ranges (operandRows) instead of one product split by a copy. Each
// range's output must equal, bit for bit, its columns of the whole product — f32, bf16 and FP8 weights,
// decode rows (the GEMV) and prefill rows (the weight GEMM, f32 and i16 activations), 1 and 2 threads —
// and an FP8 range that would cut a 128-row scale block is refused (null: the caller's split runs).
import { afterAll, describe, expect, it } from 'vitest';
import { cpu, encodeBf16, Linear, noGrad, setGemmThreads, setPrefillActivations, Tensor, tensor } from '@dsv3/core';
import { downProjectionsCpu, operandRows } from '../src/absorbed-cpu.js';
import { randArray } from './helpers.js';

const bits = (a: Float32Array) => Array.from(new Uint32Array(a.buffer, a.byteOffset, a.length));

/** Columns [start, start + count) of rows [m, n]. */
function columns(y: Float32Array, m: number, n: number, start: number, count: number): Float32Array {
  const out = new Float32Array(m * count);
  for (let r = 0; r < m; r++) out.set(y.subarray(r * n + start, r * n + start + count), r * count);
  return out;
}

/** A bias-free Linear [n, k] whose CPU weight is f32, resident bf16 or resident FP8 (random codes, scales). */
function linearOf(kind: 'f32' | 'bf16' | 'fp8', k: number, n: number, seed: number): Linear {
  const l = new Linear(k, n, { seed });
  if (kind === 'bf16') {
    const s = cpu.allocResident('bf16', n * k);
    (s.data as Uint16Array).set(encodeBf16(l.weight.value.dataSync() as Float32Array));
    l.weight.value = new Tensor(cpu, s, [n, k], 'bf16');
  } else if (kind === 'fp8') {
    const s = cpu.allocResident('fp8-e4m3', n * k);
    (s.data as Uint8Array).set(
      Uint8Array.from(randArray(n * k, seed, 0, 254), (v) => ((Math.floor(v) & 0x7f) === 0x7f ? 0 : Math.floor(v))),
    );
    const scales = Float32Array.from(randArray(Math.ceil(n / 128) * Math.ceil(k / 128), seed + 1, 0.01, 0.1));
    l.fp8 = { w: new Tensor(cpu, s, [n, k], 'fp8-e4m3'), scales };
  }
  return l;
}

afterAll(() => {
  setGemmThreads(1);
  setPrefillActivations('f32');
});

describe('downProjectionsCpu with row ranges: each range is its columns of the whole product', () => {
  // k ragged against the 128-wide scale blocks; kv_a [256 + 64, k] as V3's [512 + 64, 7168] in small
  const [k, latent, rope, qDim] = [200, 256, 64, 96];
  for (const threads of [1, 2])
    for (const kind of ['f32', 'bf16', 'fp8'] as const)
      for (const acts of kind === 'f32' ? (['f32'] as const) : (['f32', 'i16'] as const))
        it(`${kind} weights, ${acts} prefill activations, ${threads} thread(s)`, () => {
          setGemmThreads(threads);
          setPrefillActivations(acts);
          const q = linearOf(kind, k, qDim, 3);
          const kvA = linearOf(kind, k, latent + rope, 5);
          for (const m of [1, 3, 130, 300]) {
            const x = tensor(Float32Array.from(randArray(m * k, m)), { shape: [1, m, k] });
            noGrad(() => {
              const [qWhole, kvWhole] = downProjectionsCpu(x, [q, kvA])!;
              const parts = downProjectionsCpu(x, [
                q,
                { linear: kvA, start: 0, count: latent },
                { linear: kvA, start: latent, count: rope },
              ])!;
              expect(parts.map((t) => t.shape)).toEqual([
                [1, m, qDim],
                [1, m, latent],
                [1, m, rope],
              ]);
              const whole = kvWhole!.dataSync() as Float32Array;
              expect(bits(parts[0]!.dataSync() as Float32Array), `q, ${m} rows`).toEqual(
                bits(qWhole!.dataSync() as Float32Array),
              );
              expect(bits(parts[1]!.dataSync() as Float32Array), `latent, ${m} rows`).toEqual(
                bits(columns(whole, m, latent + rope, 0, latent)),
              );
              expect(bits(parts[2]!.dataSync() as Float32Array), `rotary key, ${m} rows`).toEqual(
                bits(columns(whole, m, latent + rope, latent, rope)),
              );
            });
          }
        });
});

describe('operandRows', () => {
  it('views W rows (and FP8 scale rows) without copying; refuses ranges off the scale blocks', () => {
    const w = Float32Array.from({ length: 6 * 4 }, (_, i) => i);
    const r = operandRows({ w }, 4, 6, 2, 3)!;
    expect(Array.from(r.w)).toEqual(Array.from({ length: 12 }, (_, i) => 8 + i));
    expect(r.w.buffer).toBe(w.buffer);
    expect(r.scales).toBeUndefined();
    // FP8 [300, 200]: scale blocks [3, 2]; rows 128..299 are blocks 1..2, rows 256..299 block 2
    const f = { w: new Uint8Array(300 * 200), scales: Float32Array.from({ length: 6 }, (_, i) => i) };
    expect(Array.from(operandRows(f, 200, 300, 128, 172)!.scales!)).toEqual([2, 3, 4, 5]);
    expect(Array.from(operandRows(f, 200, 300, 0, 128)!.scales!)).toEqual([0, 1]);
    expect(Array.from(operandRows(f, 200, 300, 256, 44)!.scales!)).toEqual([4, 5]);
    expect(operandRows(f, 200, 300, 0, 100)).toBeNull(); // ends inside block 0
    expect(operandRows(f, 200, 300, 100, 200)).toBeNull(); // starts inside block 0
    expect(() => operandRows({ w }, 4, 6, 4, 3)).toThrow(RangeError);
    expect(() => operandRows({ w }, 4, 6, 0, 0)).toThrow(RangeError);
  });
});
