// Device acquisition (browser-safe: nothing here imports the Node `webgpu` package): which
// features and limits to ask an adapter for, how the adapter is described (so a silent software
// fallback is visible), and the backend factories, including the self-test that decides whether
// the subgroup-matrix GEMM is used.
import { encodeF16 } from '../dtype.js';
import { Rng } from '../rng.js';
import { relativeError } from '../testing.js';
import {
  WebGpuBackend,
  type SubgroupMatrixConfig,
  type WebGpuAdapterInfo,
  type WebGpuBackendOptions,
  type WebGpuFeatures,
} from './backend.js';
import { tiledGemm, type GemmArgs } from './kernels/matmul.js';
import {
  pickSubgroupConfig,
  selfTestVariants,
  sgmmCode,
  sgmmSharedBytes,
  subgroupMatmul,
} from './kernels/matmul-subgroup.js';
import { layoutKey } from './wgsl.js';

/** Optional features the backend uses when an adapter has them. */
export const WANTED_FEATURES = [
  'shader-f16',
  'subgroups',
  'timestamp-query',
  'chromium-experimental-subgroup-matrix',
] as const;

/** Limits raised to the adapter's maxima. */
export const RAISED_LIMITS = [
  'maxStorageBufferBindingSize',
  'maxBufferSize',
  'maxComputeWorkgroupStorageSize',
  'maxComputeInvocationsPerWorkgroup',
  'maxComputeWorkgroupSizeX',
  'maxComputeWorkgroupSizeY',
  'maxComputeWorkgroupSizeZ',
  'maxComputeWorkgroupsPerDimension',
  'maxStorageBuffersPerShaderStage',
] as const;

interface InfoLike {
  vendor?: string;
  architecture?: string;
  device?: string;
  description?: string;
  isFallbackAdapter?: boolean;
  subgroupMinSize?: number;
  subgroupMaxSize?: number;
  subgroupMatrixConfigs?: readonly SubgroupMatrixConfig[];
}

/** What an adapter says about itself. */
export function describeAdapter(adapter: GPUAdapter): WebGpuAdapterInfo {
  const info = ((adapter as { info?: InfoLike }).info ?? {}) as InfoLike;
  const legacyFallback = (adapter as { isFallbackAdapter?: boolean }).isFallbackAdapter;
  const out: WebGpuAdapterInfo = {
    vendor: info.vendor ?? '',
    architecture: info.architecture ?? '',
    device: info.device ?? '',
    description: info.description ?? '',
  };
  const fb = info.isFallbackAdapter ?? legacyFallback;
  if (fb !== undefined) out.isFallbackAdapter = fb;
  if (info.subgroupMinSize !== undefined) out.subgroupMinSize = info.subgroupMinSize;
  if (info.subgroupMaxSize !== undefined) out.subgroupMaxSize = info.subgroupMaxSize;
  return out;
}

/** A one-line description, e.g. for logs and benchmark headers. */
export function adapterSummary(info: WebGpuAdapterInfo): string {
  const parts = [info.vendor || 'unknown vendor', info.architecture, info.device, info.description].filter(Boolean);
  const fb = info.isFallbackAdapter ? ' [software/fallback adapter]' : '';
  return parts.join(' / ') + fb;
}

function subgroupMatrixConfigs(adapter: GPUAdapter): SubgroupMatrixConfig[] {
  const raw = ((adapter as { info?: InfoLike }).info?.subgroupMatrixConfigs ?? []) as readonly SubgroupMatrixConfig[];
  return [...raw].map((c) => ({
    componentType: String(c.componentType),
    resultComponentType: String(c.resultComponentType),
    M: Number(c.M),
    N: Number(c.N),
    K: Number(c.K),
  }));
}

export type WantedFeature = (typeof WANTED_FEATURES)[number];

/**
 * Requests a device with every wanted feature the adapter has (less `withhold`: tests run the paths
 * of an adapter without them) and limits at the adapter's maxima.
 */
