// The WebGPU kernels of @dsv3/fp8 against the CPU (on lavapipe where there is no GPU): quantization
// bit-exact (goldens, rounding ties, ragged shapes, UE8M0), dequantization bit-exact, the block GEMM
// within 1e-6 of the exact goldens (f32 and f16 workgroup tiles, word and byte loads, ragged K, row
// scales, E5M2), FP8Linear forward/backward, and non-finite input reporting.
import { relativeError } from '@dsv3/core/testing';
import { afterAll, describe, expect, it } from 'vitest';
import { fromRaw, randn, sum, mul, Linear, type Tensor } from '@dsv3/core';
import {
  E4M3_LUT,
  FP8Linear,
  activationScale,
  transpose2d,
  weightScale,
  checkFp8Errors,
  enableFp8SubgroupMatrix,
  dequantizeActivationT,
  dequantizeWeightT,
  fp8GemmBlockScaledT,
  quantizeActivationT,
  quantizeActivationTransposedT,
  quantizeWeightT,
  type QuantizeOptions,
} from '../src/index';
import { f32, mismatches, u8 } from './goldens';
import { acquireGpu, on } from './webgpu-helpers';

const gpu = await acquireGpu();
afterAll(() => gpu?.dispose());

const f32T = (shape: number[], data: Float32Array): Tensor => fromRaw('f32', shape, data);
const cpuBytes = (t: Tensor): Uint8Array => t.rawSync() as Uint8Array;
const cpuFloats = (t: Tensor): Float32Array => t.rawSync() as Float32Array;

const fb = new Float32Array(1);
const ub = new Uint32Array(fb.buffer);
function nextF32(x: number, dir: 1 | -1): number {
  fb[0] = x;
  ub[0] = ub[0]! + dir;
  return fb[0]!;
}

/**
 * Rows of 128 led by `amax`, holding for every E4M3 rounding midpoint m the f32 values nearest to
 * m * s (and their f32 neighbours), s being the scale the quantizer will derive from amax: so x / s
 * falls within a few ulp of a midpoint and only a correctly rounded x / s gives the CPU's byte.
 * Both signs; plus zeros, -0 and tiny values.
 */
function tieRows(amax: number, scale: number): { data: Float32Array; rows: number } {
  const pos = [...new Set(Array.from(E4M3_LUT).filter((v) => v >= 0 && v <= 448))].sort((a, b) => a - b);
  const vals: number[] = [];
  for (let i = 0; i + 1 < pos.length; i++) {
    const x0 = Math.fround(((pos[i]! + pos[i + 1]!) / 2) * scale);
    for (const x of [x0, nextF32(x0, 1), nextF32(nextF32(x0, 1), 1), nextF32(x0, -1), nextF32(nextF32(x0, -1), -1)])
      if (x > 0 && x <= amax) vals.push(x);
  }
  vals.push(0, -0, 1e-30, Math.fround(2 ** -10 * scale), Math.fround(amax * 0.999));
  const all = [...vals, ...vals.map((v) => -v)];
  const rows = Math.ceil(all.length / 127);
  const data = new Float32Array(rows * 128);
  for (let r = 0; r < rows; r++) {
    data[r * 128] = r % 2 ? -amax : amax;
    for (let j = 0; j < 127; j++) data[r * 128 + 1 + j] = all[r * 127 + j] ?? 0;
  }
  return { data, rows };
}

/** Normal values times 10^U(-6, 3): a wide dynamic range per tile. */
function wide(n: number, seed: number): Float32Array {
  const x = cpuFloats(randn([n], { seed }));
  const u = cpuFloats(randn([n], { seed: seed + 1 }));
  return x.map((v, i) => v * 10 ** (-1.5 + 1.5 * u[i]!));
}

async function expectSameBits(g: Tensor, c: Tensor, what: string): Promise<void> {
  expect(g.dtype, what).toBe(c.dtype);
  expect([...g.shape], what).toEqual([...c.shape]);
  const gr = await g.raw();
  const cr = c.rawSync();
  const bad = mismatches(gr, cr);
  expect(
    bad.slice(0, 5).map((i) => `[${i}] gpu ${gr[i]} cpu ${cr[i]}`),
    `${what}: ${bad.length} mismatches`,
  ).toEqual([]);
}

