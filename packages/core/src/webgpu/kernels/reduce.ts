// Row kernels: reductions over one axis (sum / max / min / argmax / argmin with the CPU's NaN and
// tie rules), softmax / log-softmax and RMSNorm (one workgroup per row, workgroup-memory tree
// reductions), cumsum (a thread per line, or a workgroup scan for few long lines) and top-k (a
// per-row selection repeated k times). Results of 16/8-bit dtypes are written as 32-bit words and
// then packed, so no two workgroups ever write the same word.
import type { Backend, KernelTensor } from '../../backend.js';
import type { DType } from '../../dtype.js';
import type { KernelAttrs, ReduceOp } from '../../kernel-types.js';
import { sizeOf, splitAt } from '../../shape.js';
import { asWebGpu, type WebGpuBackend, type WebGpuStorage } from '../backend.js';
import { computeType, gpuInfo, wideDType, type ComputeType } from '../dtypes.js';
import { bindingDecls, f32Bits, grid, layoutKey, LIB, loaders, paramsDecl } from '../wgsl.js';
import { elementwise } from './elem.js';
import { castKernel } from './elementwise.js';

/** A 32-bit-per-element result buffer, packed into `dtype` at the end when that is narrower. */
export function wideResult(
  be: WebGpuBackend,
  dtype: DType,
  shape: readonly number[],
): { storage: WebGpuStorage; wide: DType; finish: () => KernelTensor } {
  const wide = gpuInfo(dtype).bits === 32 ? dtype : wideDType(dtype);
  const storage = be.allocUninit(wide, sizeOf(shape));
  return {
    storage,
    wide,
    finish: () => {
      if (wide === dtype) return { storage, shape: [...shape], dtype };
      const [out] = castKernel(be, [{ storage, shape: [...shape], dtype: wide }], { dtype });
      be.free(storage);
      return out!;
    },
  };
}

/** Raw-bit variant: packs the low bits of each 32-bit word (for results that are element bits). */
function packRaw(be: WebGpuBackend, storage: WebGpuStorage, dtype: DType, shape: readonly number[]): KernelTensor {
  if (gpuInfo(dtype).bits === 32) return { storage, shape: [...shape], dtype };
  const out = elementwise(
    be,
    {
      label: `pack_${dtype}`,
      out: dtype,
      raw: true,
      inputs: [{ name: 'w', t: { storage, shape: [...shape], dtype: 'u32' }, contiguous: true }],
      body: () => 'fn value(i: u32) -> u32 { return w_raw(i); }',
    },
    shape,
  );
  be.free(storage);
  return out;
}

const zeroOf = (ct: ComputeType): string => (ct === 'f32' ? '0.0' : ct === 'i32' ? '0i' : '0u');

/**
 * WGSL: does (va, ia) beat the current best (vb, ib)? NONE means "no element". NaN beats numbers
 * (the CPU stops at the first NaN), equal values go to the lower index; `wantMax` is a uniform so
 * max/min and argmax/argmin share a shader.
 */
function betterFn(ct: ComputeType, wantMaxExpr: string): string {
  const nan =
    ct === 'f32'
      ? `let na = is_nan(va); let nb = is_nan(vb); if (na || nb) { if (na && nb) { return ia < ib; } return na; }`
      : '';
  return `const NONE: u32 = 0xffffffffu;
fn better(va: ${ct}, ia: u32, vb: ${ct}, ib: u32) -> bool {
  if (ia == NONE) { return false; }
  if (ib == NONE) { return true; }
  ${nan}
  if (va == vb) { return ia < ib; }
  return select((va < vb), (va > vb), ${wantMaxExpr});
}`;
}

const WIDE_ENC = (ct: ComputeType, e: string): string => (ct === 'u32' ? e : `bitcast<u32>(${e})`);

/** Op codes of the reduce shaders (uniform). */
const REDUCE_CODE: Record<ReduceOp, number> = { sum: 0, max: 1, min: 2, argmax: 1, argmin: 2 };

