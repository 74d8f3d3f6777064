// Deterministic scatters. WGSL has no float atomics, and atomics would make the summation order
// (hence the rounding) vary run to run, so every output element gathers what lands on it, adding
// the contributions in index order (as the CPU does):
//  - scatterAdd with few indices loops over all of them; with many, the indices are first sorted
//    stably (a bitonic sort of positions keyed by (index, position)) and a per-slot offset table is
//    built by binary search, so each output element reads exactly its own contributions;
//  - scatterAlong loops over its own line of the index tensor.
import type { Backend, KernelTensor } from '../../backend.js';
import type { KernelAttrs } from '../../kernel-types.js';
import { sizeOf, splitAt } from '../../shape.js';
import { asWebGpu, type WebGpuBackend, type WebGpuStorage } from '../backend.js';
import { computeType, type ComputeType } from '../dtypes.js';
import { bindingDecls, grid, layoutKey, LIB, loaders, paramsDecl } from '../wgsl.js';
import { EL_WG, elementwise, type ElemInput } from './elem.js';

/** Below this many indices scatterAdd scans them all per output element. */
const SCAN_LIMIT = 64;

function checkIdx(op: string, idx: KernelTensor): void {
  if (idx.dtype !== 'i32') throw new TypeError(`${op}: indices must be i32, got ${idx.dtype}`);
}

export function scatterAddKernel(
  b: Backend,
  [x, idx, src]: KernelTensor[],
  { axis }: KernelAttrs['scatterAdd'],
): KernelTensor[] {
  checkIdx('scatterAdd', idx!);
  const be = asWebGpu(b);
  const ct = computeType(x!.dtype, 'scatterAdd');
  const [, len, inner] = splitAt(x!.shape, axis);
  const J = sizeOf(idx!.shape);
  if (J <= SCAN_LIMIT) {
    return [
      scatterPass(
        b,
        `scatterAdd_scan_${x!.dtype}`,
        x!,
        src!,
        ct,
        [{ name: 'ids', t: idx!, contiguous: false }],
        true,
        [inner, len, J],
        (inAt, lenAt, jAt) => `
  for (var j = 0u; j < P(${jAt}u); j = j + 1u) {
    let id = ids_ld(j);
    if (id < 0i || u32(id) >= P(${lenAt}u)) { atomicOr(&errflag, 2u); continue; }
    if (u32(id) == d) { acc = acc + s_ld((o * P(${jAt}u) + j) * P(${inAt}u) + ii); }
  }`,
      ),
    ];
  }
  const perm = sortedPositions(be, be.input(idx!), J, len);
  const offsets = segmentOffsets(be, be.input(idx!), perm, J, len);
  const csrInputs: ElemInput[] = [
    { name: 'pm', t: { storage: perm, shape: [J], dtype: 'u32' }, contiguous: false },
    { name: 'off', t: { storage: offsets, shape: [len + 1], dtype: 'u32' }, contiguous: false },
  ];
  const out = scatterPass(
    b,
    `scatterAdd_csr_${x!.dtype}`,
    x!,
    src!,
    ct,
    csrInputs,
    false,
    [inner, len, J],
    (inAt, _lenAt, jAt) => `
  let end = off_ld(d + 1u);
  for (var q = off_ld(d); q < end; q = q + 1u) {
    acc = acc + s_ld((o * P(${jAt}u) + pm_ld(q)) * P(${inAt}u) + ii);
  }`,
  );
  be.free(perm);
  be.free(offsets);
  return [out];
}

/** Positions 0..J-1 sorted stably by idx[position] (bitonic sort over the next power of two). */
function sortedPositions(be: WebGpuBackend, idx: WebGpuStorage, J: number, len: number): WebGpuStorage {
  const n = 2 ** Math.ceil(Math.log2(Math.max(J, 2)));
  const keys = be.allocUninit('u32', n);
  const decls = [{ name: 'keys', write: true }, { name: 'ids' }, { name: 'errflag', atomic: true }];
  const head = `${paramsDecl(4)}
${bindingDecls(decls)}
${LIB}
${loaders('ids', 'i32')}
// Sort key of a slot: (index, position); padding slots (position >= J) sort last.
fn before(p: u32, q: u32) -> bool {
  if (q >= P(1u)) { return p < P(1u) || p < q; }
  if (p >= P(1u)) { return false; }
  let a = ids_ld(p);
  let b = ids_ld(q);
  return a < b || (a == b && p < q);
}
`;
  const wg = grid(Math.ceil(n / EL_WG), be.limits.maxComputeWorkgroupsPerDimension);
  const bufs = [be.bind(keys), be.bind(idx), { buffer: be.indexErrorBuffer, offset: 0, size: 4 }];
  const init = `${head}
@compute @workgroup_size(${EL_WG})
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let e = gid.x + gid.y * nwg.x * ${EL_WG}u;
  if (e >= P(0u)) { return; }
  keys[e] = e;
  if (e < P(1u)) {
    let id = ids_ld(e);
    if (id < 0i || u32(id) >= P(2u)) { atomicOr(&errflag, 2u); }
  }
}
`;
  be.run({ label: 'scatterAdd_sort_init', code: init, layout: layoutKey(decls) }, bufs, [n, J, len, 0], wg);
  const step = `${head}
@compute @workgroup_size(${EL_WG})
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let e = gid.x + gid.y * nwg.x * ${EL_WG}u;
  if (e >= P(0u)) { return; }
  let k = P(2u);
  let j = P(3u);
  let l = e ^ j;
  if (l <= e) { return; }
  let a = keys[e];
  let c = keys[l];
  let up = (e & k) == 0u;
  // ascending blocks put the smaller key first
  if (before(c, a) == up) { keys[e] = c; keys[l] = a; }
}
`;
  const kernel = { label: 'scatterAdd_sort_step', code: step, layout: layoutKey(decls) };
  for (let k = 2; k <= n; k *= 2) {
    for (let j = k / 2; j >= 1; j /= 2) be.run(kernel, bufs, [n, J, k, j], wg);
  }
  return keys;
}

