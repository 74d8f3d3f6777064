// CPU kernels of the FP8 ops: thin wrappers around this package's typed-array functions, so the
// CPU results are by construction those of the golden-tested layer.
//
// FAST GEMM. 'fp8.blockGemm' decodes both operands to f32 with their scales folded in per 128-wide
// K block (a[m, k] * aScale[m, k/128], b[n, k] * bScale[n/128 | n, k/128]) and runs ONE f32 GEMM
// over the whole K through core's registered 'matmul' kernel (the WASM SIMD sgemm). That is the
// block-scaled product with each block's scales applied to its operands instead of to its partial
// sum — the same sum in exact arithmetic; in f32 each scaled operand is rounded (<= 2^-24 relative)
// and the K-long sum is accumulated in f32: ~3e-7 relative L2 from the exact product (≤ 1e-6
// asserted on the goldens), at the f32 GEMM's speed. `exact: true` runs the reference kernel instead
// (f64 sum per K block, which is exact for E4M3, promoted in f64; ~4e-8; JS speed).
import { CpuStorage, cpu, runKernel, type Backend, type DType, type Kernel, type KernelTensor } from '@dsv3/core';
import {
  activationScale,
  dequantizeActivation,
  dequantizeWeight,
  quantizeActivation,
  quantizeActivationTransposed,
  quantizeWeight,
} from '../quant';
import { dequantizeGemmOperands, fp8GemmBlockScaled } from '../gemm';
import type { Fp8Format } from '../codec/common';
import { decodeTable } from '../codec/index';
import {
  FP8_OPS,
  type DequantAttrs,
  type GemmAttrs,
  type GroupedGemmAttrs,
  type GroupedWgradAttrs,
  type QuantAttrs,
} from './attrs';

function data(t: KernelTensor): ArrayBufferView {
  return (t.storage as CpuStorage).data;
}

function f32In(op: string, t: KernelTensor): Float32Array {
  const d = data(t);
  if (t.dtype !== 'f32' || !(d instanceof Float32Array))
    throw new TypeError(`${op}: expected an f32 tensor, got ${t.dtype}`);
  return d;
}

function fp8In(op: string, t: KernelTensor): Uint8Array {
  const d = data(t);
  if ((t.dtype !== 'fp8-e4m3' && t.dtype !== 'fp8-e5m2') || !(d instanceof Uint8Array))
    throw new TypeError(`${op}: expected an fp8 tensor, got ${t.dtype}`);
  return d;
}

export function fp8Format(dtype: DType): Fp8Format {
  return dtype === 'fp8-e5m2' ? 'e5m2' : 'e4m3';
}

function out(dtype: DType, shape: readonly number[], arr: Float32Array | Uint8Array): KernelTensor {
  return { storage: new CpuStorage(arr), shape: [...shape], dtype };
}

const lead = (shape: readonly number[]): number[] => shape.slice(0, -1);

function quantizeActCpu(_b: Backend, [x]: KernelTensor[], a: QuantAttrs): KernelTensor[] {
  const r = quantizeActivation(f32In('quantizeActivation', x!), x!.shape, a);
  return [out('fp8-e4m3', x!.shape, r.q), out('f32', [...lead(x!.shape), r.scaleShape[1]!], r.scales)];
}

function quantizeActTCpu(_b: Backend, [x]: KernelTensor[], a: QuantAttrs): KernelTensor[] {
  const r = quantizeActivationTransposed(f32In('quantizeActivationTransposed', x!), x!.shape, a);
  return [out('fp8-e4m3', r.shape, r.q), out('f32', r.scaleShape, r.scales)];
}

function quantizeWeightCpu(_b: Backend, [w]: KernelTensor[], a: QuantAttrs): KernelTensor[] {
  const r = quantizeWeight(f32In('quantizeWeight', w!), w!.shape, a);
  return [out('fp8-e4m3', r.shape, r.q), out('f32', r.scaleShape, r.scales)];
}