describe.skipIf(!gpu)('@dsv3/fp8 WebGPU kernels vs CPU', () => {
  const be = gpu!;

  it('reports the adapter and features used', () => {
    const info = be.adapterInfo;
    console.log(
      `[fp8 webgpu] adapter: ${[info.vendor, info.architecture, info.device, info.description].filter(Boolean).join(' / ')}${info.isFallbackAdapter ? ' [fallback]' : ''}; shader-f16 ${be.features.shaderF16}, subgroup-matrix ${be.features.subgroupMatrix}`,
    );
    expect(be.name).toBe('webgpu');
  });

  describe('quantization is bit-exact', () => {
    async function same(
      name: string,
      f: (x: Tensor, o?: QuantizeOptions) => { q: Tensor; scales: Tensor },
      x: Tensor,
      o?: QuantizeOptions,
    ): Promise<void> {
      const c = f(x, o);
      const g = f(on(x, be), o);
      await expectSameBits(g.scales, c.scales, `${name} scales ${JSON.stringify(o ?? {})} [${x.shape}]`);
      await expectSameBits(g.q, c.q, `${name} bytes ${JSON.stringify(o ?? {})} [${x.shape}]`);
    }

    it('act_quant goldens (fp32 and UE8M0 scales)', async () => {
      const x = on(f32T([64, 512], f32('k.act_quant.x')), be);
      const r = quantizeActivationT(x);
      expect(mismatches(await r.q.raw(), u8('k.act_quant.y'))).toEqual([]);
      expect(mismatches(await r.scales.raw(), f32('k.act_quant.s'))).toEqual([]);
      const u = quantizeActivationT(x, { scaleFormat: 'ue8m0' });
      expect(mismatches(await u.q.raw(), u8('k.act_quant_ue8m0.y'))).toEqual([]);
      expect(mismatches(await u.scales.raw(), f32('k.act_quant_ue8m0.s'))).toEqual([]);
    });

    it('golden weight operands (128x128 blocks)', async () => {
      for (const [n, k] of [
        [384, 512],
        [256, 4096],
      ] as const) {
        const key = `k.gemm.${n === 384 ? 64 : 32}x${n}x${k}`;
        const r = quantizeWeightT(on(f32T([n, k], f32(`${key}.w_f32`)), be));
        expect(mismatches(await r.q.raw(), u8(`${key}.b`))).toEqual([]);
        expect(mismatches(await r.scales.raw(), f32(`${key}.bs`))).toEqual([]);
      }
    });

    it('x / s within a few ulp of every E4M3 rounding midpoint (correctly rounded division, ties to even)', async () => {
      for (const amax of [448, 300.7, 3.3e-3, 1234567]) {
        // activation rule, then weight rule (the weight test sees one 128x128 block per 128 rows)
        const act = tieRows(amax, activationScale(amax));
        await same('quantizeActivationT', quantizeActivationT, f32T([act.rows, 128], act.data));
        await same(
          'quantizeActivationTransposedT',
          quantizeActivationTransposedT,
          f32T([128, act.rows], transpose2d(act.data, act.rows, 128)),
        );
        const w = tieRows(amax, weightScale(amax));
        await same('quantizeWeightT', quantizeWeightT, f32T([w.rows, 128], w.data));
        // power-of-two scales: x / s exact, so the values sit on the midpoints themselves
        const u = tieRows(amax, activationScale(amax, 'ue8m0'));
        await same('quantizeActivationT', quantizeActivationT, f32T([u.rows, 128], u.data), { scaleFormat: 'ue8m0' });
      }
    });

    it('wide dynamic range, ragged shapes, other block sizes', async () => {
      for (const shape of [
        [3, 7, 300],
        [130, 257],
        [1, 5],
      ]) {
        const n = shape.reduce((a, b) => a * b, 1);
        const x = f32T(shape, wide(n, shape[0]!));
        await same('quantizeActivationT', quantizeActivationT, x);
        await same('quantizeActivationT', quantizeActivationT, x, { block: 32, scaleFormat: 'ue8m0' });
        if (shape.length === 2) {
          await same('quantizeActivationTransposedT', quantizeActivationTransposedT, x);
          await same('quantizeWeightT', quantizeWeightT, x);
          await same('quantizeWeightT', quantizeWeightT, x, { block: 64, amaxFloor: 1e-2 });
        }
      }
    });

    it('dequantization', async () => {
      const x = f32T([130, 257], wide(130 * 257, 9));
      const a = quantizeActivationT(x);
      await expectSameBits(
        dequantizeActivationT(on(a.q, be), on(a.scales, be)),
        dequantizeActivationT(a.q, a.scales),
        'dequantizeActivationT',
      );
      const w = quantizeWeightT(x);
      await expectSameBits(
        dequantizeWeightT(on(w.q, be), on(w.scales, be)),
        dequantizeWeightT(w.q, w.scales),
        'dequantizeWeightT',
      );
    });
  });

  describe('block-scaled GEMM', () => {
    const variants = [
      { name: 'f32 tiles', f16: false },
      ...(be.features.shaderF16 ? [{ name: 'f16 tiles (shader-f16)', f16: true }] : []),
    ];

    for (const v of variants) {
      const webgpu = { f16: v.f16 };
      it.each([
        [64, 384, 512],
        [32, 256, 4096],
      ] as const)(`${v.name}: k.gemm.%ix%ix%i within 1e-6 of exact`, async (m, n, k) => {
        {
          const key = `k.gemm.${m}x${n}x${k}`;
          const c = fp8GemmBlockScaledT(
            fromRaw('fp8-e4m3', [m, k], u8(`${key}.a`), be),
            fromRaw('f32', [m, k / 128], f32(`${key}.as`), be),
            fromRaw('fp8-e4m3', [n, k], u8(`${key}.b`), be),
            fromRaw('f32', [n / 128, k / 128], f32(`${key}.bs`), be),
            { webgpu },
          );
          const out = (await c.data()) as Float32Array;
          const err = relativeError(out, f32(`${key}.exact`));
          console.log(
            `[fp8 webgpu gemm ${v.name}] ${key}: relative L2 vs exact ${err.toExponential(2)} (vs DeepSeek's Triton kernel ${relativeError(out, f32(`${key}.official`)).toExponential(2)})`,
          );
          expect(err).toBeLessThanOrEqual(1e-6);
        }
      });

      it(`${v.name}: ragged K (byte loads), ragged M/N, large and small tiles, row scales, leading dims, E5M2 — vs the CPU exact path`, async () => {
        {
          for (const [m, n, k] of [
            [17, 130, 200],
            [33, 70, 130],
            [5, 3, 7],
            // >= 8 output tiles of 128x128: the large-tile kernel (8x8 per thread, BK 16)
            [300, 390, 200],
            [390, 300, 130],
          ] as const) {
            const a = quantizeActivationT(randn([m, k], { seed: m }));
            const w = quantizeWeightT(randn([n, k], { seed: n }));
            const r = quantizeActivationT(randn([n, k], { seed: k }));
            for (const [b, bs, layout] of [
              [w.q, w.scales, 'block'],
              [r.q, r.scales, 'row'],
            ] as const) {
              const ref = cpuFloats(fp8GemmBlockScaledT(a.q, a.scales, b, bs, { bScaleLayout: layout, exact: true }));
              const g = fp8GemmBlockScaledT(on(a.q, be), on(a.scales, be), on(b, be), on(bs, be), {
                bScaleLayout: layout,
                webgpu,
              });
              expect(
                relativeError((await g.data()) as Float32Array, ref),
                `${m}x${n}x${k} ${layout}`,
              ).toBeLessThanOrEqual(1e-6);
            }
          }
          // leading dims
          const a = quantizeActivationT(randn([2, 3, 256], { seed: 1 }));
          const w = quantizeWeightT(randn([40, 256], { seed: 2 }));
          const g = fp8GemmBlockScaledT(on(a.q, be), on(a.scales, be), on(w.q, be), on(w.scales, be), { webgpu });
          expect([...g.shape]).toEqual([2, 3, 40]);
          expect(
            relativeError(
              (await g.data()) as Float32Array,
              cpuFloats(fp8GemmBlockScaledT(a.q, a.scales, w.q, w.scales, { exact: true })),
            ),
          ).toBeLessThanOrEqual(1e-6);
          // E5M2 operands (finite bytes only)
          const e5 = (n: number, seed: number): Tensor => {
            const q = u8('k.gemm.64x384x512.a')
              .slice(seed, seed + n)
              .map((x) => x & 0xbb);
            return fromRaw('fp8-e5m2', [n / 256, 256], q);
          };
          const ea = e5(8 * 256, 0);
          const eb = e5(16 * 256, 5);
          const sa = f32T([8, 2], new Float32Array(16).fill(0.5));
          const sb = f32T([1, 2], new Float32Array([0.25, 2]));
          const ref = cpuFloats(fp8GemmBlockScaledT(ea, sa, eb, sb, { exact: true }));
          const ge = fp8GemmBlockScaledT(on(ea, be), on(sa, be), on(eb, be), on(sb, be), { webgpu });
          expect(relativeError((await ge.data()) as Float32Array, ref)).toBeLessThanOrEqual(1e-6);
        }
      });
    }

    it('subgroup-matrix path: off without the feature; its tiling/promotion skeleton (builtins emulated) matches the tiled kernel', async () => {
      const status = await enableFp8SubgroupMatrix(be);
      console.log(`[fp8 webgpu] subgroup-matrix FP8 GEMM: ${status}`);
      if (!be.features.subgroupMatrix) expect(status).toMatch(/^unavailable/);
      if (!be.features.shaderF16) return;
      for (const config of [
        { M: 16, N: 16, K: 16 },
        { M: 8, N: 8, K: 8 },
      ]) {
        for (const [m, n, k] of [
          [64, 96, 256],
          [33, 45, 300],
        ] as const) {
          const a = quantizeActivationT(randn([m, k], { seed: m }));
          const w = quantizeWeightT(randn([n, k], { seed: n }));
          const ref = cpuFloats(fp8GemmBlockScaledT(a.q, a.scales, w.q, w.scales, { exact: true }));
          const g = fp8GemmBlockScaledT(on(a.q, be), on(a.scales, be), on(w.q, be), on(w.scales, be), {
            webgpu: { emulateSubgroupMatrix: config },
          });
          expect(
            relativeError((await g.data()) as Float32Array, ref),
            `${JSON.stringify(config)} ${m}x${n}x${k}`,
          ).toBeLessThanOrEqual(1e-6);
        }
      }
    });

    it('propagates NaN bytes to their row/column', async () => {
      const a = quantizeActivationT(randn([4, 128], { seed: 1 }));
      const w = quantizeWeightT(randn([6, 128], { seed: 2 }));
      const qa = cpuBytes(a.q).slice();
      qa[128 + 5] = 0x7f;
      const c = (await fp8GemmBlockScaledT(
        fromRaw('fp8-e4m3', [4, 128], qa, be),
        on(a.scales, be),
        on(w.q, be),
        on(w.scales, be),
      ).data()) as Float32Array;
      for (let j = 0; j < 6; j++) {
        expect(Number.isNaN(c[6 + j]!)).toBe(true);
        expect(Number.isFinite(c[j]!)).toBe(true);
      }
    });
  });

  describe('FP8Linear on WebGPU', () => {
    it('forward and backward match the CPU layer (same quantization, GEMM rounding only)', async () => {
      const [IN, OUT] = [256, 200];
      const ref = new Linear(IN, OUT, { seed: 5, bias: true });
      const cpuL = new FP8Linear(IN, OUT, { bias: true });
      cpuL.loadStateDict(ref.stateDict());
      const gpuL = new FP8Linear(IN, OUT, { bias: true, backend: be });
      gpuL.loadStateDict(Object.fromEntries(Object.entries(ref.stateDict()).map(([k, v]) => [k, on(v, be)])));
      const x = randn([3, 50, IN], { seed: 6 });
      const g = randn([3, 50, OUT], { seed: 7 });
      const run = async (layer: FP8Linear, xx: Tensor, gg: Tensor) => {
        const xl = xx.detach().requireGrad();
        const y = layer.forward(xl);
        sum(mul(y, gg)).backward();
        return {
          y: (await y.detach().data()) as Float32Array,
          dx: (await xl.grad!.data()) as Float32Array,
          dw: (await layer.weight!.grad!.data()) as Float32Array,
          db: (await layer.bias!.grad!.data()) as Float32Array,
        };
      };
      const c = await run(cpuL, x, g);
      const gg = await run(gpuL, on(x, be), on(g, be));
      const err = {
        y: relativeError(gg.y, c.y),
        dx: relativeError(gg.dx, c.dx),
        dw: relativeError(gg.dw, c.dw),
        db: relativeError(gg.db, c.db),
      };
      console.log(
        `[fp8 webgpu FP8Linear] relative L2 vs CPU FP8Linear: y ${err.y.toExponential(2)}, dX ${err.dx.toExponential(2)}, dW ${err.dw.toExponential(2)}, db ${err.db.toExponential(2)}`,
      );
      for (const [k, e] of Object.entries(err)) expect(e, k).toBeLessThanOrEqual(1e-5);
    });

    it('W8A8 fromCheckpoint on the GPU', async () => {
      const layer = new FP8Linear(384, 130, { seed: 8 });
      const ck = layer.toCheckpoint();
      const inf = FP8Linear.fromCheckpoint(on(ck.weight, be), on(ck.weight_scale_inv, be));
      const x = randn([9, 384], { seed: 9 });
      const y = (await inf.forward(on(x, be)).data()) as Float32Array;
      expect(relativeError(y, cpuFloats(layer.forward(x)))).toBeLessThanOrEqual(1e-6);
    });
  });

  describe('bad input on WebGPU', () => {
    it('NaN / Infinity: NaN scales and bytes in the affected tiles, reported by checkFp8Errors', async () => {
      await checkFp8Errors(be);
      const x = new Float32Array(3 * 256).fill(0.25);
      x[130] = NaN;
      x[600] = -Infinity;
      const r = quantizeActivationT(fromRaw('f32', [3, 256], x, be));
      const s = (await r.scales.data()) as Float32Array;
      expect([...s].map((v) => Number.isNaN(v))).toEqual([false, true, false, false, true, false]);
      const q = (await r.q.raw()) as Uint8Array;
      expect(q[130]! & 0x7f).toBe(0x7f);
      expect(q[0]).toBe(cpuBytes(quantizeActivationT(f32T([1, 128], new Float32Array(128).fill(0.25))).q)[0]);
      await expect(checkFp8Errors(be)).rejects.toThrow(/non-finite input \(NaN or ±Infinity\) in quantizeAct/);
      await expect(checkFp8Errors(be)).resolves.toBeUndefined();
      quantizeWeightT(fromRaw('f32', [3, 256], x, be));
      await expect(checkFp8Errors(be)).rejects.toThrow(/in quantizeWeight/);
    });

    it('shape errors are raised before anything is dispatched', () => {
      const a = quantizeActivationT(on(randn([8, 256], { seed: 1 }), be));
      const w = quantizeWeightT(on(randn([64, 256], { seed: 2 }), be));
      expect(() => fp8GemmBlockScaledT(a.q, w.scales, w.q, w.scales)).toThrow(
        /aScale has shape \[1, 2\], expected \[8, 2\]/,
      );
      expect(() => fp8GemmBlockScaledT(a.q, a.scales, w.q, randn([1, 2], { seed: 1 }))).toThrow(/different backends/);
    });
  });
});