export async function requestDeviceFor(
  adapter: GPUAdapter,
  label = 'dsv3',
  withhold: readonly WantedFeature[] = [],
): Promise<{ device: GPUDevice; features: WebGpuFeatures }> {
  const off = new Set<string>(withhold);
  // The subgroup-matrix configs we use are f16 on subgroups: without either, the feature goes too.
  if (off.has('shader-f16') || off.has('subgroups')) off.add('chromium-experimental-subgroup-matrix');
  const requiredFeatures = WANTED_FEATURES.filter((f) => adapter.features.has(f) && !off.has(f)) as GPUFeatureName[];
  // The subgroup-matrix feature needs subgroups (and f16 for the configs we use).
  const requiredLimits: Record<string, number> = {};
  const al = adapter.limits as unknown as Record<string, number>;
  for (const k of RAISED_LIMITS) if (typeof al[k] === 'number') requiredLimits[k] = al[k]!;
  const device = await adapter.requestDevice({ requiredFeatures, requiredLimits, label });
  const has = (f: string): boolean => device.features.has(f);
  return {
    device,
    features: {
      shaderF16: has('shader-f16'),
      subgroups: has('subgroups'),
      timestampQuery: has('timestamp-query'),
      subgroupMatrix: has('chromium-experimental-subgroup-matrix'),
      subgroupMatrixConfigs: has('chromium-experimental-subgroup-matrix') ? subgroupMatrixConfigs(adapter) : [],
    },
  };
}

export interface CreateBackendOptions extends WebGpuBackendOptions {
  /** Wanted features not to request even when the adapter has them (e.g. ['shader-f16']). */
  withholdFeatures?: readonly WantedFeature[];
  /** The adapter the device came from (for its description and subgroup-matrix configs). */
  adapter?: GPUAdapter;
  adapterInfo?: WebGpuAdapterInfo;
  features?: WebGpuFeatures;
}

/** Wraps a device you already have (browser or Node) as a backend. */
export async function createWebGpuBackend(device: GPUDevice, opts: CreateBackendOptions = {}): Promise<WebGpuBackend> {
  const deviceInfo = (device as { adapterInfo?: InfoLike }).adapterInfo;
  const adapterInfo: WebGpuAdapterInfo =
    opts.adapterInfo ??
    (opts.adapter
      ? describeAdapter(opts.adapter)
      : {
          vendor: deviceInfo?.vendor ?? '',
          architecture: deviceInfo?.architecture ?? '',
          device: deviceInfo?.device ?? '',
          description: deviceInfo?.description ?? '',
        });
  const has = (f: string): boolean => device.features.has(f);
  const features: WebGpuFeatures = opts.features ?? {
    shaderF16: has('shader-f16'),
    subgroups: has('subgroups'),
    timestampQuery: has('timestamp-query'),
    subgroupMatrix: has('chromium-experimental-subgroup-matrix'),
    subgroupMatrixConfigs:
      opts.adapter && has('chromium-experimental-subgroup-matrix') ? subgroupMatrixConfigs(opts.adapter) : [],
  };
  const be = new WebGpuBackend(device, { adapterInfo, features, options: opts });
  await initSubgroupMatrix(be, opts.subgroupMatrix ?? true);
  return be;
}

/** In a browser (or wherever navigator.gpu exists): adapter → device → backend. */
export async function requestWebGpuBackend(
  opts: CreateBackendOptions & { powerPreference?: GPUPowerPreference } = {},
): Promise<WebGpuBackend> {
  const gpu = (globalThis as { navigator?: { gpu?: GPU } }).navigator?.gpu;
  if (!gpu)
    throw new Error(
      'WebGPU is not available here (navigator.gpu is undefined); in Node use createNodeWebGpuBackend() from @dsv3/core/node',
    );
  const adapter = await gpu.requestAdapter({ powerPreference: opts.powerPreference ?? 'high-performance' });
  if (!adapter) throw new Error('WebGPU: no adapter was found (navigator.gpu.requestAdapter() returned null)');
  const { device, features } = await requestDeviceFor(adapter, 'dsv3', opts.withholdFeatures);
  return createWebGpuBackend(device, { ...opts, adapter, adapterInfo: describeAdapter(adapter), features });
}

