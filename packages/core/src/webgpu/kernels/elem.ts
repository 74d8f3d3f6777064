// The element-kernel generator most primitives are built on: a kernel supplies
// `fn value(i: u32) -> T` giving output element i (in the output's compute type, or as raw bits for
// pure data movement), and the generator writes whole 32-bit words, so threads never share a word of
// a packed f16/bf16/u8/bool output. Outputs and same-shape inputs larger than one storage binding
// are processed in chunks bound at aligned offsets.
import type { KernelTensor } from '../../backend.js';
import type { DType } from '../../dtype.js';
import { sizeOf, type Shape } from '../../shape.js';
import { asWebGpu, type WebGpuBackend, type WebGpuStorage } from '../backend.js';
import type { Backend } from '../../backend.js';
import { gpuInfo, wordBytes } from '../dtypes.js';
import { bindingDecls, encodeExpr, grid, layoutKey, LIB, loaders, paramsDecl, type BindingDecl } from '../wgsl.js';

export const EL_WG = 256;

/** Parameters with absolute indices, appended after a fixed header. */
export class Params {
  readonly values: number[] = [];
  constructor(readonly base: number) {}
  /** Adds a u32 parameter (negative numbers are passed as their two's complement); returns its index. */
  push(v: number): number {
    this.values.push(v >>> 0);
    return this.base + this.values.length - 1;
  }
  /** The next index push() will return. */
  get next(): number {
    return this.base + this.values.length;
  }
}

export interface ElemInput {
  name: string;
  t: KernelTensor;
  /** indexed exactly like the output (so it can be chunked along with it) */
  contiguous: boolean;
}

export interface ElemSpec {
  label: string;
  out: DType;
  /** value() returns raw element bits (u32) instead of a compute-type value */
  raw: boolean;
  inputs: ElemInput[];
  /** WGSL defining `fn value(i: u32) -> T`; may use <name>_ld/_raw, P(k) and LIB */
  body: (p: Params) => string;
  /** bind the index-error flag as `errflag` */
  errFlag?: boolean;
}

function elemCode(spec: ElemSpec, p: Params): { code: string; decls: BindingDecl[] } {
  const info = gpuInfo(spec.out);
  const decls: BindingDecl[] = [{ name: 'out', write: true }, ...spec.inputs.map((x) => ({ name: x.name }))];
  if (spec.errFlag) decls.push({ name: 'errflag', atomic: true });
  const body = spec.body(p);
  const nparams = p.next;
  const T = spec.raw ? 'u32' : info.ct!;
  const enc = spec.raw
    ? `(value(i) & ${info.bits === 32 ? '0xffffffffu' : info.bits === 16 ? '0xffffu' : '0xffu'})`
    : encodeExpr(spec.out, 'value(i)');
  const store =
    info.epw === 1
      ? `let i = P(1u) + w; out[w] = ${enc};`
      : `var word = 0u;
  for (var e = 0u; e < ${info.epw}u; e = e + 1u) {
    let i = P(1u) + w * ${info.epw}u + e;
    if (i < P(2u)) { word = word | (${enc} << (e * ${info.bits}u)); }
  }
  out[w] = word;`;
  const code = `${paramsDecl(nparams)}
${bindingDecls(decls)}
${LIB}
${spec.inputs.map((x, k) => loaders(x.name, x.t.dtype, x.contiguous ? `P(${3 + k}u)` : '')).join('')}
${body}
fn _typecheck(i: u32) -> ${T} { return value(i); }
@compute @workgroup_size(${EL_WG})
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let w = gid.x + gid.y * nwg.x * ${EL_WG}u;
  if (w >= P(0u)) { return; }
  ${store}
}
`;
  return { code, decls };
}

/** Runs an element kernel producing `count` elements; returns the new storage. */
export function runElementwise(be: WebGpuBackend, spec: ElemSpec, count: number): WebGpuStorage {
  const outInfo = gpuInfo(spec.out);
  const out = be.allocUninit(spec.out, count);
  if (count === 0) return out;
  const nIn = spec.inputs.length;
  const p = new Params(3 + nIn);
  const { code, decls } = elemCode(spec, p);
  const kernel = { label: spec.label, code, layout: layoutKey(decls) };
  const limit = be.bindingLimit;
  const ins = spec.inputs.map((x) => ({ ...x, s: be.input(x.t) }));
  const needsChunks = wordBytes(spec.out, count) > limit || ins.some((x) => x.contiguous && x.s.byteLength > limit);
  for (const x of ins) {
    if (!x.contiguous && x.s.byteLength > limit) {
      throw new RangeError(
        `webgpu ${spec.label}: input '${x.name}' (${x.s.byteLength} bytes) exceeds the storage binding limit of ${limit} bytes (maxStorageBufferBindingSize); only same-shape inputs are chunked`,
      );
    }
  }
  const chunk = needsChunks ? Math.floor(limit / 4 / 1024) * 1024 : count;
  for (let start = 0; start < count; start += chunk) {
    const end = Math.min(count, start + chunk);
    const words = Math.ceil((end - start) / outInfo.epw);
    const header = [words, start, end, ...ins.map((x) => (x.contiguous && needsChunks ? start : 0))];
    const buffers: GPUBufferBinding[] = [be.bind(out, wordBytes(spec.out, start), words * 4)];
    for (const x of ins) {
      if (x.contiguous && needsChunks) {
        const off = wordBytes(x.t.dtype, start);
        buffers.push(
          be.bind(x.s, off, Math.min(wordBytes(x.t.dtype, end) - off, Math.ceil(x.s.byteLength / 4) * 4 - off)),
        );
      } else buffers.push(be.bind(x.s));
    }
    if (spec.errFlag) buffers.push({ buffer: be.indexErrorBuffer, offset: 0, size: 4 });
    be.run(
      kernel,
      buffers,
      [...header, ...p.values],
      grid(Math.ceil(words / EL_WG), be.limits.maxComputeWorkgroupsPerDimension),
    );
  }
  return out;
}

