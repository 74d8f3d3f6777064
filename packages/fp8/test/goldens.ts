// Loads the project's FP8 goldens (stored once, in core's test fixtures) once per test file.
import { fileURLToPath } from 'node:url';
import { readSafetensors } from './read-safetensors';
import type { StTensor } from './read-safetensors';

let cache: Map<string, StTensor> | null = null;

export function goldens(): Map<string, StTensor> {
  cache ??= readSafetensors(
    fileURLToPath(new URL('../../core/test/fixtures/fp8-goldens.safetensors', import.meta.url)),
  );
  return cache;
}

export function f32(name: string): Float32Array {
  const t = goldens().get(name);
  if (!t || !(t.data instanceof Float32Array)) throw new Error(`golden ${name}: missing or not F32`);
  return t.data;
}

export function u8(name: string): Uint8Array {
  const t = goldens().get(name);
  if (!t || !(t.data instanceof Uint8Array)) throw new Error(`golden ${name}: missing or not U8`);
  return t.data;
}

/** Indices where two arrays differ (Object.is, so NaN == NaN and -0 != 0). */
export function mismatches(x: ArrayLike<number>, y: ArrayLike<number>): number[] {
  const out: number[] = [];
  if (x.length !== y.length) throw new Error(`length ${x.length} vs ${y.length}`);
  for (let i = 0; i < x.length; i++) if (!Object.is(x[i], y[i])) out.push(i);
  return out;
}
