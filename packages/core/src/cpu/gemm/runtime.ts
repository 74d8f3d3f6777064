// Lazily created process-wide GEMM engine and thread policy (internal; see index.ts for the API).
import { gemmConfig } from './config.js';
import { simdProbe } from './sgemm-kernel.js';
import { WasmGemm } from './wasm-engine.js';
import { loadNodeBuiltins } from './worker-pool.js';

let engine: WasmGemm | null | undefined;
let simdSupported: boolean | undefined;

export function hasSimd(): boolean {
  if (simdSupported === undefined) {
    try {
      simdSupported = typeof WebAssembly === 'object' && WebAssembly.validate(simdProbe());
    } catch {
      simdSupported = false;
    }
  }
  return simdSupported;
}

/** The wasm engine, created on first use; null when SIMD128 is unavailable. */
export function getEngine(): WasmGemm | null {
  if (engine === undefined) {
    engine = null;
    if (hasSimd()) {
      // Threaded (shared memory) first, then single-threaded wasm, then the JS kernel.
      for (const node of [loadNodeBuiltins(), null]) {
        try {
          engine = new WasmGemm(node);
          break;
        } catch {
          engine = null;
        }
      }
    }
  }
  return engine;
}

let cpuCount: number | null = null;

// Asked once: os.availableParallelism() is a system call, and small GEMMs run thousands of times a second.
function defaultThreads(): number {
  if (cpuCount !== null) return cpuCount;
  const node = loadNodeBuiltins();
  const os = node?.os;
  cpuCount = !os
    ? 1
    : Math.max(1, typeof os.availableParallelism === 'function' ? os.availableParallelism() : os.cpus().length);
  return cpuCount;
}

export function effectiveThreads(e: WasmGemm | null): number {
  if (!e?.canThread()) return 1;
  return gemmConfig.threads ?? defaultThreads();
}