function dequantizeActCpu(_b: Backend, [q, s]: KernelTensor[], a: DequantAttrs): KernelTensor[] {
  const bytes = fp8In('dequantizeActivation', q!);
  const scales = f32In('dequantizeActivation', s!);
  if (q!.dtype === 'fp8-e4m3') return [out('f32', q!.shape, dequantizeActivation(bytes, scales, q!.shape, a))];
  // E5M2: same tiles, other table
  const lut = decodeTable('e5m2');
  const cols = q!.shape[q!.shape.length - 1]!;
  const nb = Math.ceil(cols / a.block);
  const r = new Float32Array(bytes.length);
  for (let i = 0; i < bytes.length; i++) {
    const row = (i / cols) | 0;
    r[i] = lut[bytes[i]!]! * scales[row * nb + (((i - row * cols) / a.block) | 0)]!;
  }
  return [out('f32', q!.shape, r)];
}

function dequantizeWeightCpu(_b: Backend, [q, s]: KernelTensor[], a: DequantAttrs): KernelTensor[] {
  if (q!.dtype !== 'fp8-e4m3') throw new TypeError(`dequantizeWeight: expected fp8-e4m3 weights, got ${q!.dtype}`);
  return [
    out('f32', q!.shape, dequantizeWeight(fp8In('dequantizeWeight', q!), f32In('dequantizeWeight', s!), q!.shape, a)),
  ];
}

function blockGemmCpu(_b: Backend, [a, as, b, bs]: KernelTensor[], attrs: GemmAttrs): KernelTensor[] {
  const k = a!.shape[a!.shape.length - 1]!;
  const m = a!.shape.length === 1 ? 1 : a!.shape.slice(0, -1).reduce((p, d) => p * d, 1);
  const n = b!.shape[0]!;
  const opts = {
    block: attrs.block,
    bScaleLayout: attrs.bScaleLayout,
    aFormat: fp8Format(a!.dtype),
    bFormat: fp8Format(b!.dtype),
  };
  const A = fp8In('fp8GemmBlockScaled', a!);
  const As = f32In('fp8GemmBlockScaled', as!);
  const B = fp8In('fp8GemmBlockScaled', b!);
  const Bs = f32In('fp8GemmBlockScaled', bs!);
  if (attrs.exact || m === 0 || n === 0 || k === 0) {
    return [out('f32', [m, n], fp8GemmBlockScaled(A, As, B, Bs, m, n, k, opts))];
  }
  const { ad, bd } = dequantizeGemmOperands(A, As, B, Bs, m, n, k, opts);
  // core's f32 matmul kernel (WASM SIMD sgemm): C = ad · bd^T
  const [c] = runKernel('matmul', cpu, [out('f32', [m, k], ad), out('f32', [n, k], bd)], {
    transA: false,
    transB: true,
  });
  return [c!];
}

/** Rows r0 .. r0 + rows of a row-major [*, width] tensor, as a zero-copy view. */
function rowsView(t: KernelTensor, r0: number, rows: number, width: number): KernelTensor {
  const d = data(t) as Float32Array | Uint8Array;
  return { storage: new CpuStorage(d.subarray(r0 * width, (r0 + rows) * width)), shape: [rows, width], dtype: t.dtype };
}

/** Each expert's segment of a through the block-scaled GEMM above, written into its rows of c. */
function groupedBlockGemmCpu(be: Backend, inputs: KernelTensor[], attrs: GroupedGemmAttrs): KernelTensor[] {
  const [a, as, offsetsT] = inputs as [KernelTensor, KernelTensor, KernelTensor];
  const E = offsetsT.shape[0]! - 1;
  const qs = inputs.slice(3, 3 + E);
  const ss = inputs.slice(3 + E);
  const offsets = data(offsetsT) as Int32Array;
  const [N, K] = a.shape as [number, number];
  const kb = as.shape[1]!;
  const O = qs[0]!.shape[0]!;
  const c = new Float32Array(N * O);
  const gemm = { block: attrs.block, bScaleLayout: 'block' as const, exact: attrs.exact };
  for (let e = 0; e < E; e++) {
    const r0 = offsets[e]!;
    const rows = offsets[e + 1]! - r0;
    if (rows === 0) continue;
    const [y] = blockGemmCpu(be, [rowsView(a, r0, rows, K), rowsView(as, r0, rows, kb), qs[e]!, ss[e]!], gemm);
    c.set(data(y!) as Float32Array, r0 * O);
  }
  return [out('f32', [N, O], c)];
}

/** Where segment e's first block x 1 tile of a column is in groupedQuantizeActT's scales. */
const firstSlot = (offsets: Int32Array, e: number, block: number): number => Math.floor(offsets[e]! / block) + e;

