// A SIMD128 kernel module instantiated over a small memory of its own, for the passes that stage host
// operands through it on the calling thread (arith, RMSNorm, the gated activations, AdamW, exp).
import { ModuleBuilder } from './gemm/wasm-emitter.js';
import { hasSimd } from './gemm/runtime.js';

export interface PrivateSimdModule {
  exports: WebAssembly.Exports;
  memory: WebAssembly.Memory;
}

/**
 * The module `build()` emits (it imports `env.memory`), instantiated over a fresh memory of `pages`
 * 64 KiB pages; null without SIMD128 or where the runtime refuses it (the caller's loop then does the job).
 */
export function privateSimdModule(build: () => Uint8Array<ArrayBuffer>, pages: number): PrivateSimdModule | null {
  if (!hasSimd()) return null;
  try {
    const memory = new WebAssembly.Memory({ initial: pages, maximum: pages });
    const inst = new WebAssembly.Instance(new WebAssembly.Module(build()), { env: { memory } });
    return { exports: inst.exports, memory };
  } catch {
    return null;
  }
}

/** The bytes of a module of `pages` pages holding what `add` adds (a row module's kernels). */
export function moduleOf(add: (m: ModuleBuilder) => void, pages: number): () => Uint8Array<ArrayBuffer> {
  return () => {
    const m = new ModuleBuilder({
      module: 'env',
      name: 'memory',
      initialPages: pages,
      maximumPages: pages,
      shared: false,
    });
    add(m);
    return m.emit();
  };
}
