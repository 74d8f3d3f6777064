// Registers this package's kernels in @dsv3/core's registry, once, when the package is loaded: every
// module that runs them imports this file for its side effect (so does index.ts). The kernels only
// run when called.
import { registerKernel } from '@dsv3/core';
import {
  COMBINE_BACKWARD_OP,
  COMBINE_OP,
  combineBackwardCpu,
  combineCpu,
  SWIGLU_BACKWARD_OP,
  SWIGLU_OP,
  swigluBackwardCpu,
  swigluCpu,
} from './fused-kernels';
import { cpuGroupedMatmul, cpuGroupedWeightGrad, GROUPED_MATMUL_OP, GROUPED_WEIGHT_GRAD_OP } from './grouped-kernels';
import { DISPATCH_OP, dispatchCpu, ROUTE_OP, routeCpu } from './route-kernels';
import { ROUTE_WEIGHTS_BACKWARD_OP, routeWeightsBackwardCpu } from './route-weights-backward';
import { webgpuGroupedMatmul, webgpuGroupedWeightGrad } from './webgpu-grouped';
import { webgpuDispatch, webgpuRoute } from './webgpu-route';

registerKernel(GROUPED_MATMUL_OP, 'cpu', cpuGroupedMatmul);
registerKernel(GROUPED_WEIGHT_GRAD_OP, 'cpu', cpuGroupedWeightGrad);
registerKernel(GROUPED_MATMUL_OP, 'webgpu', webgpuGroupedMatmul);
registerKernel(GROUPED_WEIGHT_GRAD_OP, 'webgpu', webgpuGroupedWeightGrad);
registerKernel(SWIGLU_OP, 'cpu', swigluCpu);
registerKernel(SWIGLU_BACKWARD_OP, 'cpu', swigluBackwardCpu);
registerKernel(COMBINE_OP, 'cpu', combineCpu);
registerKernel(COMBINE_BACKWARD_OP, 'cpu', combineBackwardCpu);
registerKernel(ROUTE_OP, 'cpu', routeCpu);
registerKernel(ROUTE_OP, 'webgpu', webgpuRoute);
registerKernel(DISPATCH_OP, 'cpu', dispatchCpu);
registerKernel(DISPATCH_OP, 'webgpu', webgpuDispatch);
registerKernel(ROUTE_WEIGHTS_BACKWARD_OP, 'cpu', routeWeightsBackwardCpu);
