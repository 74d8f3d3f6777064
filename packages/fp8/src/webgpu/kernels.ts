// The WebGPU kernels of the FP8 ops, by op name (registered in register.ts): quantization and
// dequantization in quantize.ts, the block-scaled GEMM in gemm.ts (tiled kernel in gemm-tiled.ts,
// subgroup-matrix path and its self-test in gemm-subgroup.ts), shared flags and checks in common.ts.
import type { Kernel } from '@dsv3/core';
import { FP8_OPS } from '../tensor/attrs';
import { blockGemmGpu } from './gemm';
import { groupedBlockGemmGpu, groupedWgradGemmGpu } from './grouped-gemm';
import {
  dequantizeActGpu,
  dequantizeWeightGpu,
  groupedQuantizeActTGpu,
  quantizeActGpu,
  quantizeActTGpu,
  quantizeWeightGpu,
} from './quantize';

export const FP8_WEBGPU_KERNELS: Record<string, Kernel> = {
  [FP8_OPS.quantizeAct]: quantizeActGpu,
  [FP8_OPS.quantizeActT]: quantizeActTGpu,
  [FP8_OPS.quantizeWeight]: quantizeWeightGpu,
  [FP8_OPS.dequantizeAct]: dequantizeActGpu,
  [FP8_OPS.dequantizeWeight]: dequantizeWeightGpu,
  [FP8_OPS.blockGemm]: blockGemmGpu,
  [FP8_OPS.groupedBlockGemm]: groupedBlockGemmGpu as Kernel,
  [FP8_OPS.groupedQuantizeActT]: groupedQuantizeActTGpu as Kernel,
  [FP8_OPS.groupedWgradGemm]: groupedWgradGemmGpu as Kernel,
};

export { checkFp8Errors } from './common';
export { enableFp8SubgroupMatrix } from './gemm-subgroup';
export type { GemmRunOptions } from './gemm';
export type { GemmTile } from './gemm-tiled';
export { newDeviceStackCache, stackOnDevice, type DeviceStack, type DeviceStackCache } from './stack';
