// @dsv3/core's WebGPU backend, browser-safe: the backend class, its WGSL kernels (registered on
// import) and factories for a device you have or for navigator.gpu. In Node, createNodeWebGpuBackend()
// from '@dsv3/core/node' loads Dawn from the optional `webgpu` package.
import './kernels/index.js';

export {
  WebGpuBackend,
  WebGpuStorage,
  type WebGpuAdapterInfo,
  type WebGpuBackendOptions,
  type WebGpuFeatures,
  type WebGpuLimits,
  type SubgroupMatrixConfig,
} from './backend.js';
export {
  createWebGpuBackend,
  requestWebGpuBackend,
  requestDeviceFor,
  describeAdapter,
  adapterSummary,
  WANTED_FEATURES,
  type WantedFeature,
  type CreateBackendOptions,
} from './device.js';
export { asWebGpu, isWebGpu, type KernelCode } from './backend.js';
// LIB: the WGSL helpers core's kernels share (f16_to_f32, which operandReader's bit-decoded f16 loads call, ...)
export { paramsDecl, bindingDecls, layoutKey, segmentTileWgsl, LIB as WGSL_LIB, type BindingDecl } from './wgsl.js';
export { subgroupMatrixSyntax, type SubgroupMatrixSyntax } from './kernels/matmul-subgroup.js';
export { hasShaderF16, requireShaderF16, operandReader, type OperandReader } from './half.js';