export function reduceKernel(b: Backend, [x]: KernelTensor[], { op, axis }: KernelAttrs['reduce']): KernelTensor[] {
  const be = asWebGpu(b);
  const [outer, len, inner] = splitAt(x!.shape, axis);
  const shape = x!.shape.filter((_, i) => i !== axis);
  const ct = computeType(x!.dtype, `reduce ${op}`);
  const arg = op === 'argmax' || op === 'argmin';
  const outDType: DType = arg ? 'i32' : x!.dtype;
  if (len === 0 && op !== 'sum')
    throw new RangeError(`${op} over an empty axis ${axis} of shape [${x!.shape.join(', ')}]`);
  const lines = outer * inner;
  if (len <= 64) return [reduceSmall(b, x!, op, len, inner, shape, ct, outDType)];
  // Long axes: a workgroup per output element, threads striding over the axis, then a tree.
  // One shader per dtype and workgroup size serves all five ops (op and "arg" are uniforms).
  const WG = len <= 1024 ? 64 : 256;
  const res = wideResult(be, outDType, shape);
  const decls = [{ name: 'out', write: true }, { name: 'x' }];
  const code = `${paramsDecl(6)}
${bindingDecls(decls)}
${LIB}
${loaders('x', x!.dtype)}
${betterFn(ct, 'P(3u) == 1u')}
var<workgroup> sv: array<${ct}, ${WG}>;
var<workgroup> si: array<u32, ${WG}>;
@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let line = wid.x + wid.y * nwg.x;
  if (line >= P(0u)) { return; }
  let inner = P(1u);
  let len = P(2u);
  let base = (line / inner) * len * inner + line % inner;
  if (P(3u) == 0u) {
    var acc = ${zeroOf(ct)};
    for (var j = lid; j < len; j = j + ${WG}u) { acc = acc + x_ld(base + j * inner); }
    sv[lid] = acc;
    workgroupBarrier();
    for (var s = ${WG / 2}u; s > 0u; s = s >> 1u) {
      if (lid < s) { sv[lid] = sv[lid] + sv[lid + s]; }
      workgroupBarrier();
    }
  } else {
    var bv = ${zeroOf(ct)};
    var bi = NONE;
    for (var j = lid; j < len; j = j + ${WG}u) {
      let v = x_ld(base + j * inner);
      if (better(v, j, bv, bi)) { bv = v; bi = j; }
    }
    ${argTree(WG, 'sv', 'si', 'bv', 'better')}
  }
  if (lid == 0u) { out[line] = select(${WIDE_ENC(ct, 'sv[0]')}, si[0], P(4u) != 0u); }
}
`;
  be.run(
    { label: `reduce_${x!.dtype}`, code, layout: layoutKey(decls) },
    [be.bind(res.storage), be.bind(be.input(x!))],
    [lines, inner, len, REDUCE_CODE[op], +arg],
    grid(lines, be.limits.maxComputeWorkgroupsPerDimension),
  );
  return [res.finish()];
}

/** Short axes: one thread per output element (the element-kernel path, which packs directly). */
function reduceSmall(
  b: Backend,
  x: KernelTensor,
  op: ReduceOp,
  len: number,
  inner: number,
  shape: number[],
  ct: ComputeType,
  outDType: DType,
): KernelTensor {
  const arg = op === 'argmax' || op === 'argmin';
  return elementwise(
    b,
    {
      label: `reduce_small_${arg ? 'arg_' : ''}${x.dtype}`,
      out: outDType,
      raw: false,
      inputs: [{ name: 'x', t: x, contiguous: false }],
      body: (p) => {
        const inAt = p.push(inner);
        const lenAt = p.push(len);
        const opAt = p.push(REDUCE_CODE[op]);
        return `${betterFn(ct, `P(${opAt}u) == 1u`)}
fn value(i: u32) -> ${arg ? 'i32' : ct} {
  let inner = P(${inAt}u);
  let len = P(${lenAt}u);
  let base = (i / inner) * len * inner + i % inner;
  ${
    arg
      ? ''
      : `if (P(${opAt}u) == 0u) {
    var acc = ${zeroOf(ct)};
    for (var j = 0u; j < len; j = j + 1u) { acc = acc + x_ld(base + j * inner); }
    return acc;
  }`
  }
  var bv = x_ld(base);
  var bi = 0u;
  for (var j = 1u; j < len; j = j + 1u) {
    let v = x_ld(base + j * inner);
    if (better(v, j, bv, bi)) { bv = v; bi = j; }
  }
  return ${arg ? 'i32(bi)' : 'bv'};
}`;
      },
    },
    shape,
  );
}

