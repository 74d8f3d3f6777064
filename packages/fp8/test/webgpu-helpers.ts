// WebGPU test setup: one backend per test file (Dawn through the optional `webgpu` package; on a
// machine without a GPU, Mesa's lavapipe). Without a usable adapter the suites skip with a visible
// warning, unless DSV3_REQUIRE_WEBGPU=1, in which case they fail.
import type { createNodeWebGpuBackend } from '@dsv3/core/node';
import { fromRaw, type Backend, type Tensor } from '@dsv3/core';

export const REQUIRE_WEBGPU = process.env.DSV3_REQUIRE_WEBGPU === '1';

export type GpuBackend = Awaited<ReturnType<typeof createNodeWebGpuBackend>>;

/** A WebGPU backend, or null (with a warning) when none is usable and DSV3_REQUIRE_WEBGPU is not set. */
export async function acquireGpu(): Promise<GpuBackend | null> {
  try {
    // loaded lazily, so a checkout without core's WebGPU backend skips instead of failing to import
    const { createNodeWebGpuBackend } = await import('@dsv3/core/node');
    return await createNodeWebGpuBackend();
  } catch (e) {
    const why = e instanceof Error ? e.message : String(e);
    if (REQUIRE_WEBGPU) throw new Error(`DSV3_REQUIRE_WEBGPU=1 but WebGPU is not usable here: ${why}`);
    console.warn(
      `[@dsv3/fp8 webgpu tests] SKIPPED: no usable WebGPU adapter (${why}). Set DSV3_REQUIRE_WEBGPU=1 to make this a failure.`,
    );
    return null;
  }
}

/** The same raw bits on another backend. */
export function on(t: Tensor, be: Backend): Tensor {
  return fromRaw(t.dtype, t.shape, t.rawSync(), be);
}
