// The latent attention's row kernels (latent-rows-simd.ts) and their f64 exp (vector-exp-f64.ts),
// bitwise against the JavaScript they replace: the exp against Math.exp over x <= 0 (random scales
// from 2^-60 to the underflow threshold, fdlibm's branch edges, subnormal results, ±0, −∞, NaN); the
// softmax step, scaling, accumulation and division against the latent-attention task's former loops,
// transcribed below, on ragged shapes (odd and even key counts, masked and fully hidden rows, a
// maximum that moves between tiles, NaN and −∞ scores).
import { describe, expect, it } from 'vitest';
import { buildAttentionRowsModule } from '../src/cpu/attention-rows-simd.js';
import { I32, ModuleBuilder, V128, whileLoop } from '../src/cpu/gemm/wasm-emitter.js';
import { emitExpF64x2 } from '../src/cpu/vector-exp-f64.js';
import { Rng } from '../src/index.js';
import { bitMismatches, expectSameBits } from '../src/testing.js';

/** expF64(ptr, n): n f64 at byte ptr replaced by their exp, two lanes at a time (n even). */
function expModule(): { run: (ptr: number, n: number) => void; f64: Float64Array } {
  const m = new ModuleBuilder({ module: 'env', name: 'memory', initialPages: 16, maximumPages: 16, shared: false });
  const [f] = m.func('expF64', [I32, I32]);
  const [ptr, n] = [0, 1];
  const end = f.local(I32);
  const [x, y] = f.locals(V128, 2) as [number, number];
  const t = f.locals(V128, 7);
  f.get(ptr).get(n).i32(3).shl().add().set(end);
  whileLoop(
    f,
    () => f.get(ptr).get(end).ltU(),
    () => {
      f.get(ptr).v128Load().set(x);
      emitExpF64x2(f, x, t, y);
      f.get(ptr).get(y).v128Store();
      f.get(ptr).i32(16).add().set(ptr);
    },
  );
  const memory = new WebAssembly.Memory({ initial: 16, maximum: 16 });
  const inst = new WebAssembly.Instance(new WebAssembly.Module(m.emit()), { env: { memory } });
  return { run: inst.exports.expF64 as (p: number, n: number) => void, f64: new Float64Array(memory.buffer) };
}

const bits = (v: number) => new BigUint64Array(new Float64Array([v]).buffer)[0]!;
const fromBits = (b: bigint) => new Float64Array(new BigUint64Array([b]).buffer)[0]!;

describe('emitExpF64x2', () => {
  const { run, f64 } = expModule();
  const check = (xs: number[]) => {
    for (let s = 0; s < xs.length; s += 65536) {
      const chunk = xs.slice(s, s + 65536);
      if (chunk.length % 2) chunk.push(0);
      f64.set(chunk);
      run(0, chunk.length);
      const got = f64.subarray(0, chunk.length);
      const bad = bitMismatches(
        got,
        chunk.map((x) => Math.exp(x)),
      );
      expect(
        bad.slice(0, 5).map((i) => `exp(${chunk[i]}) = ${got[i]}, Math.exp ${Math.exp(chunk[i]!)}`),
        `${bad.length} of ${chunk.length} differ`,
      ).toEqual([]);
    }
  };

  it('equals Math.exp bitwise on random x <= 0 from 2^-60 to past the underflow threshold', () => {
    const rng = new Rng(13);
    const xs: number[] = [];
    for (let i = 0; i < 600_000; i++) xs.push(-(2 ** (-60 + 70 * rng.uniform())));
    for (let i = 0; i < 200_000; i++) xs.push(-750 * rng.uniform());
    for (let i = 0; i < 200_000; i++) xs.push(-(700 + 50 * rng.uniform())); // subnormal results, 0
    // |x| just below fdlibm's first reduced argument (its test is on the high word, not ln2 / 2)
    for (let i = 0; i < 200_000; i++)
      xs.push(-fromBits(0x3fd62e42fefa39efn + BigInt(Math.floor(rng.uniform() * 17155601))));
    check(xs);
  });

  it("equals Math.exp bitwise at fdlibm's branch edges, ±0, −∞ and NaN", () => {
    const edges = [
      0x3e30000000000000n, // 2^-28: 1 + x below it
      0x3fd62e42fefa39efn, // ln2 / 2
      0x3fd62e4300000000n, // the first |x| reduced
      0x3ff0a2b23f3bab73n, // 1.5 ln2
      0x3ff0a2b200000000n,
      0x40862e42fefa39efn, // 709.78
      0x408633ce8fb9f87dn, // 708.39: 2^-1022 (k = -1021 and below)
      0x40874910d52d3051n, // the underflow threshold 745.13
      0x40874910d52d3052n,
      0x4087480000000000n,
    ];
    const xs: number[] = [0, -0, Number.NEGATIVE_INFINITY, Number.NaN, -1, -0.5, -Number.MIN_VALUE, -1e-300];
    for (const e of edges)
      for (let d = -3n; d <= 3n; d++) {
        const x = -fromBits(e + d);
        xs.push(x);
      }
    check(xs);
    expect(bits(Math.exp(-0))).toBe(bits(1));
  });
});

