// Op names and attributes of the FP8 kernels that this package registers in @dsv3/core's kernel
// registry (one 'cpu' and one 'webgpu' implementation each). Inputs/outputs are listed per op.
import type { ScaleFormat } from '../quant';
import type { BScaleLayout } from '../gemm';
import type { GemmRunOptions } from '../webgpu/gemm';
import type { DeviceStackCache } from '../webgpu/stack';

export const FP8_OPS = {
  /** [x f32 [..., C]] → [q fp8-e4m3 [..., C], scales f32 [..., ceil(C/block)]]: 1 x block tiles. */
  quantizeAct: 'fp8.quantizeAct',
  /**
   * [x f32 [R, C]] → [q fp8-e4m3 [C, R], scales f32 [C, ceil(R/block)]]: block x 1 tiles (one scale
   * per column and block of rows), returned transposed as an NT GEMM operand (Wgrad).
   */
  quantizeActT: 'fp8.quantizeActT',
  /** [w f32 [O, I]] → [q fp8-e4m3 [O, I], scales f32 [ceil(O/block), ceil(I/block)]]: block x block tiles. */
  quantizeWeight: 'fp8.quantizeWeight',
  /** [q fp8 [..., C], scales f32 [..., ceil(C/block)]] → [x f32 [..., C]]. */
  dequantizeAct: 'fp8.dequantizeAct',
  /** [q fp8 [O, I], scales f32 [ceil(O/block), ceil(I/block)]] → [w f32 [O, I]]. */
  dequantizeWeight: 'fp8.dequantizeWeight',
  /**
   * [a fp8 [M, K], aScale f32 [M, kb], b fp8 [N, K], bScale f32 [ceil(N/block) | N, kb]] → [c f32 [M, N]]
   * (kb = ceil(K/block)); inputs are contiguous, leading dims of a already flattened into M.
   */
  blockGemm: 'fp8.blockGemm',
  /**
   * Grouped over expert segments: [a fp8 [N, K], aScale f32 [N, kb], offsets i32 [E + 1], b_0 .. b_{E-1}
   * fp8 [O, K], bScale_0 .. bScale_{E-1} f32 [ceil(O/block), kb]] → [c f32 [N, O]]: rows
   * offsets[e] .. offsets[e + 1] of a (sorted by expert) times expert e's weight (NT, 128x128 blocks).
   */
  groupedBlockGemm: 'fp8.groupedBlockGemm',
  /**
   * quantizeActT over expert segments: [x f32 [R, C], offsets i32 [E + 1]] → [q fp8-e4m3 [C, R], scales
   * f32 [C, ceil(R/block) + E]]: block x 1 tiles that restart at each segment's first row; segment e's
   * tile j of column c has its scale at [c, floor(offsets[e] / block) + e + j] (unused slots hold the
   * scale of an all-zero tile).
   */
  groupedQuantizeActT: 'fp8.groupedQuantizeActT',
  /**
   * The routed experts' weight gradients from two groupedQuantizeActT results: [gT fp8 [O, R], gS,
   * xT fp8 [K, R], xS, offsets i32 [E + 1]] → dW_e f32 [O, K] = Σ over segment e's token tiles of
   * gS · xS · Σ qg qx, one per listed expert (zeros for an empty segment).
   */
  groupedWgradGemm: 'fp8.groupedWgradGemm',
} as const;

export interface QuantAttrs {
  block: number;
  scaleFormat: ScaleFormat;
  amaxFloor: number;
}

export interface DequantAttrs {
  block: number;
}

export interface GemmAttrs {
  block: number;
  bScaleLayout: BScaleLayout;
  /**
   * CPU only: true runs the reference kernel (exact f64 sum per 128-wide K block, promotion in f64:
   * ~4e-8 from exact, but JS speed); false (default) the fast path (see cpu.ts).
   */
  exact: boolean;
  /** WebGPU only: tile and path choices (tests and benchmarks); the CPU ignores them */
  webgpu?: GemmRunOptions;
}

export interface GroupedGemmAttrs {
  block: number;
  /** CPU: the exact reference kernel per segment (see GemmAttrs.exact). */
  exact: boolean;
  /** WebGPU: where the stacks of the expert weights and of their scales are kept between calls. */
  cache?: { q: DeviceStackCache; scales: DeviceStackCache } | undefined;
}

export interface GroupedWgradAttrs {
  block: number;
  /** Experts to compute dW_e for, in output order. */
  experts: readonly number[];
  /** CPU: the exact reference kernel (see GemmAttrs.exact). */
  exact: boolean;
}
