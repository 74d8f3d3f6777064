// Kernel outputs from the free list (takeF32) in the GEMM engine's memory: placed there while it has
// room and the budget allows, host arrays otherwise; reused through the free list as host ones are;
// known by address (memoryKey), not by their shared buffer; poisoned when recycled in poison mode;
// returned to the engine when collected (a child process with --expose-gc); read in place by the
// products, background ones too (an in-place write runs those first; the free list holds the array back).
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import * as T from '../src/index.js';
import { expectSameBits } from '../src/testing.js';
import { CpuStorage } from '../src/cpu/backend.js';
import { gemmConfig } from '../src/cpu/gemm/config.js';
import { getEngine } from '../src/cpu/gemm/runtime.js';
import { isResident, sgemm, sgemmDeferred, sgemmMany, setGemmThreads } from '../src/cpu/gemm/index.js';
import { memoryKey, recycleStorage, setPoisonRecycled, takeF32, wholeMemory } from '../src/cpu/pool.js';
import { isResidentOutput, residentOutputStats } from '../src/cpu/resident-outputs.js';
import { arithF32, fillF32 } from '../src/cpu/arith-simd.js';
import { deferringPass, finishDeferred } from '../src/deferred.js';
import { exec } from '../src/ops/exec.js';
import { Rng } from '../src/rng.js';

const saved = { ...gemmConfig };
afterEach(() => {
  Object.assign(gemmConfig, saved);
  setPoisonRecycled(false);
});
afterAll(() => finishDeferred());
const rng = new Rng(4242);
/** A resident output of n elements holding uniform values. */
const residentRand = (n: number): Float32Array => {
  const a = takeF32(n);
  expect(isResidentOutput(a)).toBe(true);
  return rng.fillUniform(a, -1, 1) as Float32Array;
};
const bits = (a: Float32Array) => Array.from(new Uint32Array(a.slice().buffer));

