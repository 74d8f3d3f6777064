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

/**
 * The kernels of one memory (bound to its base address): those the wasm module imports, and the screened
 * head's (native/head-screen.cc: run as job tasks and called by head-screen.ts, not from wasm).
 */
export type BoundNativeKernels = Record<
  keyof typeof NATIVE_IMPORTS | 'headScreenPack' | 'headScreen',
  (...args: number[]) => void
> & {
  /** the rows the screen cannot rule out, written from `out` on; returns how many (head-screen.ts) */
  headCandidates(...args: number[]): number;
};

interface NativeKernelsAddon {
  /** Whether this CPU runs the kernels (AVX-512 F / VL / DQ / BW). */
  avx512: boolean;
  /** The kernels bound to the memory under `view` (a typed array over a shared wasm memory's buffer). */
  bind(view: Uint8Array): BoundNativeKernels;
  /**
   * Advises Linux to back the first `bytes` of the memory under `view` with transparent huge pages
   * (native/huge-pages.cc); whether it took the advice (false on other systems).
   */
  adviseHugePages(view: Uint8Array, bytes: number): boolean;
  /**
   * Maps the whole pages under `view` from file `fd` at `fileOffset` (native/map-file.cc), to come in as
   * they are first read; the mapped byte range within the view, [0, 0] when none was (other systems, the
   * address and offset at different places in a page, a failed mmap).
   */
  mapFile(view: Uint8Array, fd: number, fileOffset: number): [number, number];
  /** Brings every whole page under `view` in for reading now (native/map-file.cc; nothing off Linux). */
  prefaultPages(view: Uint8Array): void;
  /** Where the view's first byte falls within a `unit` (a power of two) of the address space (native/map-file.cc). */
  addressPhase(view: Uint8Array, unit: number): number;
  /** glibc's malloc_trim(0); false where the C library is not glibc */
  trimHeap(): boolean;
  /** The fp8 package's block-scaled quantizers (fp32 scales) in AVX-512 (native/fp8-quantize.cc); false: a non-finite input. */
  quantizeE4M3Tiles: QuantizeE4M3Tiles;
}

/**
 * quantizeE4M3TilesNative's arguments: x [rows, cols], the tile (tileRows x tileCols), the amax floor, the
 * scale rule, the outputs (q: rows x cols codes; scales: the tile grid, row-major).
 */
type QuantizeE4M3Tiles = (
  x: Float32Array,
  rows: number,
  cols: number,
  tileRows: number,
  tileCols: number,
  floor: number,
  rule: 'weight' | 'activation',
  q: Uint8Array,
  scales: Float32Array,
) => boolean;

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

/**
 * The built addon: DSV3_NATIVE_KERNELS if it names a file, else the package root's build (src/cpu/gemm
 * or dist; also with DSV3_NATIVE_KERNELS=0, which turns the kernels off, not the huge-page advice).
 */