/**
 * Enables the subgroup-matrix f16 GEMM if the device has the feature and the kernel both builds
 * (trying the current and the older builtin spelling) and matches the tiled kernel on ragged and
 * aligned products of every transpose combination.
 */
async function initSubgroupMatrix(be: WebGpuBackend, wanted: boolean): Promise<void> {
  if (!wanted) return void (be.subgroupMatrixStatus = 'disabled by option');
  if (!be.features.subgroupMatrix)
    return void (be.subgroupMatrixStatus = 'the device has no chromium-experimental-subgroup-matrix feature');
  if (!be.features.shaderF16 || !be.features.subgroups)
    return void (be.subgroupMatrixStatus = 'needs shader-f16 and subgroups');
  const config = pickSubgroupConfig(be.features.subgroupMatrixConfigs);
  if (!config) return void (be.subgroupMatrixStatus = 'no f16→f32 subgroup-matrix config');
  if (sgmmSharedBytes(config) > be.limits.maxComputeWorkgroupStorageSize)
    return void (be.subgroupMatrixStatus = 'not enough workgroup memory');
  const sgSize = be.adapterInfo.subgroupMaxSize ?? 32;
  const errors: string[] = [];
  for (const legacySyntax of [false, true]) {
    let built = true;
    for (const v of selfTestVariants(config, legacySyntax, sgSize)) {
      const r = await be.pipelines.tryBuild(
        sgmmCode(v),
        layoutKey([{ name: 'C', write: true }, { name: 'A' }, { name: 'B' }]),
        'sgmm-selftest',
      );
      if (!r.pipeline) {
        errors.push(`${legacySyntax ? 'legacy' : 'current'} syntax: ${r.error.slice(0, 400)}`);
        built = false;
        break;
      }
    }
    if (!built) continue;
    try {
      const err = await compareWithTiled(be, { config, legacySyntax });
      if (err <= 1e-3) {
        be.subgroupMatrixGemm = { config, legacySyntax };
        be.subgroupMatrixStatus = `enabled: f16→f32 ${config.M}x${config.N}x${config.K}${legacySyntax ? ' (legacy builtin syntax)' : ''}`;
        return;
      }
      errors.push(`self-test mismatch (relative error ${err.toExponential(2)})`);
    } catch (e) {
      errors.push(`self-test failed: ${e instanceof Error ? e.message : String(e)}`);
    }
  }
  be.subgroupMatrixStatus = `disabled: ${errors.join('; ')}`;
}

async function compareWithTiled(
  be: WebGpuBackend,
  variant: { config: SubgroupMatrixConfig; legacySyntax: boolean },
): Promise<number> {
  let worst = 0;
  const rng = new Rng(12345);
  const rnd = (): number => rng.uniform() * 2 - 1;
  for (const [m, n, k] of [
    [192, 160, 96],
    [70, 45, 38],
  ] as const) {
    for (const transA of [false, true]) {
      for (const transB of [false, true]) {
        const aShape = transA ? [k, m] : [m, k];
        const bShape = transB ? [n, k] : [k, n];
        const a = be.upload('f16', encodeF16(Array.from({ length: m * k }, rnd)));
        const b = be.upload('f16', encodeF16(Array.from({ length: k * n }, rnd)));
        const args: GemmArgs = { a, b, aType: 'f16', bType: 'f16', aShape, bShape, transA, transB };
        const x = subgroupMatmul(be, args, variant);
        const y = tiledGemm(be, args);
        const xs = (await be.read(x.out, 'f32', m * n)) as Float32Array;
        const ys = (await be.read(y.out, 'f32', m * n)) as Float32Array;
        const err = relativeError(xs, ys);
        worst = Math.max(worst, Number.isNaN(err) ? Infinity : err);
        for (const s of [a, b, x.out, y.out]) be.free(s);
      }
    }
  }
  return worst;
}