// ---- the task's former JavaScript loops (latent-attention-task.ts before its kernels), as references ----

interface Tile {
  s1: Float32Array;
  s2: Float32Array;
  p: Float32Array;
  m: Float64Array;
  l: Float64Array;
  acc: Float64Array;
}

function softmaxStepJs(t: Tile, ld: number, n: number, rows: number, lim0: number, r0: number, H: number, C: number) {
  const { s1, s2, p, m, l, acc } = t;
  for (let r = 0; r < rows; r++) {
    const lim = lim0 + Math.floor((r0 + r) / H);
    const so = r * ld;
    const po = r * n;
    let mt = -Infinity;
    const vis = Math.min(n, lim + 1);
    for (let k = 0; k < vis; k++) {
      const v = s1[so + k]! + s2[so + k]!;
      if (v > mt) mt = v;
    }
    if (vis <= 0) {
      p.fill(0, po, po + n);
      continue;
    }
    const mo = m[r]!;
    const mn = mo > mt ? mo : mt;
    if (mo !== -Infinity && mo !== mn) {
      const alpha = Math.exp(mo - mn);
      l[r] = l[r]! * alpha;
      for (let c = 0; c < C; c++) acc[r * C + c] = acc[r * C + c]! * alpha;
    }
    let sum = 0;
    for (let k = 0; k < vis; k++) {
      const e = Math.exp(s1[so + k]! + s2[so + k]! - mn);
      p[po + k] = e;
      sum += e;
    }
    p.fill(0, po + vis, po + n);
    l[r] = l[r]! + sum;
    m[r] = mn;
  }
}