function addonFile(h: NodeHooks): string | null {
  const env = process.env.DSV3_NATIVE_KERNELS;
  if (env && env !== '1' && env !== '0') {
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

/** The addon where Node can load it here (any CPU), or null; loaded once. */
function nativeAddon(): NativeKernels | null {
  if (loaded !== undefined) return loaded;
  loaded = null;
  const h = nodeHooks();
  if (!h) return loaded;
  const file = addonFile(h);
  if (!file) return loaded;
  try {
    loaded = { file, addon: h.module.createRequire(file)(file) as NativeKernelsAddon };
  } catch (e) {
    // another platform's build, a stale ABI: the same bits come from the wasm kernels, only slower
    process.emitWarning(`the native kernels (${file}) do not load here, the wasm kernels run: ${String(e)}`);
  }
  return loaded;
}

/**
 * The native kernels where they can run here: built, loadable, on a CPU with AVX-512, and not switched
 * off (DSV3_NATIVE_KERNELS=0, or gemmConfig.nativeKernels false); null otherwise.
 */
export function nativeKernels(): NativeKernels | null {
  if (!gemmConfig.nativeKernels) return null;
  // (no addon outside Node, so process.env is only read where it exists)
  const n = nativeAddon();
  return n?.addon.avx512 && process.env.DSV3_NATIVE_KERNELS !== '0' ? n : null;
}

/**
 * Asks for transparent huge pages under a shared wasm memory (its whole maximum, `maxBytes`), through
 * the addon on any CPU, unless gemmConfig.hugePages is false or DSV3_HUGE_PAGES=0; whether the kernel
 * took the advice. A shared memory never moves, so the advice holds as it grows.
 */
export function adviseHugePages(memory: WebAssembly.Memory, maxBytes: number): boolean {
  if (!gemmConfig.hugePages) return false;
  // (no addon outside Node, so process.env and SharedArrayBuffer are only read where they exist)
  const n = nativeAddon();
  return (
    n !== null &&
    process.env.DSV3_HUGE_PAGES !== '0' &&
    memory.buffer instanceof SharedArrayBuffer &&
    n.addon.adviseHugePages(new Uint8Array(memory.buffer), maxBytes)
  );
}

/**
 * Maps the whole 4 KiB pages of `view` (bytes in a GEMM engine's shared memory) from open file `fd`, the
 * view's first byte at `fileOffset`, through the addon on any CPU: the range of the view now holding the
 * file's bytes (the caller reads the rest), or null when nothing was mapped (no addon, not Linux, the
 * view and the offset at different places in a page, a failed mmap). The pages come in as they are
 * first read (prefaultMapped brings them in at once).
 */
export function mapFileInto(view: Uint8Array, fd: number, fileOffset: number): [number, number] | null {
  const n = nativeAddon();
  if (n === null || !(view.buffer instanceof SharedArrayBuffer)) return null;
  const [start, end] = n.addon.mapFile(view, fd, fileOffset);
  return end > start ? [start, end] : null;
}

/** Brings the mapped pages under `view` (mapFileInto's) in for reading now: their faults paid here. */
export function prefaultMapped(view: Uint8Array): void {
  nativeAddon()?.addon.prefaultPages(view);
}

/**
 * Where offset 0 of a shared wasm memory falls within a `unit` (a power of two) of the process's address
 * space, through the addon; 0 without it (nothing maps then, so placement within a unit is moot).
 */
export function memoryPhase(memory: WebAssembly.Memory, unit: number): number {
  const n = nativeAddon();
  if (n === null || !(memory.buffer instanceof SharedArrayBuffer)) return 0;
  return n.addon.addressPhase(new Uint8Array(memory.buffer), unit);
}

/**
 * Hands the C heap's free pages back to the operating system (glibc's malloc_trim, through the addon):
 * after a warm-up, the zones V8's optimizing compiler freed (warm-up.ts). Whether it ran: false without
 * the addon or off glibc.
 */
export function trimNativeHeap(): boolean {
  const n = nativeAddon();
  return n?.addon.trimHeap() ?? false;
}

/**
 * Block-scaled E4M3 quantization of a [rows, cols] f32 matrix in tileRows x tileCols tiles, in native code,
 * bit for bit the fp8 package's quantizers with fp32 scales: per tile s = f32(max(amax, floor) / 448) (rule
 * 'weight', quantizeWeight's) or f32(max(amax, floor) · f32(1/448)) ('activation', quantizeActivation's and
 * its columnwise twin's), q = E4M3(x / s) rounded to nearest even, saturating. True when done, false when `x`
 * holds a NaN or an infinity (nothing reliable written: the caller's own path names the element), null where
 * the native kernels do not run here.
 */
export function quantizeE4M3TilesNative(...args: Parameters<QuantizeE4M3Tiles>): boolean | null {
  const n = nativeKernels();
  return n ? n.addon.quantizeE4M3Tiles(...args) : null;
}
