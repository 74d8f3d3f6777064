// @dsv3/core/node: the WebGPU backend in Node, through Dawn from the optional `webgpu` package.
//
//   import { createNodeWebGpuBackend } from '@dsv3/core/node';
//   const gpu = await createNodeWebGpuBackend();
//   console.log(gpu.adapterInfo);            // check it is not a software fallback
//   const x = randn([4, 4], { backend: gpu });
//   ...
//   gpu.dispose();                           // destroys the device so the process can exit
import {
  createWebGpuBackend,
  describeAdapter,
  requestDeviceFor,
  adapterSummary,
  type WantedFeature,
} from './webgpu/device.js';
import type { WebGpuBackend, WebGpuBackendOptions } from './webgpu/backend.js';

export * from './webgpu/index.js';

/** Dawn toggles: allow_unsafe_apis exposes chromium-experimental-subgroup-matrix, vulkan_enable_f16_on_nvidia exposes shader-f16 (and the f16 tensor-core configs) on NVIDIA. */
export const DEFAULT_DAWN_FLAGS = [
  'enable-dawn-features=allow_unsafe_apis,vulkan_enable_f16_on_nvidia',
  'disable-dawn-features=timestamp_quantization',
];

export interface NodeWebGpuOptions extends WebGpuBackendOptions {
  /** Wanted features not to request even when the adapter has them (e.g. ['shader-f16']). */
  withholdFeatures?: readonly WantedFeature[];
  /** Flags for the webgpu package's create() (default DEFAULT_DAWN_FLAGS). */
  dawnFlags?: string[];
  powerPreference?: GPUPowerPreference;
  /** Fail instead of accepting a software/fallback adapter. */
  requireHardware?: boolean;
}

interface WebGpuModule {
  create(flags: string[]): GPU;
  globals: Record<string, unknown>;
}

/** Loads the optional `webgpu` package, with an error that says how to get it. */
export async function loadDawn(): Promise<WebGpuModule> {
  const name = 'webgpu';
  try {
    const mod = (await import(/* @vite-ignore */ name)) as Partial<WebGpuModule> & { default?: Partial<WebGpuModule> };
    const m = mod.create ? mod : mod.default;
    if (!m?.create) throw new Error('it does not export create()');
    return m as WebGpuModule;
  } catch (e) {
    throw new Error(
      `@dsv3/core/node: could not load the optional 'webgpu' package (Dawn for Node): ${e instanceof Error ? e.message : String(e)}. ` +
        `Install it with \`npm install webgpu\` (prebuilt for linux-x64, macOS, Windows).`,
    );
  }
}

// One Dawn instance per flag set for the whole process, never released: garbage collection of a
// Dawn instance whose device was destroyed while another instance lives crashes the process
// (abort / segfault inside Dawn), and each backend's device must outlive nothing but this instance.
const dawnInstances = new Map<string, GPU>();

function dawnInstance(dawn: WebGpuModule, flags: string[]): GPU {
  const key = flags.join('\n');
  let gpu = dawnInstances.get(key);
  if (!gpu) {
    gpu = dawn.create(flags);
    dawnInstances.set(key, gpu);
  }
  return gpu;
}

/**
 * A WebGPU backend on this machine's GPU (or a software Vulkan adapter such as Mesa's lavapipe).
 * Rejects with a clear error when the `webgpu` package is missing or no adapter is found.
 */
export async function createNodeWebGpuBackend(opts: NodeWebGpuOptions = {}): Promise<WebGpuBackend> {
  const dawn = await loadDawn();
  // The WebGPU globals (GPUBufferUsage, ...) for user code; existing ones are left alone.
  for (const [k, v] of Object.entries(dawn.globals ?? {}))
    if (!(k in globalThis)) (globalThis as Record<string, unknown>)[k] = v;
  const gpu = dawnInstance(dawn, opts.dawnFlags ?? DEFAULT_DAWN_FLAGS);
  const adapter = await gpu.requestAdapter({ powerPreference: opts.powerPreference ?? 'high-performance' });
  if (!adapter) {
    throw new Error(
      '@dsv3/core/node: no WebGPU adapter was found. Dawn needs a Vulkan (Linux), Metal (macOS) or D3D12 (Windows) driver; ' +
        "without a GPU on Linux install Mesa's lavapipe (e.g. apt-get install mesa-vulkan-drivers, Mesa >= 23).",
    );
  }
  const info = describeAdapter(adapter);
  if (opts.requireHardware && info.isFallbackAdapter) {
    throw new Error(
      `@dsv3/core/node: only a software/fallback adapter is available (${adapterSummary(info)}) and requireHardware is set`,
    );
  }
  const { device, features } = await requestDeviceFor(adapter, 'dsv3', opts.withholdFeatures);
  const be = await createWebGpuBackend(device, { ...opts, adapter, adapterInfo: info, features });
  return be;
}

/**
 * The WebGPU backend for a test suite: null (with a visible warning naming `suite`) when no adapter is
 * usable, so the suite skips — unless DSV3_REQUIRE_WEBGPU=1 (CI), which turns that into a failure.
 */
export async function webGpuForTests(suite: string, opts: NodeWebGpuOptions = {}): Promise<WebGpuBackend | null> {
  try {
    return await createNodeWebGpuBackend(opts);
  } catch (e) {
    const why = e instanceof Error ? e.message : String(e);
    if (process.env.DSV3_REQUIRE_WEBGPU === '1')
      throw new Error(`DSV3_REQUIRE_WEBGPU=1 but WebGPU is not usable here: ${why}`);
    console.warn(
      `[${suite} webgpu tests] SKIPPED: no usable WebGPU adapter (${why}). Set DSV3_REQUIRE_WEBGPU=1 to make this a failure.`,
    );
    return null;
  }
}
