// The f32 attention kernels now run as one job of core's GEMM engine (query blocks cut into row-range
// tasks spread over the GEMM threads). Each output must equal, bit for bit, the serial kernel they
// replace (serial-attention-reference.ts: same products on the same SIMD GEMM, same tiles, same softmax
// order), at 1 and 2 threads, contiguous and paged keys, ragged lengths and blocks; and the float64
// reference within 1e-6. Where a query block has at most 4 rows (H <= 4 in decode), the serial kernel's
// score products took core's GEMV instead (another sum order: the GEMV's k-split accumulators), so
// those cases are held to the float64 reference only. So are decode sequences (S = 1) of
// gemmConfig.latentSplitMinKeys keys or more, which core splits into key pieces whose softmax states it
// merges (flash-decoding), another sum order than the serial kernel's; the 600-key sequence is checked
// both ways (whole with the split off, then split).
import { afterAll, describe, expect, it } from 'vitest';
import { CpuStorage, cpu, runKernel, setGemmThreads, type KernelTensor } from '@dsv3/core';
import { gemmConfig } from '../../core/src/cpu/gemm/config.js';
import { FLASH_PREFILL_OP, PAGED_ATTENTION_OP } from '../src/index.js';
import { randArray, refLatentAttention, relErr } from './helpers.js';
import { serialGemmAttention, type SerialSequence } from './serial-attention-reference.js';

afterAll(() => setGemmThreads(2));

const kt = (a: Float32Array | Int32Array, shape: number[]): KernelTensor => ({
  storage: new CpuStorage(a),
  shape,
  dtype: a instanceof Int32Array ? 'i32' : 'f32',
});
const f32 = (n: number, seed: number, amp = 1) => Float32Array.from(randArray(n, seed, -amp, amp));
const run = (op: string, inputs: KernelTensor[], attrs: object): Float32Array =>
  (runKernel(op, cpu, inputs, attrs)[0]!.storage as CpuStorage).data as Float32Array;

/** Index of the first element whose bits differ, or -1. */
function firstDiff(a: Float32Array, b: Float32Array): number {
  if (a.length !== b.length) return 0;
  const x = new Uint32Array(a.buffer, a.byteOffset, a.length),
    y = new Uint32Array(b.buffer, b.byteOffset, b.length);
  for (let i = 0; i < x.length; i++) if (x[i] !== y[i]) return i;
  return -1;
}

describe('f32 flash prefill as one GEMM-engine job', () => {
  const cases: [string, number, number, number, number, number, number, number][] = [
    // name, B, S, T, H, C, R, q amplitude
    ['B=2, S=T=300: ten query blocks of 32 positions', 2, 300, 300, 8, 40, 8, 2],
    ['chunk: S=9 over T=700 (two key tiles), C=300 (two depth blocks)', 1, 9, 700, 6, 300, 12, 3],
    ['S=T=70, H=5: blocks of 51 and 19 positions (ragged rows)', 1, 70, 70, 5, 24, 6, 4],
    ['decode shape: B=3, S=1, T=65, H=16', 3, 1, 65, 16, 32, 8, 2],
  ];
  for (const [name, B, S, T, H, C, R, amp] of cases) {
    it(name, () => {
      const ql = f32(B * S * H * C, 1, amp);
      const qr = f32(B * S * H * R, 2, amp);
      const kv = f32(B * T * C, 3);
      const kr = f32(B * T * R, 4);
      const scale = 1 / Math.sqrt(C / 2);
      const offset = T - S;
      const seqs: SerialSequence[] = Array.from({ length: B }, (_, b) => ({ T, offset, rowOf: null, base: b * T }));
      const want = serialGemmAttention(ql, qr, kv, kr, seqs, { S, H, C, R, scale });
      const ref = refLatentAttention({
        qL: ql,
        qR: qr,
        ckv: seqs.map((_, b) => kv.subarray(b * T * C, (b + 1) * T * C)),
        kr: seqs.map((_, b) => kr.subarray(b * T * R, (b + 1) * T * R)),
        B,
        S,
        H,
        C,
        R,
        scale,
        offsets: seqs.map(() => offset),
      });
      for (const threads of [1, 2]) {
        setGemmThreads(threads);
        const got = run(
          FLASH_PREFILL_OP,
          [kt(ql, [B, S, H, C]), kt(qr, [B, S, H, R]), kt(kv, [B, T, C]), kt(kr, [B, T, R])],
          { scale, causalOffset: offset },
        );
        expect(firstDiff(got, want), `${threads} threads: first differing element`).toBe(-1);
        expect(relErr(got, ref)).toBeLessThan(1e-6);
      }
    });
  }
});

