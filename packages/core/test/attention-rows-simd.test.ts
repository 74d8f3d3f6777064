// The training attention's softmaxRows kernel (src/cpu/attention-rows-simd.ts) called directly, against its
// arithmetic spelled out in JavaScript (f64 maximum of the products, f32 shifts, the vector exp, the sums in
// key order in f64, f32 normalization, keys past the row zeroed to fillTo or the vector's end): bitwise, on blocks that start at any row (odd ones: a row pair whose
// second row has one more vector of keys than its first), of odd and even lengths, for both signs of scale.
import { describe, expect, it } from 'vitest';
import { buildAttentionRowsModule } from '../src/cpu/attention-rows-simd.js';
import { expF32, Rng } from '../src/index.js';

const PAGES = 4;

function reference(P: Float32Array, ld: number, i0: number, i1: number, fillTo: number, scale: number) {
  const out = P.slice();
  const stats: number[] = [];
  for (let i = i0; i < i1; i++) {
    const row = out.subarray(i * ld, (i + 1) * ld);
    const len = i + 1;
    let m = Number.NEGATIVE_INFINITY;
    for (let j = 0; j < len; j++) m = Math.max(m, row[j]! * scale);
    for (let j = 0; j < len; j++) row[j] = row[j]! * scale - m;
    expF32(row, 0, row, 0, len);
    let z = 0;
    for (let j = 0; j < len; j++) z += row[j]!;
    const inv = 1 / z;
    for (let j = 0; j < len; j++) row[j] = row[j]! * inv;
    row.fill(0, len, Math.max(fillTo, 4 * Math.ceil(len / 4))); // the exp's masked lanes are +0 too
    stats.push(m, z);
  }
  return { out, stats };
}

describe('softmaxRows', () => {
  const mem = new WebAssembly.Memory({ initial: PAGES, maximum: PAGES });
  const module = new WebAssembly.Module(buildAttentionRowsModule(false, PAGES));
  const softmaxRows = new WebAssembly.Instance(module, { env: { memory: mem } }).exports.softmaxRows as (
    ...args: number[]
  ) => void;

  it('is its arithmetic spelled out, bitwise, for blocks from any row', () => {
    const rng = new Rng(3);
    const [ld, S] = [40, 37];
    const [at, scaleAt, statsAt] = [1024, 64, 128 * 1024];
    let cases = 0;
    for (const scale of [0.3, -0.7])
      for (const i0 of [0, 1, 2, 3, 5, 30])
        for (const rows of [1, 2, 3, 4, 7]) {
          const i1 = Math.min(S, i0 + rows);
          const fillTo = Math.min(ld, i1 + 2);
          const P = Float32Array.from({ length: S * ld }, () => 3 * rng.normal());
          const want = reference(P, ld, i0, i1, fillTo, scale);
          new Float32Array(mem.buffer, at, S * ld).set(P);
          new Float64Array(mem.buffer, scaleAt, 1)[0] = scale;
          softmaxRows(at, ld * 4, i0, i1, fillTo, scaleAt, statsAt);
          const got = new Float32Array(mem.buffer, at, S * ld);
          const stats = new Float64Array(mem.buffer, statsAt, 2 * (i1 - i0));
          const where = `scale ${scale} rows [${i0}, ${i1})`;
          for (let i = 0; i < S * ld; i++)
            if (!Object.is(got[i], want.out[i])) expect(got[i], `${where} float ${i}`).toBe(want.out[i]);
          expect(Array.from(stats), where).toEqual(want.stats);
          cases++;
        }
    expect(cases).toBe(60);
  });
});
