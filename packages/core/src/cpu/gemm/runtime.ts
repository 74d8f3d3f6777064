// Lazily created process-wide GEMM engine and thread policy (internal; see index.ts for the API).
import { gemmConfig } from './config.js';
import { simdProbe } from './sgemm-kernel.js';
import { WasmGemm } from './wasm-engine.js';
import { loadNodeBuiltins } from './worker-pool.js';

let engine: WasmGemm | null | undefined;
/** Engines past the first, each over its own memory, created when resident weights outgrow the others. */
const extra: WasmGemm[] = [];
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

/** A new engine: threaded (shared memory) first, then single-threaded wasm; null without SIMD128. */
function createEngine(): WasmGemm | null {
  if (!hasSimd()) return null;
  for (const node of [loadNodeBuiltins(), null]) {
    try {
      return new WasmGemm(node);
    } catch {
      // try the next kind
    }
  }
  return null;
}

/** The first wasm engine, created on first use; null when SIMD128 is unavailable. */
export function getEngine(): WasmGemm | null {
  if (engine === undefined) engine = createEngine();
  return engine;
}

/** The first engine if it has been created (never creates one). */
export function createdEngine(): WasmGemm | null {
  return engine ?? null;
}

/**
 * Every engine that holds resident storage (one wasm32 memory holds at most 4 GiB, so weights past
 * that live in further memories, each with its own kernels instance and workers).
 */
export function engines(): WasmGemm[] {
  const e = getEngine();
  return e ? [e, ...extra] : [];
}

/** The engine whose memory holds `a`, or null. */
export function engineOwning(a: ArrayBufferView): WasmGemm | null {
  for (const e of engines()) if (e.arena.owns(a)) return e;
  return null;
}

/** Whether x and y view one memory: one buffer, or one engine's (whose buffer object changes as it grows). */
export function sameMemory(x: ArrayBufferView, y: ArrayBufferView): boolean {
  if (x.buffer === y.buffer) return true;
  const e = engineOwning(x);
  return e !== null && e === engineOwning(y);
}

/** One more engine for resident storage (null past gemmConfig.maxArenas or without wasm). */
export function addEngine(): WasmGemm | null {
  if (!getEngine() || engines().length >= gemmConfig.maxArenas) return null;
  const e = createEngine();
  if (e) extra.push(e);
  return e;
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