/** Convenience: an element kernel whose output is a new kernel tensor of `shape`. */
export function elementwise(b: Backend, spec: ElemSpec, shape: Shape): KernelTensor {
  const be = asWebGpu(b);
  const s = runElementwise(be, spec, sizeOf(shape));
  return { storage: s, shape: [...shape], dtype: spec.out };
}

/**
 * Drops size-1 axes and merges adjacent axes that every stride list walks contiguously, so
 * broadcasts and permutes index with as few div/mods as possible.
 */
export function coalesce(
  shape: readonly number[],
  strides: readonly (readonly number[])[],
): { shape: number[]; strides: number[][] } {
  const dims: number[] = [];
  const st: number[][] = strides.map(() => []);
  for (let d = 0; d < shape.length; d++) {
    if (shape[d] === 1) continue;
    const last = dims.length - 1;
    if (last >= 0 && strides.every((s, k) => st[k]![last] === s[d]! * shape[d]!)) {
      dims[last] = dims[last]! * shape[d]!;
      strides.forEach((s, k) => (st[k]![last] = s[d]!));
    } else {
      dims.push(shape[d]!);
      strides.forEach((s, k) => st[k]!.push(s[d]!));
    }
  }
  return { shape: dims, strides: st };
}

/**
 * WGSL `fn <name>(i: u32) -> u32` mapping an output index (row-major over `shape`) to
 * offset + Σ coord_d * strides[d] (strides may be negative). Dims, strides and offset are parameters,
 * so only the rank is baked into the shader.
 */
export function stridedIndexFn(
  name: string,
  p: Params,
  shape: readonly number[],
  strides: readonly number[],
  offset = 0,
): string {
  const rank = shape.length;
  const offAt = offset ? p.push(offset) : -1;
  let s = `fn ${name}(i: u32) -> u32 {\n  var r = i;\n  var o = ${offAt >= 0 ? `Pi(${offAt}u)` : '0i'};\n`;
  for (let d = rank - 1; d >= 0; d--) {
    const stAt = p.push(strides[d]!);
    if (d === 0) s += `  o = o + i32(r) * Pi(${stAt}u);\n`;
    else {
      const dimAt = p.push(shape[d]!);
      s += `  { let n = P(${dimAt}u); o = o + i32(r % n) * Pi(${stAt}u); r = r / n; }\n`;
    }
  }
  return `${s}  return u32(o);\n}\n`;
}

/** Index functions for inputs broadcast to `outShape` (contiguous → i, single element → 0). */
export function broadcastIndexFns(
  p: Params,
  outShape: readonly number[],
  inputs: { fn: string; shape: readonly number[] }[],
): string {
  const size = sizeOf(outShape);
  let code = '';
  const strided: { fn: string; strides: number[] }[] = [];
  for (const x of inputs) {
    const same = x.shape.length === outShape.length && x.shape.every((d, i) => d === outShape[i]);
    if (same || sizeOf(x.shape) === size) code += `fn ${x.fn}(i: u32) -> u32 { return i; }\n`;
    else if (sizeOf(x.shape) === 1) code += `fn ${x.fn}(i: u32) -> u32 { return 0u; }\n`;
    else strided.push({ fn: x.fn, strides: bstrides(x.shape, outShape) });
  }
  for (const x of strided) {
    const c = coalesce(outShape, [x.strides]);
    code += stridedIndexFn(x.fn, p, c.shape, c.strides[0]!);
  }
  return code;
}

function bstrides(shape: readonly number[], target: readonly number[]): number[] {
  const out = new Array<number>(target.length).fill(0);
  let acc = 1;
  for (let i = shape.length - 1; i >= 0; i--) {
    const t = target.length - shape.length + i;
    out[t] = shape[i] === 1 ? 0 : acc;
    acc *= shape[i]!;
  }
  return out;
}

/** Whether a broadcast input is indexed exactly like the output. */
export function isContiguousWith(shape: readonly number[], outShape: readonly number[]): boolean {
  return sizeOf(shape) === sizeOf(outShape);
}