describe('f32 paged attention as one GEMM-engine job', () => {
  // lengths 5 / 17 / 70 / 600 in blocks of 16, the blocks of all sequences interleaved in the pool
  const lens = [5, 17, 70, 600];
  const bs = 16;
  const maxB = Math.ceil(600 / bs);
  const nb = lens.reduce((t, T) => t + Math.ceil(T / bs), 0) + 3;
  const tables = new Int32Array(lens.length * maxB);
  let next = 2; // leave blocks 0 and 1 unused
  for (let b = 0; b < maxB; b++)
    lens.forEach((T, n) => {
      if (b * bs < T) tables[n * maxB + b] = next++;
    });
  const rowsOf = (T: number, n: number) =>
    Int32Array.from({ length: T }, (_, j) => tables[n * maxB + Math.floor(j / bs)]! * bs + (j % bs));

  for (const [S, H] of [
    [4, 8],
    [1, 8],
    [5, 2],
    [1, 3],
  ] as const) {
    const bitwise = Math.min(S, Math.floor(256 / H)) * H > 4;
    it(`S=${S}, H=${H}: ${bitwise ? 'bitwise equal to the serial kernel' : 'score products took the GEMV before: float64 reference only'}`, () => {
      const [C, R, N] = [48, 8, lens.length];
      const pkv = f32(nb * bs * C, 10);
      const pkr = f32(nb * bs * R, 11);
      const ql = f32(N * S * H * C, 12, 2);
      const qr = f32(N * S * H * R, 13, 2);
      const scale = 0.3;
      const seqs: SerialSequence[] = lens.map((T, n) => ({ T, offset: T - S, rowOf: rowsOf(T, n), base: 0 }));
      const want = serialGemmAttention(ql, qr, pkv, pkr, seqs, { S, H, C, R, scale });
      const gather = (pool: Float32Array, w: number, q: SerialSequence) =>
        Float32Array.from({ length: q.T * w }, (_, i) => pool[q.rowOf![Math.floor(i / w)]! * w + (i % w)]!);
      const ref = refLatentAttention({
        qL: ql,
        qR: qr,
        ckv: seqs.map((q) => gather(pkv, C, q)),
        kr: seqs.map((q) => gather(pkr, R, q)),
        B: N,
        S,
        H,
        C,
        R,
        scale,
        offsets: seqs.map((q) => q.offset),
      });
      const saved = gemmConfig.latentSplitMinKeys;
      // whole blocks (no split), then the 600-key sequence split into two pieces of 300 keys
      for (const [threads, splitAt] of [
        [1, Number.POSITIVE_INFINITY],
        [2, Number.POSITIVE_INFINITY],
        [1, 512],
        [2, 512],
      ] as const) {
        setGemmThreads(threads);
        gemmConfig.latentSplitMinKeys = splitAt;
        const got = run(
          PAGED_ATTENTION_OP,
          [
            kt(ql, [N, S, H, C]),
            kt(qr, [N, S, H, R]),
            kt(pkv, [nb, bs, C]),
            kt(pkr, [nb, bs, R]),
            kt(tables, [N, maxB]),
            kt(Int32Array.from(lens), [N]),
          ],
          { scale, blockSize: bs },
        );
        const per = S * H * C;
        seqs.forEach((q, n) => {
          const [g, w] = [got.subarray(n * per, (n + 1) * per), want.subarray(n * per, (n + 1) * per)];
          // key-split decode sequences: the float64 reference only (and not the serial kernel's bits)
          if (S === 1 && q.T >= gemmConfig.latentSplitMinKeys)
            expect(firstDiff(g, w), `sequence ${n}: split by keys`).not.toBe(-1);
          else if (bitwise)
            expect(firstDiff(g, w), `${threads} threads, sequence ${n}: first differing element`).toBe(-1);
        });
        gemmConfig.latentSplitMinKeys = saved;
        expect(relErr(got, ref)).toBeLessThan(1e-6);
      }
    });
  }
});