/** offsets[d] = first sorted slot whose index is >= d, for d in [0, len]. */
function segmentOffsets(
  be: WebGpuBackend,
  idx: WebGpuStorage,
  perm: WebGpuStorage,
  J: number,
  len: number,
): WebGpuStorage {
  const offsets = be.allocUninit('u32', len + 1);
  const decls = [{ name: 'offs', write: true }, { name: 'keys' }, { name: 'ids' }];
  const code = `${paramsDecl(4)}
${bindingDecls(decls)}
${LIB}
${loaders('ids', 'i32')}
@compute @workgroup_size(${EL_WG})
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let d = gid.x + gid.y * nwg.x * ${EL_WG}u;
  if (d > P(0u)) { return; }
  // lower bound over the sorted positions (out-of-range indices sort outside [0, len))
  var lo = 0u;
  var hi = P(1u);
  loop {
    if (lo >= hi) { break; }
    let mid = (lo + hi) / 2u;
    if (ids_ld(keys[mid]) < i32(d)) { lo = mid + 1u; } else { hi = mid; }
  }
  offs[d] = lo;
}
`;
  be.run(
    { label: 'scatterAdd_offsets', code, layout: layoutKey(decls) },
    [be.bind(offsets), be.bind(perm), be.bind(idx)],
    [len, J],
    grid(Math.ceil((len + 1) / EL_WG), be.limits.maxComputeWorkgroupsPerDimension),
  );
  return offsets;
}

export function scatterAlongKernel(
  b: Backend,
  [x, idx, src]: KernelTensor[],
  { axis }: KernelAttrs['scatterAlong'],
): KernelTensor[] {
  checkIdx('scatterAlong', idx!);
  const ct = computeType(x!.dtype, 'scatterAlong');
  const [, len, inner] = splitAt(x!.shape, axis);
  const [, jlen] = splitAt(idx!.shape, axis);
  return [
    scatterPass(
      b,
      `scatterAlong_${x!.dtype}`,
      x!,
      src!,
      ct,
      [{ name: 'ids', t: idx!, contiguous: false }],
      true,
      [inner, len, jlen],
      (inAt, lenAt, jAt) => `
  for (var j = 0u; j < P(${jAt}u); j = j + 1u) {
    let q = (o * P(${jAt}u) + j) * P(${inAt}u) + ii;
    let id = ids_ld(q);
    if (id < 0i || u32(id) >= P(${lenAt}u)) { if (d == 0u) { atomicOr(&errflag, 8u); } continue; }
    if (u32(id) == d) { acc = acc + s_ld(q); }
  }`,
    ),
  ];
}

/**
 * The pass all scatters share: out[i] = x[i] + what `gather` adds from s, with x viewed [outer, len,
 * inner] and i at (o, d, ii). `idxInputs` go between x and s; params are [inner, len, J] in that order.
 */
function scatterPass(
  b: Backend,
  label: string,
  x: KernelTensor,
  src: KernelTensor,
  ct: ComputeType,
  idxInputs: ElemInput[],
  errFlag: boolean,
  [inner, len, J]: [number, number, number],
  gather: (inAt: number, lenAt: number, jAt: number) => string,
): KernelTensor {
  return elementwise(
    b,
    {
      label,
      out: x.dtype,
      raw: false,
      errFlag,
      inputs: [{ name: 'x', t: x, contiguous: true }, ...idxInputs, { name: 's', t: src, contiguous: false }],
      body: (p) => {
        const inAt = p.push(inner);
        const lenAt = p.push(len);
        const jAt = p.push(J);
        return `fn value(i: u32) -> ${ct} {
  let ii = i % P(${inAt}u);
  let t = i / P(${inAt}u);
  let d = t % P(${lenAt}u);
  let o = t / P(${lenAt}u);
  var acc = x_ld(i);${gather(inAt, lenAt, jAt)}
  return acc;
}`;
      },
    },
    x.shape,
  );
}
