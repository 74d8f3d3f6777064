// WebGPU test setup: one backend per test file (Dawn through the optional `webgpu` package; on a
// machine without a GPU, Mesa's lavapipe). Without a usable adapter the suites skip with a visible
// warning, unless DSV3_REQUIRE_WEBGPU=1, in which case they fail.
import { type createNodeWebGpuBackend, webGpuForTests } from '@dsv3/core/node';
import { fromRaw, type Backend, type Tensor } from '@dsv3/core';

export type GpuBackend = Awaited<ReturnType<typeof createNodeWebGpuBackend>>;

/** A WebGPU backend, or null (with a warning) when none is usable and DSV3_REQUIRE_WEBGPU is not set. */
export const acquireGpu = (): Promise<GpuBackend | null> => webGpuForTests('@dsv3/fp8');

/** The same raw bits on another backend. */
export function on(t: Tensor, be: Backend): Tensor {
  return fromRaw(t.dtype, t.shape, t.rawSync(), be);
}
