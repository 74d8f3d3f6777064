// f16 compute on WebGPU: what a kernel needs to read f16 (or f32 / bf16) GEMM operands with f32
// accumulation, and the check that the device can. With `shader-f16` an f16 buffer binds as
// array<f16> / array<vec4<f16>> and converts in hardware (8-byte vector loads: half the bytes of
// f32); without it f16 is still readable, bit-decoded from u32 words, but the f16 compute mode (f16
// weights on the device, f16 tensor-core GEMMs) is refused with a clear error. Exported from core so
// other packages' GEMMs (the grouped MoE kernels) read their operands the same way.
import type { DType } from '../dtype.js';
import type { WebGpuBackend } from './backend.js';
import { loaders } from './wgsl.js';

/** Whether f16 operands are read natively (the device has `shader-f16`). */
export const hasShaderF16 = (be: WebGpuBackend): boolean => be.features.shaderF16;

/** Throws a clear error when f16 compute is asked of a device without `shader-f16`. */
export function requireShaderF16(be: WebGpuBackend, what: string): void {
  if (hasShaderF16(be)) return;
  const who = [be.adapterInfo.vendor, be.adapterInfo.device || be.adapterInfo.description].filter(Boolean).join(' ');
  throw new Error(
    `${what}: f16 compute needs the WebGPU feature 'shader-f16', which this adapter (${who || 'unknown'}) does not offer; use f32 (or bf16 weights) instead`,
  );
}

export interface OperandReader {
  /** element type of the operand's storage binding (array<type>) */
  type: string;
  /** whether `<name>_ld4(q)` exists: the 4 elements from 4·q as vec4<f32> (q indexes the binding) */
  vec: boolean;
  /** WGSL: `fn <name>_ld(i: u32) -> f32` (element i) and, when vec, `<name>_ld4` */
  code: string;
  /** directive the shader must start with ('enable f16;' or '') */
  enable: string;
}

/**
 * How a kernel reads a float operand `name` of `dtype` as f32. `vec` asks for vec4 loads (the caller
 * guarantees the operand's contiguous axis and every offset are multiples of 4); they are granted for
 * f32 and, on a device with shader-f16, for f16. Other cases bind u32 words and decode bits.
 */
export function operandReader(name: string, dtype: DType, opts: { nativeF16: boolean; vec: boolean }): OperandReader {
  if (dtype === 'f32' || (dtype === 'f16' && opts.nativeF16)) {
    const half = dtype === 'f16';
    const enable = half ? 'enable f16;' : '';
    if (opts.vec) {
      const ld4 = half ? `vec4<f32>(${name}[q])` : `${name}[q]`;
      return {
        type: half ? 'vec4<f16>' : 'vec4<f32>',
        vec: true,
        code: `fn ${name}_ld4(q: u32) -> vec4<f32> { return ${ld4}; }
fn ${name}_ld(i: u32) -> f32 { return f32(${name}[i >> 2u][i & 3u]); }
`,
        enable,
      };
    }
    return {
      type: half ? 'f16' : 'f32',
      vec: false,
      code: `fn ${name}_ld(i: u32) -> f32 { return f32(${name}[i]); }\n`,
      enable,
    };
  }
  return { type: 'u32', vec: false, code: loaders(name, dtype), enable: '' };
}
