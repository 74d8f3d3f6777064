// The native kernels addon (native/kernels.cc, built by scripts/build-native.mjs): AVX-512 versions of
// the wasm engine's innermost loops, called from the wasm kernels through imports and working on the
// engine's own shared memory, bitwise equal to the wasm loops they replace. Optional: where Node cannot
// load it (a browser, no compiler at install, another CPU) the wasm kernels run as they are.
import { gemmConfig } from './config.js';
import { type FunctionImport, I32 } from './wasm-emitter.js';

/**
 * The native kernels a module built with them imports (from `env`, bound to its memory): each takes the
 * wasm function's own arguments (i32 byte offsets and sizes) plus memory.size, for its bounds checks.
 */
export const NATIVE_IMPORTS = {
  /** sgemm-kernel.ts's macro-kernel (native/f32-macro.cc) */
  f32Macro: { name: 'f32Macro', params: Array<typeof I32>(9).fill(I32) },
  /** i16-gemm-kernel.ts's macro-kernel (native/i16-gemm.cc) */
  i16Macro: { name: 'i16Macro', params: Array<typeof I32>(9).fill(I32) },
  /** i16-pack.ts's packWI16_bf16 / packWI16_fp8 (native/i16-gemm.cc) */
  i16PackWBf16: { name: 'i16PackWBf16', params: Array<typeof I32>(10).fill(I32) },
  i16PackWFp8: { name: 'i16PackWFp8', params: Array<typeof I32>(10).fill(I32) },
  /** gemv-kernel.ts's gemv_bf16 / gemv_fp8 plus their relaxed-madd choice (native/gemv.cc; f32 stays wasm) */
  gemvBf16: { name: 'gemvBf16', params: Array<typeof I32>(12).fill(I32) },
  gemvFp8: { name: 'gemvFp8', params: Array<typeof I32>(16).fill(I32) },
} as const satisfies Record<string, FunctionImport>;

/** The kernels of one memory (bound to its base address), as the wasm module imports them. */
export type BoundNativeKernels = Record<keyof typeof NATIVE_IMPORTS, (...args: number[]) => void>;

interface NativeKernelsAddon {
  /** Whether this CPU runs the kernels (AVX-512 F / VL / DQ / BW). */
  avx512: boolean;
  /** The kernels bound to the memory under `view` (a typed array over a shared wasm memory's buffer). */
  bind(view: Uint8Array): BoundNativeKernels;
}

/** A loaded addon and the file it came from (worker threads load the same file). */
export interface NativeKernels {
  file: string;
  addon: NativeKernelsAddon;
}

/** Where the addon is built, relative to the package root. */
const ADDON_PATH = ['build', 'Release', 'dsv3_kernels.node'];

interface NodeHooks {
  fs: typeof import('node:fs');
  path: typeof import('node:path');
  url: typeof import('node:url');
  module: typeof import('node:module');
}

function nodeHooks(): NodeHooks | null {
  const proc = (globalThis as { process?: { getBuiltinModule?: (id: string) => unknown } }).process;
  if (typeof proc?.getBuiltinModule !== 'function') return null;
  const get = proc.getBuiltinModule;
  return {
    fs: get('node:fs') as NodeHooks['fs'],
    path: get('node:path') as NodeHooks['path'],
    url: get('node:url') as NodeHooks['url'],
    module: get('node:module') as NodeHooks['module'],
  };
}

/** This module's file (import.meta.url: tsup's shim provides it in the CJS build). */
function thisFile(h: NodeHooks): string | null {
  const url = import.meta.url;
  return url?.startsWith('file:') ? h.url.fileURLToPath(url) : null;
}

/** The built addon: DSV3_NATIVE_KERNELS if it names a file, else the package root's build (src/cpu/gemm or dist). */
function addonFile(h: NodeHooks): string | null {
  const env = process.env.DSV3_NATIVE_KERNELS;
  if (env && env !== '1') {
    if (h.fs.existsSync(env)) return env;
    process.emitWarning(`DSV3_NATIVE_KERNELS names ${env}, which does not exist: the wasm kernels run`);
    return null;
  }
  const here = thisFile(h);
  if (!here) return null;
  let dir = h.path.dirname(here);
  for (let up = 0; up < 4; up++, dir = h.path.dirname(dir)) {
    const file = h.path.join(dir, ...ADDON_PATH);
    if (h.fs.existsSync(file)) return file;
  }
  return null;
}

let loaded: NativeKernels | null | undefined;

/**
 * The native kernels where they can run here: built, loadable, on a CPU with AVX-512, and not switched
 * off (DSV3_NATIVE_KERNELS=0, or gemmConfig.nativeKernels false); null otherwise.
 */
export function nativeKernels(): NativeKernels | null {
  if (!gemmConfig.nativeKernels) return null;
  if (loaded !== undefined) return loaded;
  loaded = null;
  const h = nodeHooks();
  if (!h || process.env.DSV3_NATIVE_KERNELS === '0') return loaded;
  const file = addonFile(h);
  if (!file) return loaded;
  try {
    const addon = h.module.createRequire(file)(file) as NativeKernelsAddon;
    if (addon.avx512) loaded = { file, addon };
  } catch (e) {
    // another platform's build, a stale ABI: the same bits come from the wasm kernels, only slower
    process.emitWarning(`the native kernels (${file}) do not load here, the wasm kernels run: ${String(e)}`);
  }
  return loaded;
}