describe('kernel outputs in the engine memory', () => {
  it('takeF32 places large outputs in the engine memory, small ones on the host; the free list hands a recycled one back', () => {
    setGemmThreads(2);
    const a = takeF32(8192);
    expect(isResidentOutput(a) && isResident(a)).toBe(true);
    expect(isResidentOutput(takeF32(100))).toBe(false); // below the free list's lower bound
    const s = new CpuStorage(a);
    expect(wholeMemory(s)).toBe(a.byteOffset);
    expect(recycleStorage(s, 0)).toBe(true);
    expect(recycleStorage(s, 0)).toBe(false); // never twice
    expect(takeF32(8192)).toBe(a);
  });

  it('known by address: a view shares its array key, two outputs never do, and only the whole array is recyclable', () => {
    const a = takeF32(8192);
    const b = takeF32(8192);
    const view = new CpuStorage(a.subarray(4096, 6000));
    expect(memoryKey(view)).toBe(memoryKey(new CpuStorage(a)));
    expect(memoryKey(new CpuStorage(b))).not.toBe(memoryKey(new CpuStorage(a)));
    // views of the one shared memory, which by-buffer keys would have taken for one array
    expect(a.buffer).toBeInstanceOf(SharedArrayBuffer);
    expect(b.buffer).toBeInstanceOf(SharedArrayBuffer);
    expect(wholeMemory(view)).toBeNull();
    expect(recycleStorage(view, 0)).toBe(false);
  });

  it('falls back to host arrays past the output budget and when the engine memory has no room', () => {
    gemmConfig.residentOutputBytes = residentOutputStats().bytes;
    const overBudget = takeF32(8192);
    expect(isResidentOutput(overBudget) || isResident(overBudget)).toBe(false);
    Object.assign(gemmConfig, saved);
    gemmConfig.residentHeadroom = 8 * 1024 ** 3; // more than the memory: no room for resident blocks
    const noRoom = takeF32(8192);
    expect(isResident(noRoom)).toBe(false);
    expect(noRoom.buffer.byteLength).toBe(8192 * 4);
    // outputs kept on the host: not even a recycled resident array is handed out
    gemmConfig.residentHeadroom = saved.residentHeadroom;
    const r = takeF32(8200);
    expect(isResidentOutput(r)).toBe(true);
    expect(recycleStorage(new CpuStorage(r), 0)).toBe(true);
    gemmConfig.residentOutputs = false;
    expect(isResident(takeF32(8200))).toBe(false);
    gemmConfig.residentOutputs = true;
    expect(takeF32(8200)).toBe(r);
  });

  it('elementwise + − × ÷ on resident operands run in place, bitwise the rounded f64 result (ragged lengths, scalars, o = a)', () => {
    for (const n of [4097, 5002, 8191, 12000]) {
      for (const op of ['add', 'sub', 'mul', 'div'] as const) {
        const f = {
          add: (x: number, y: number) => x + y,
          sub: (x: number, y: number) => x - y,
          mul: (x: number, y: number) => x * y,
          div: (x: number, y: number) => x / y,
        }[op];
        for (const [as, bs] of [
          [1, 1],
          [1, 0],
          [0, 1],
        ] as const) {
          const a = residentRand(n + 3);
          const b = residentRand(n + 5);
          const o = takeF32(n + 7).fill(9);
          expect(arithF32(op, a, 3, as, b, 5, bs, o, 7, n)).toBe(true);
          const want = Float32Array.from({ length: n }, (_, i) => f(as ? a[3 + i]! : a[3]!, bs ? b[5 + i]! : b[5]!));
          expectSameBits(o.subarray(7), want, 'o.subarray(7)', { nan: 'bits' });
          expect(Array.from(o.subarray(0, 7))).toEqual(new Array(7).fill(9));
        }
        // o = a, in place over itself
        const a = residentRand(n);
        const b = residentRand(n);
        const want = Float32Array.from({ length: n }, (_, i) => f(a[i]!, b[i]!));
        expect(arithF32(op, a, 0, 1, b, 0, 1, a, 0, n)).toBe(true);
        expectSameBits(a, want, 'a', { nan: 'bits' });
      }
    }
  });

  it('fills of resident outputs (SIMD in the engine memory) write exactly the range, as Float32Array.fill does', () => {
    for (const [n, from, to] of [
      [5000, 0, 5000],
      [5003, 3, 4999],
      [9000, 1, 300],
    ] as const) {
      for (const value of [0, 1, -2.5, 1e-40, Number.POSITIVE_INFINITY]) {
        const o = residentRand(n);
        const want = o.slice().fill(value, from, to);
        expect(fillF32(o, value, from, to)).toBe(o);
        expectSameBits(o, want, 'o', { nan: 'bits' });
      }
    }
    const host = new Float32Array(5000);
    expectSameBits(fillF32(host, 3), new Float32Array(5000).fill(3), 'fillF32(host, 3)', { nan: 'bits' });
  });

  it('a read of a resident output is a host copy with its values', () => {
    const x = T.tensor(rng.fillUniform(new Float32Array(8192), -1, 1), { shape: [64, 128] });
    const y = T.mul(x, 2);
    const d = (y.storage as CpuStorage).data;
    expect(isResidentOutput(d)).toBe(true);
    const read = y.dataSync() as Float32Array;
    expect(read.buffer).not.toBeInstanceOf(SharedArrayBuffer);
    expectSameBits(read, d as Float32Array, 'read', { nan: 'bits' });
    expectSameBits(T.cast(y, 'f32').dataSync() as Float32Array, read, 'arrays', { nan: 'bits' });
  });

  it('poison mode fills a recycled resident output with NaN', () => {
    const a = takeF32(8192).fill(3);
    expect(isResidentOutput(a)).toBe(true);
    setPoisonRecycled(true);
    expect(recycleStorage(new CpuStorage(a), 0)).toBe(true);
    expect(a.every(Number.isNaN)).toBe(true);
  });

  it('products read resident operands in place, bitwise the host copies (sgemm, sgemmMany, 1 and 2 threads)', () => {
    gemmConfig.threadMinWork = 0;
    for (const threads of [1, 2]) {
      setGemmThreads(threads);
      for (const [m, n, k] of [
        [200, 96, 130],
        [67, 99, 257],
        [1024, 64, 128],
      ] as const) {
        const a = residentRand(m * k);
        const b = residentRand(k * n);
        const host = new Float32Array(m * n);
        sgemm({ m, n, k, a: a.slice(), b: b.slice(), c: host });
        const c1 = new Float32Array(m * n);
        sgemm({ m, n, k, a, b, c: c1 });
        const g = residentRand(m * n);
        const c2 = new Float32Array(m * n);
        const c3 = new Float32Array(k * n);
        sgemmMany([
          { m, n, k, a, b, c: c2 },
          { m: k, n, k: m, a, transA: true, b: g, c: c3 }, // a weight gradient's shape: aᵀ·g
        ]);
        const ref3 = new Float32Array(k * n);
        sgemm({ m: k, n, k: m, a: a.slice(), transA: true, b: g.slice(), c: ref3 });
        expectSameBits(c1, host, 'c1', { nan: 'bits' });
        expectSameBits(c2, host, 'c2', { nan: 'bits' });
        expectSameBits(c3, ref3, 'c3', { nan: 'bits' });
      }
    }
  });

  it('resident C written in place (whole tiles) or through the scratch (ragged), bitwise; its pitch gap and the memory past it untouched', () => {
    gemmConfig.threadMinWork = 0;
    for (const threads of [1, 2]) {
      setGemmThreads(threads);
      for (const [m, n, k] of [
        [128, 64, 96], // whole 4 x 8 tiles: in place
        [130, 64, 96], // ragged rows
        [128, 60, 96], // ragged columns
      ] as const) {
        const ldc = n + 8;
        const a = residentRand(m * k);
        const b = residentRand(k * n);
        const g = residentRand(m * n);
        const want = new Float32Array(m * ldc).fill(7);
        sgemm({ m, n, k, a: a.slice(), b: b.slice(), c: want, ldc });
        const wantW = new Float32Array(k * n);
        sgemm({ m: k, n, k: m, a: a.slice(), transA: true, b: g.slice(), c: wantW });
        // C at an offset inside a resident array, a sentinel before and after it
        const cBig = takeF32(m * ldc + 64).fill(7);
        const wBig = takeF32(k * n + 64).fill(7);
        expect(isResidentOutput(cBig) && isResidentOutput(wBig)).toBe(true);
        sgemmMany([
          { m, n, k, a, b, c: cBig, cOffset: 32, ldc },
          { m: k, n, k: m, a, transA: true, b: g, c: wBig, cOffset: 32 },
        ]);
        expectSameBits(cBig.subarray(32, 32 + m * ldc), want, 'cBig.subarray(32, 32 + m * ldc)', { nan: 'bits' });
        expectSameBits(wBig.subarray(32, 32 + k * n), wantW, 'wBig.subarray(32, 32 + k * n)', { nan: 'bits' });
        for (const big of [cBig, wBig]) {
          expect(Array.from(big.subarray(0, 32))).toEqual(new Array(32).fill(7));
          expect(Array.from(big.subarray(big.length - 32))).toEqual(new Array(32).fill(7));
        }
        // a background product writing a resident C in place
        if (threads === 2) {
          const wDeferred = takeF32(k * n + 64).fill(7);
          deferringPass(() =>
            expect(sgemmDeferred({ m: k, n, k: m, a, transA: true, b: g, c: wDeferred, cOffset: 32 })).toBe(true),
          );
          expectSameBits(wDeferred.subarray(32, 32 + k * n), wantW, 'wDeferred.subarray(32, 32 + k * n)', {
            nan: 'bits',
          });
          expect(Array.from(wDeferred.subarray(wDeferred.length - 32))).toEqual(new Array(32).fill(7));
        }
      }
    }
  });

  it("sgemmMany refuses a product reading another one's output through a view of the grown memory", () => {
    const [m, n, k] = [64, 64, 64];
    const c = takeF32(m * n);
    // grow the memory: views made from now on have another buffer object over the same memory
    const big = takeF32((getEngine()!.arena.buffer().byteLength >> 2) + 1);
    expect(isResidentOutput(big)).toBe(true);
    const again = new Float32Array(getEngine()!.arena.buffer(), c.byteOffset, c.length);
    expect(again.buffer).not.toBe(c.buffer);
    const a = residentRand(m * k);
    expect(() =>
      sgemmMany([
        { m, n, k, a, b: residentRand(k * n), c },
        { m, n, k, a, b: again, c: takeF32(m * n) },
      ]),
    ).toThrow(/reads the output of product 0/);
  });

  it('background products read resident operands in place; an in-place write (addInPlace, scaleInPlace) runs them first, the free list holds such an array back until they ran', () => {
    setGemmThreads(2);
    const be = T.defaultBackend();
    const [m, n, k] = [320, 128, 1024];
    const wrapF32 = (a: Float32Array, shape: number[]) => new T.Tensor(be, new CpuStorage(a), shape, 'f32');
    for (const how of ['addInPlace', 'scaleInPlace', 'recycle'] as const) {
      const a = residentRand(k * m); // [k, m]: a gradient read transposed, as a weight gradient reads g
      const b = residentRand(k * n);
      const want = new Float32Array(m * n);
      sgemm({ m, n, k, a: a.slice(), transA: true, b: b.slice(), c: want });
      // Several products reading a: the worker runs them one by one, so the later ones are still
      // waiting when the caller writes a.
      const cs = Array.from({ length: 6 }, () => takeF32(m * n));
      setPoisonRecycled(true);
      deferringPass(() => {
        for (const c of cs) expect(sgemmDeferred({ m, n, k, a, transA: true, b, c })).toBe(true);
        const t = wrapF32(a, [k, m]);
        if (how === 'addInPlace') exec('addInPlace', [t, T.full([k, m], 1)], {});
        else if (how === 'scaleInPlace') exec('scaleInPlace', [t, T.full([1], -2)], {});
        else {
          // held back while read: the free list hands out another array, and a later one once the products ran
          expect(recycleStorage(t.storage, 0)).toBe(true);
          const next = takeF32(k * m).fill(Number.NaN);
          expect(next.byteOffset).not.toBe(a.byteOffset);
        }
      });
      for (const c of cs) expectSameBits(c, want, 'c', { nan: 'bits' });
      if (how === 'recycle') {
        const again = takeF32(k * m);
        expect(again).toBe(a);
        expect(again.every(Number.isNaN)).toBe(true); // poisoned when it joined the free list
      }
    }
  });

  it('a residual gradient accumulated in place while a weight gradient reads it in the background: bitwise one thread', () => {
    // h = u + u·W: the add hands h's gradient on unchanged to u and to the product; dW = uᵀ·g is
    // deferred reading g in place, then dU is summed into u's pending gradient — g's own buffer.
    const run = (threads: number) => {
      setGemmThreads(threads);
      const r = new Rng(21);
      const x = T.tensor(r.fillUniform(new Float32Array(1024 * 256), -1, 1) as Float32Array, {
        shape: [1024, 256],
      }).requireGrad();
      const c = T.tensor(r.fillUniform(new Float32Array(1024 * 256), -1, 1) as Float32Array, { shape: [1024, 256] });
      const ws = [0, 1, 2, 3].map(() =>
        T.tensor(r.fillUniform(new Float32Array(256 * 256), -0.1, 0.1) as Float32Array, {
          shape: [256, 256],
        }).requireGrad(),
      );
      const u = T.mul(x, c);
      const h = ws.reduce((s, w) => T.add(s, T.matmul(u, w)), u);
      T.sum(T.mul(h, c)).backward();
      return [...ws, x].map((t) => bits(t.grad!.rawSync() as Float32Array));
    };
    const [two, one] = [run(2), run(1)];
    two.forEach((g, i) => expectSameBits(g, one[i]!, `gradient ${i} bits`));
  });

  it('a training step through Linear layers gives the same bits with outputs resident or on the host', () => {
    setGemmThreads(2);
    const run = (resident: boolean) => {
      gemmConfig.residentOutputs = resident;
      const r = new Rng(9);
      const x = T.tensor(r.fillUniform(new Float32Array(256 * 96), -1, 1), { shape: [256, 96] });
      const w1 = T.tensor(r.fillUniform(new Float32Array(160 * 96), -0.1, 0.1), { shape: [160, 96] }).requireGrad();
      const w2 = T.tensor(r.fillUniform(new Float32Array(96 * 160), -0.1, 0.1), { shape: [96, 160] }).requireGrad();
      const loss = T.recyclingScope(
        () => {
          const h = T.silu(T.matmul(x, T.transpose(w1, 0, 1)));
          const y = T.matmul(h, T.transpose(w2, 0, 1));
          const l = T.sum(T.mul(y, y));
          l.backward();
          return l;
        },
        { keep: [w1, w2] },
      );
      return [loss, w1.grad!, w2.grad!].map((t) => bits(t.dataSync() as Float32Array));
    };
    const [recycled, plain] = [run(true), run(false)];
    recycled.forEach((g, i) => expectSameBits(g, plain[i]!, `output ${i} bits`));
  });

  it('a block goes back to the engine when its array is collected; one the free list holds stays (child, --expose-gc)', async () => {
    const { execFileSync } = await import('node:child_process');
    const { join } = await import('node:path');
    const child = join(import.meta.dirname, 'child/resident-output-gc.ts');
    const out = execFileSync(process.execPath, ['--expose-gc', '--conditions=@dsv3/source', '--import', 'tsx', child], {
      encoding: 'utf8',
      timeout: 60_000,
    });
    const r = JSON.parse(out.trim().split('\n').at(-1)!);
    expect(r.allResident).toBe(true);
    expect(r.held.blocks - r.before.blocks).toBe(20);
    // 20 collected, the recycled one alive: the arena holds one block more than before
    expect(r.after.blocks - r.before.blocks).toBe(1);
    expect(r.after.bytes - r.before.bytes).toBe(65536 * 4);
    expect(r.after.used - r.before.used).toBe(65536 * 4);
    expect(r.keptReused).toBe(true);
  }, 90_000);
});
