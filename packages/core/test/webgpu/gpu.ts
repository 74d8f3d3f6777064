// Shared setup of the WebGPU tests: one backend per test file (Dawn through the `webgpu` package,
// on lavapipe in CI). Without an adapter the suites skip with a visible warning, unless
// DSV3_REQUIRE_WEBGPU=1, in which case they fail.
import { relativeError } from '../../src/testing.js';
import { expect } from 'vitest';
import { type NodeWebGpuOptions, type WebGpuBackend, webGpuForTests } from '../../src/node.js';
import { cpu, fromRaw, Rng, type Backend, type DType, type KernelTensor, type Tensor } from '../../src/index.js';
import { exec } from '../../src/ops/exec.js';
import { fromNumeric, toNumeric } from '../../src/dtype.js';

/** A backend, or null (with a warning) when no adapter is usable and DSV3_REQUIRE_WEBGPU is not set. */
export const acquireGpu = (opts: NodeWebGpuOptions = {}): Promise<WebGpuBackend | null> => webGpuForTests('core', opts);

/** Random values in [lo, hi), never all zero. */
export function rnd(n: number, seed: number, lo = -1, hi = 1): Float64Array {
  const r = new Rng(seed);
  const a = new Float64Array(n);
  for (let i = 0; i < n; i++) a[i] = lo + (hi - lo) * r.uniform();
  return a;
}

/** Random integers in [lo, hi). */
export function rint(n: number, seed: number, lo: number, hi: number): Int32Array {
  const r = new Rng(seed);
  const a = new Int32Array(n);
  for (let i = 0; i < n; i++) a[i] = r.integer(lo, hi);
  return a;
}

/** Relative L2 error; NaN and ±Infinity must match in place and value (see relativeError's nonFinite). */
export function relErr(a: ArrayLike<number>, b: ArrayLike<number>): number {
  return relativeError(a, b, { nonFinite: 'match' });
}

const size = (s: readonly number[]): number => s.reduce((a, b) => a * b, 1);

/** A CPU tensor from numbers (encoded to dtype like the CPU encodes computed values). */
export function cpuT(dtype: DType, shape: number[], values: ArrayLike<number>): Tensor {
  if (values.length !== size(shape)) throw new Error(`test bug: ${values.length} values for [${shape}]`);
  return fromRaw(dtype, shape, fromNumeric(dtype, Array.from(values)), cpu);
}

/** Moves a CPU tensor to the backend (raw bits). */
export function toGpu(t: Tensor, be: Backend): Tensor {
  return fromRaw(t.dtype, t.shape, t.rawSync(), be);
}

export interface CompareOpts {
  /** compare raw bits exactly */
  exact?: boolean;
  /** relative L2 tolerance on decoded values (default 1e-5; f16/bf16 outputs default 2e-3) */
  tol?: number;
}

/** Runs primitive `op` on the CPU and on `be` from the same inputs and compares every output. */
export async function compareOp(
  be: Backend,
  op: string,
  inputs: Tensor[],
  attrs: unknown,
  opts: CompareOpts = {},
): Promise<void> {
  const t0 = performance.now();
  try {
    await compareOpInner(be, op, inputs, attrs, opts);
  } finally {
    if (process.env.DSV3_WEBGPU_TIMING)
      console.log(
        `${op} ${JSON.stringify(attrs)} [${inputs.map((t) => `${t.dtype}[${t.shape}]`).join(', ')}]: ${(performance.now() - t0).toFixed(0)} ms`,
      );
  }
}

async function compareOpInner(
  be: Backend,
  op: string,
  inputs: Tensor[],
  attrs: unknown,
  opts: CompareOpts,
): Promise<void> {
  const outC = exec(op, inputs, attrs, cpu);
  const outG = exec(
    op,
    inputs.map((t) => toGpu(t, be)),
    attrs,
    be,
  );
  expect(outG.length).toBe(outC.length);
  for (let k = 0; k < outC.length; k++) {
    const c = outC[k]!;
    const g = outG[k]!;
    const what = `${op} ${JSON.stringify(attrs)} output ${k} (${c.dtype} [${c.shape}])`;
    expect(g.dtype, what).toBe(c.dtype);
    expect([...g.shape], what).toEqual([...c.shape]);
    const gr = await g.raw();
    const cr = c.rawSync();
    if (opts.exact) {
      const bits = (a: typeof gr): ArrayLike<number> =>
        a instanceof Float32Array ? new Uint32Array(a.buffer, a.byteOffset, a.length) : a;
      const gb = bits(gr);
      const cb = bits(cr);
      // NaNs from arithmetic may differ in sign/payload between devices; any NaN matches any NaN.
      const gn = toNumeric(g.dtype, gr);
      const cn = toNumeric(c.dtype, cr);
      const bothNaN = (i: number): boolean => Number.isNaN(gn[i]!) && Number.isNaN(cn[i]!);
      const mism: string[] = [];
      for (let i = 0; i < cb.length && mism.length < 5; i++)
        if (gb[i] !== cb[i] && !bothNaN(i)) mism.push(`[${i}] gpu ${gr[i]} (${gb[i]}) cpu ${cr[i]} (${cb[i]})`);
      expect(mism, `${what}: raw bits differ`).toEqual([]);
      continue;
    }
    const tol = opts.tol ?? (c.dtype === 'f16' || c.dtype === 'bf16' ? 2e-3 : 1e-5);
    const err = relErr(toNumeric(g.dtype, gr), toNumeric(c.dtype, cr));
    expect(err, `${what}: relative error`).toBeLessThanOrEqual(tol);
  }
}

export type { KernelTensor };