export function rowWG(n: number): number {
  return n <= 64 ? 64 : 256;
}

function requireFloatDType(op: string, dtype: DType): void {
  if (!gpuInfo(dtype).float || !gpuInfo(dtype).ct)
    throw new TypeError(`${op} needs a float tensor (f32, f16, bf16), got ${dtype}`);
}

/**
 * WGSL (at 4-space indent) for a workgroup tree reduction to the (value, index) pair that `wins`
 * (a WGSL fn (va, ia, vb, ib) -> bool): each thread stores its candidate (`v`, bi) into `vs` / `is`,
 * and thread 0's slots end up holding the winner.
 */
function argTree(WG: number, vs: string, is: string, v: string, wins: string): string {
  return `${vs}[lid] = ${v};
    ${is}[lid] = bi;
    workgroupBarrier();
    for (var s = ${WG / 2}u; s > 0u; s = s >> 1u) {
      if (lid < s && ${wins}(${vs}[lid + s], ${is}[lid + s], ${vs}[lid], ${is}[lid])) { ${vs}[lid] = ${vs}[lid + s]; ${is}[lid] = ${is}[lid + s]; }
      workgroupBarrier();
    }`;
}

/**
 * WGSL opening a row kernel's entry point: one workgroup of WG threads per row (a 2-D grid of them),
 * parameter 0 the row count, parameter 1 the row length, bound to `row` and `n`.
 */
export function rowKernelEntry(WG: number): string {
  return `@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let row = wid.x + wid.y * nwg.x;
  if (row >= P(0u)) { return; }
  let n = P(1u);`;
}

/** WGSL for a workgroup tree reduction of f32 `red` (all threads get the result). */
export function treeF32(WG: number, combine: (a: string, b: string) => string, into: string): string {
  return `workgroupBarrier();
  for (var s = ${WG / 2}u; s > 0u; s = s >> 1u) {
    if (lid < s) { red[lid] = ${combine('red[lid]', 'red[lid + s]')}; }
    workgroupBarrier();
  }
  let ${into} = red[0];
  workgroupBarrier();`;
}

export function softmaxKernel(b: Backend, [x]: KernelTensor[], { log }: KernelAttrs['softmax']): KernelTensor[] {
  const be = asWebGpu(b);
  requireFloatDType('softmax', x!.dtype);
  const n = x!.shape[x!.shape.length - 1] ?? 1;
  const rows = n === 0 ? 0 : sizeOf(x!.shape) / n;
  const res = wideResult(be, x!.dtype, x!.shape);
  const WG = rowWG(n);
  const decls = [{ name: 'out', write: true }, { name: 'x' }];
  const code = `${paramsDecl(4)}
${bindingDecls(decls)}
${LIB}
${loaders('x', x!.dtype)}
var<workgroup> red: array<f32, ${WG}>;
fn nanmax(a: f32, b: f32) -> f32 { if (is_nan(a) || is_nan(b)) { return nan_f32(); } return max(a, b); }
${rowKernelEntry(WG)}
  let base = row * n;
  var m = -inf_f32();
  for (var j = lid; j < n; j = j + ${WG}u) { m = nanmax(m, x_ld(base + j)); }
  red[lid] = m;
  ${treeF32(WG, (a, c) => `nanmax(${a}, ${c})`, 'mx')}
  // a fully masked row gives NaN (0/0) rather than a made-up distribution, as on the CPU
  let mm = select(mx, 0.0, mx == -inf_f32());
  var s = 0.0;
  for (var j = lid; j < n; j = j + ${WG}u) { s = s + exp(x_ld(base + j) - mm); }
  red[lid] = s;
  ${treeF32(WG, (a, c) => `${a} + ${c}`, 'tot')}
  let ls = log(tot) + mm;
  let logMode = P(2u) != 0u;
  for (var j = lid; j < n; j = j + ${WG}u) {
    let v = x_ld(base + j);
    out[base + j] = bitcast<u32>(select(exp(v - mm) / tot, v - ls, logMode));
  }
}
`;
  be.run(
    { label: `softmax_${x!.dtype}`, code, layout: layoutKey(decls) },
    [be.bind(res.storage), be.bind(be.input(x!))],
    [rows, n, +log],
    grid(rows, be.limits.maxComputeWorkgroupsPerDimension),
  );
  return [res.finish()];
}