/** quantizeActivationTransposed of each segment's rows, placed in the grouped layout (see FP8_OPS). */
function groupedQuantizeActTCpu(_b: Backend, [x, offsetsT]: KernelTensor[], a: QuantAttrs): KernelTensor[] {
  const xs = f32In('groupedQuantizeActivationTransposed', x!);
  const offsets = data(offsetsT!) as Int32Array;
  const [R, C] = x!.shape as [number, number];
  const E = offsets.length - 1;
  const nb = Math.ceil(R / a.block) + E;
  const q = new Uint8Array(C * R);
  const scales = new Float32Array(C * nb).fill(activationScale(0, a.scaleFormat, a.amaxFloor));
  for (let e = 0; e < E; e++) {
    const r0 = offsets[e]!;
    const rows = offsets[e + 1]! - r0;
    if (rows === 0) continue;
    const r = quantizeActivationTransposed(xs.subarray(r0 * C, (r0 + rows) * C), [rows, C], a);
    const nbe = r.scaleShape[1]!;
    const s0 = firstSlot(offsets, e, a.block);
    for (let j = 0; j < C; j++) {
      q.set(r.q.subarray(j * rows, (j + 1) * rows), j * R + r0);
      scales.set(r.scales.subarray(j * nbe, (j + 1) * nbe), j * nb + s0);
    }
  }
  return [out('fp8-e4m3', [C, R], q), out('f32', [C, nb], scales)];
}

/** Columns c0 .. c0 + n of a row-major [rows, width] matrix, packed. */
function columns<T extends Uint8Array | Float32Array>(src: T, rows: number, width: number, c0: number, n: number): T {
  const dst = new (src.constructor as new (n: number) => T)(rows * n);
  for (let r = 0; r < rows; r++) dst.set(src.subarray(r * width + c0, r * width + c0 + n), r * n);
  return dst;
}

/** Each listed expert's weight gradient: its segment's columns of both operands through blockGemm ('row' scales). */
function groupedWgradGemmCpu(be: Backend, inputs: KernelTensor[], a: GroupedWgradAttrs): KernelTensor[] {
  const [gT, gS, xT, xS, offsetsT] = inputs as [KernelTensor, KernelTensor, KernelTensor, KernelTensor, KernelTensor];
  const offsets = data(offsetsT) as Int32Array;
  const [O, R] = gT.shape as [number, number];
  const K = xT.shape[0]!;
  const nb = gS.shape[1]!;
  const G = fp8In('groupedWgradGemm', gT);
  const X = fp8In('groupedWgradGemm', xT);
  const Gs = f32In('groupedWgradGemm', gS);
  const Xs = f32In('groupedWgradGemm', xS);
  return a.experts.map((e) => {
    const r0 = offsets[e]!;
    const rows = offsets[e + 1]! - r0;
    if (rows === 0) return out('f32', [O, K], new Float32Array(O * K));
    const nbe = Math.ceil(rows / a.block);
    const s0 = firstSlot(offsets, e, a.block);
    const [dw] = blockGemmCpu(
      be,
      [
        out(gT.dtype, [O, rows], columns(G, O, R, r0, rows)),
        out('f32', [O, nbe], columns(Gs, O, nb, s0, nbe)),
        out(xT.dtype, [K, rows], columns(X, K, R, r0, rows)),
        out('f32', [K, nbe], columns(Xs, K, nb, s0, nbe)),
      ],
      { block: a.block, bScaleLayout: 'row', exact: a.exact },
    );
    return dw!;
  });
}

/** The CPU kernels of the FP8 ops, by op name (registered in register.ts). */
export const FP8_CPU_KERNELS: Record<string, Kernel> = {
  [FP8_OPS.quantizeAct]: quantizeActCpu,
  [FP8_OPS.quantizeActT]: quantizeActTCpu,
  [FP8_OPS.quantizeWeight]: quantizeWeightCpu,
  [FP8_OPS.dequantizeAct]: dequantizeActCpu,
  [FP8_OPS.dequantizeWeight]: dequantizeWeightCpu,
  [FP8_OPS.blockGemm]: blockGemmCpu,
  [FP8_OPS.groupedBlockGemm]: groupedBlockGemmCpu,
  [FP8_OPS.groupedQuantizeActT]: groupedQuantizeActTCpu,
  [FP8_OPS.groupedWgradGemm]: groupedWgradGemmCpu,
};