describe('latent attention row kernels', () => {
  const memory = new WebAssembly.Memory({ initial: 64, maximum: 64 });
  const xp = new WebAssembly.Instance(new WebAssembly.Module(buildAttentionRowsModule(false, 64)), {
    env: { memory },
  }).exports as unknown as {
    scaleRows(src: number, dst: number, n: number, scaleAt: number): void;
    latentSoftmaxRows(...a: number[]): void;
    addRows(acc: number, o: number, rows: number, C: number, ldo: number): void;
    finishRows(out: number, acc: number, l: number, rows: number, C: number): void;
  };
  const buf = memory.buffer;
  /** Bump allocation from byte 64 (8-aligned regions), reset per case. */
  let top = 64;
  const take = (bytes: number) => {
    const at = top;
    top += Math.ceil(bytes / 16) * 16 + 16;
    return at;
  };
  const rng = new Rng(21);
  const fill = (a: Float32Array | Float64Array, amp: number) => {
    for (let i = 0; i < a.length; i++) a[i] = amp * (2 * rng.uniform() - 1);
    return a;
  };

  const cases: [string, number, number, number, number, number, number][] = [
    // name, rows, n, H, C, lim0, r0
    ['one tile, 8 heads, even keys', 24, 64, 8, 32, 40, 0],
    ['odd keys, odd C, rows past the tile', 13, 37, 3, 17, 20, 5],
    ['every row hidden (a later tile no row reaches)', 6, 12, 2, 8, -7, 0],
    ['a row sees one key', 5, 9, 4, 6, 0, 0],
  ];
  for (const [name, rows, n, H, C, lim0, r0] of cases)
    for (const state of ['first tile', 'running']) {
      it(`latentSoftmaxRows: ${name}, ${state}`, () => {
        top = 64;
        const ld = ((n + 7) >> 3) << 3;
        const at = {
          s1: take(rows * ld * 4),
          s2: take(rows * ld * 4),
          p: take(rows * n * 4),
          m: take(rows * 8),
          l: take(rows * 8),
          acc: take(rows * C * 8),
        };
        const view: Tile = {
          s1: fill(new Float32Array(buf, at.s1, rows * ld), 6) as Float32Array,
          s2: fill(new Float32Array(buf, at.s2, rows * ld), 2) as Float32Array,
          p: new Float32Array(buf, at.p, rows * n).fill(9),
          m: new Float64Array(buf, at.m, rows),
          l: new Float64Array(buf, at.l, rows),
          acc: fill(new Float64Array(buf, at.acc, rows * C), 3) as Float64Array,
        };
        if (state === 'first tile') {
          view.m.fill(-Infinity);
          view.l.fill(0);
        } else {
          // a running maximum below, equal to or above the tile's, and one row's scores NaN / −∞
          for (let r = 0; r < rows; r++) view.m[r] = [-3, 7.5, 1, -Infinity][r % 4]!;
          fill(view.l, 4);
          view.s1[ld + 1] = Number.NaN; // an odd lane
          if (rows > 3) view.s1[3 * ld + 2] = Number.NaN; // an even lane
          view.s1[2 * ld] = Number.NEGATIVE_INFINITY;
        }
        const ref: Tile = {
          s1: view.s1.slice(),
          s2: view.s2.slice(),
          p: view.p.slice(),
          m: view.m.slice(),
          l: view.l.slice(),
          acc: view.acc.slice(),
        };
        softmaxStepJs(ref, ld, n, rows, lim0, r0, H, C);
        xp.latentSoftmaxRows(at.s1, at.s2, at.p, ld, n, rows, lim0, r0, H, at.m, at.l, at.acc, C);
        for (const k of ['p', 'm', 'l', 'acc'] as const) expectSameBits(view[k], ref[k], k);
      });
    }

  it('scaleRows, addRows and finishRows: the loops they replace, bit for bit', () => {
    for (const [rows, C, ldo] of [
      [7, 13, 16],
      [4, 32, 32],
      [1, 1, 8],
    ] as const) {
      top = 64;
      const n = rows * C;
      const x = take(n * 4),
        sc = take(8),
        acc = take(n * 8),
        o = take(rows * ldo * 4),
        l = take(rows * 8),
        out = take(n * 4);
      const xv = fill(new Float32Array(buf, x, n), 5) as Float32Array;
      const scale = 1 / Math.sqrt(C + 0.3);
      new Float64Array(buf, sc, 1)[0] = scale;
      const want = xv.map((v) => v * scale);
      const copy = take(n * 4),
        before = xv.slice();
      xp.scaleRows(x, copy, n, sc); // into another row block, the source unchanged
      expectSameBits(new Float32Array(buf, copy, n), want, 'scaleRows into');
      expectSameBits(xv, before, 'scaleRows source');
      xp.scaleRows(x, x, n, sc);
      expectSameBits(xv, want, 'scaleRows');

      const accv = fill(new Float64Array(buf, acc, n), 2) as Float64Array;
      const ov = fill(new Float32Array(buf, o, rows * ldo), 2) as Float32Array;
      const sum = accv.slice();
      for (let r = 0; r < rows; r++) for (let c = 0; c < C; c++) sum[r * C + c] = sum[r * C + c]! + ov[r * ldo + c]!;
      xp.addRows(acc, o, rows, C, ldo);
      expectSameBits(accv, sum, 'addRows');

      const lv = new Float64Array(buf, l, rows);
      for (let r = 0; r < rows; r++) lv[r] = 0.5 + 3 * rng.uniform();
      const outv = new Float32Array(buf, out, n);
      const res = new Float32Array(n);
      for (let r = 0; r < rows; r++) {
        const inv = 1 / lv[r]!;
        for (let c = 0; c < C; c++) res[r * C + c] = accv[r * C + c]! * inv;
      }
      xp.finishRows(out, acc, l, rows, C);
      expectSameBits(outv, res, 'finishRows');
    }
  });
});