export function rmsnormKernel(b: Backend, [x, w]: KernelTensor[], { eps }: KernelAttrs['rmsnorm']): KernelTensor[] {
  const be = asWebGpu(b);
  requireFloatDType('rmsnorm', x!.dtype);
  requireFloatDType('rmsnorm weight', w!.dtype);
  const n = x!.shape[x!.shape.length - 1] ?? 1;
  const rows = n === 0 ? 0 : sizeOf(x!.shape) / n;
  const res = wideResult(be, x!.dtype, x!.shape);
  const WG = rowWG(n);
  const decls = [{ name: 'out', write: true }, { name: 'x' }, { name: 'w' }];
  const code = `${paramsDecl(4)}
${bindingDecls(decls)}
${LIB}
${loaders('x', x!.dtype)}
${loaders('w', w!.dtype)}
var<workgroup> red: array<f32, ${WG}>;
${rowKernelEntry(WG)}
  let base = row * n;
  var s = 0.0;
  for (var j = lid; j < n; j = j + ${WG}u) { let v = x_ld(base + j); s = s + v * v; }
  red[lid] = s;
  ${treeF32(WG, (a, c) => `${a} + ${c}`, 'ss')}
  let inv = 1.0 / sqrt(ss / f32(n) + Pf(2u));
  for (var j = lid; j < n; j = j + ${WG}u) { out[base + j] = bitcast<u32>(x_ld(base + j) * inv * w_ld(j)); }
}
`;
  be.run(
    { label: `rmsnorm_${x!.dtype}`, code, layout: layoutKey(decls) },
    [be.bind(res.storage), be.bind(be.input(x!)), be.bind(be.input(w!))],
    [rows, n, f32Bits(eps)],
    grid(rows, be.limits.maxComputeWorkgroupsPerDimension),
  );
  return [res.finish()];
}

export function cumsumKernel(
  b: Backend,
  [x]: KernelTensor[],
  { axis, reverse }: KernelAttrs['cumsum'],
): KernelTensor[] {
  const be = asWebGpu(b);
  const ct = computeType(x!.dtype, 'cumsum');
  const [outer, len, inner] = splitAt(x!.shape, axis);
  const lines = outer * inner;
  const res = wideResult(be, x!.dtype, x!.shape);
  if (lines === 0 || len === 0) return [res.finish()];
  const decls = [{ name: 'out', write: true }, { name: 'x' }];
  const pos = (jj: string): string => (reverse ? `(len - 1u - (${jj}))` : `(${jj})`);
  const head = `${paramsDecl(4)}
${bindingDecls(decls)}
${LIB}
${loaders('x', x!.dtype)}`;
  const params = [lines, inner, len];
  if (lines >= 64 || len <= 256) {
    const code = `${head}
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let line = gid.x + gid.y * nwg.x * 64u;
  if (line >= P(0u)) { return; }
  let inner = P(1u);
  let len = P(2u);
  let base = (line / inner) * len * inner + line % inner;
  var s = ${zeroOf(ct)};
  for (var jj = 0u; jj < len; jj = jj + 1u) {
    let p = base + ${pos('jj')} * inner;
    s = s + x_ld(p);
    out[p] = ${WIDE_ENC(ct, 's')};
  }
}
`;
    be.run(
      { label: `cumsum_${x!.dtype}`, code, layout: layoutKey(decls) },
      [be.bind(res.storage), be.bind(be.input(x!))],
      params,
      grid(Math.ceil(lines / 64), be.limits.maxComputeWorkgroupsPerDimension),
    );
    return [res.finish()];
  }
  // Few long lines: a workgroup per line; each thread scans a contiguous segment, the segment
  // totals are scanned in workgroup memory, then every thread rescans its segment with its offset.
  const WG = 256;
  const code = `${head}
var<workgroup> sh: array<${ct}, ${WG}>;
@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let line = wid.x + wid.y * nwg.x;
  if (line >= P(0u)) { return; }
  let inner = P(1u);
  let len = P(2u);
  let base = (line / inner) * len * inner + line % inner;
  let seg = (len + ${WG - 1}u) / ${WG}u;
  let start = min(lid * seg, len);
  let end = min(start + seg, len);
  var local = ${zeroOf(ct)};
  for (var jj = start; jj < end; jj = jj + 1u) { local = local + x_ld(base + ${pos('jj')} * inner); }
  sh[lid] = local;
  workgroupBarrier();
  for (var d = 1u; d < ${WG}u; d = d << 1u) {
    var t = sh[lid];
    if (lid >= d) { t = t + sh[lid - d]; }
    workgroupBarrier();
    sh[lid] = t;
    workgroupBarrier();
  }
  var s = ${zeroOf(ct)};
  if (lid > 0u) { s = sh[lid - 1u]; }
  for (var jj = start; jj < end; jj = jj + 1u) {
    let p = base + ${pos('jj')} * inner;
    s = s + x_ld(p);
    out[p] = ${WIDE_ENC(ct, 's')};
  }
}
`;
  be.run(
    { label: `cumsum_scan_${x!.dtype}`, code, layout: layoutKey(decls) },
    [be.bind(res.storage), be.bind(be.input(x!))],
    params,
    grid(lines, be.limits.maxComputeWorkgroupsPerDimension),
  );
  return [res.finish()];
}

