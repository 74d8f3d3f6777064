// `npm run bench` for @dsv3/core: CPU f32 GEMM against numpy/OpenBLAS measured in the same run,
// then the WebGPU GEMM when an adapter is available.
import { runGemmBench } from './gemm.js';
import { runWebGpuGemmBench } from './webgpu-gemm.js';

await runGemmBench();
await runWebGpuGemmBench();