export function topkKernel(b: Backend, [x]: KernelTensor[], { k }: KernelAttrs['topk']): KernelTensor[] {
  const be = asWebGpu(b);
  const ct = computeType(x!.dtype, 'topk');
  const n = x!.shape[x!.shape.length - 1]!;
  const rows = n === 0 ? 0 : sizeOf(x!.shape) / n;
  const shape = [...x!.shape.slice(0, -1), k];
  const count = rows * k;
  const vals = be.allocUninit(gpuInfo(x!.dtype).bits === 32 ? x!.dtype : 'u32', count);
  const ids = be.allocUninit('i32', count);
  if (count > 0) {
    const WG = rowWG(n);
    const decls = [{ name: 'vals', write: true }, { name: 'ids', write: true }, { name: 'x' }];
    // NaN ranks as the largest value (never silently dropped); ties go to the lower index.
    const key = ct === 'f32' ? 'select(v, inf_f32(), is_nan(v))' : 'v';
    const code = `${paramsDecl(4)}
${bindingDecls(decls)}
${LIB}
${loaders('x', x!.dtype)}
const NONE: u32 = 0xffffffffu;
var<workgroup> rk: array<${ct}, ${WG}>;
var<workgroup> ri: array<u32, ${WG}>;
fn key(v: ${ct}) -> ${ct} { return ${key}; }
// (ka, ia) ranks before (kb, ib)
fn first(ka: ${ct}, ia: u32, kb: ${ct}, ib: u32) -> bool {
  if (ia == NONE) { return false; }
  if (ib == NONE) { return true; }
  return ka > kb || (ka == kb && ia < ib);
}
${rowKernelEntry(WG)}
  let k = P(2u);
  let base = row * n;
  var pk = ${zeroOf(ct)};
  var pi = NONE;
  for (var r = 0u; r < k; r = r + 1u) {
    var bk = ${zeroOf(ct)};
    var bi = NONE;
    for (var j = lid; j < n; j = j + ${WG}u) {
      let kv = key(x_ld(base + j));
      // only elements ranked after the previous pick are still candidates
      if (pi == NONE || first(pk, pi, kv, j)) {
        if (first(kv, j, bk, bi)) { bk = kv; bi = j; }
      }
    }
    ${argTree(WG, 'rk', 'ri', 'bk', 'first')}
    pk = rk[0];
    pi = ri[0];
    workgroupBarrier();
    if (lid == 0u) {
      vals[row * k + r] = x_raw(base + pi);
      ids[row * k + r] = pi;
    }
  }
}
`;
    be.run(
      { label: `topk_${x!.dtype}`, code, layout: layoutKey(decls) },
      [be.bind(vals), be.bind(ids), be.bind(be.input(x!))],
      [rows, n, k],
      grid(rows, be.limits.maxComputeWorkgroupsPerDimension),
    );
  }
  return [packRaw(be, vals, x!.dtype, shape), { storage: ids, shape, dtype: 'i32' }];
}
