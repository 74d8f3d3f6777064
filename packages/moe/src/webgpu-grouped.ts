// WebGPU (WGSL) kernels of the grouped GEMM: one tiled f32 GEMM per non-empty expert segment, each a
// dispatch over the same x / y buffers with the segment's row offset passed as a parameter (storage
// binding offsets would need 256-byte alignment, row offsets do not), all recorded into the backend's
// command batch. They reach the device through core's typed WebGpuBackend (asWebGpu), so this package
// does not import the Node-only WebGPU loader.
import {
  asWebGpu,
  bindingDecls,
  layoutKey,
  paramsDecl,
  type Backend,
  type BindingDecl,
  type DType,
  type KernelCode,
  type KernelTensor,
  type WebGpuBackend,
  type WebGpuStorage,
} from '@dsv3/core';
import type { GroupedMatmulAttrs, GroupedWeightGradAttrs } from './grouped-kernels';

const BM = 64;
const BN = 64;
const BK = 16;

/**
 * WGSL loop that stages a [BK, S] tile of one GEMM operand in workgroup memory, indexed by (k, d) with d
 * the operand's free dimension (m of A, n of B, bound D, tile origin d0). `dMajor`: the operand is
 * stored [K, D] (then the loop walks d fastest, for coalesced reads), else [D, K].
 */
function loadTile(buf: 'A' | 'B', d: 'm' | 'n', S: number, dMajor: boolean): string {
  const [D, dd, off, tile] = [d.toUpperCase(), `${d}${d}`, `${buf.toLowerCase()}Off`, `${buf}s`];
  const split = dMajor ? `let kk = l / ${S}u; let ${dd} = l % ${S}u;` : `let ${dd} = l / ${BK}u; let kk = l % ${BK}u;`;
  const at = dMajor ? `${off} + k * ${D} + ${d}` : `${off} + ${d} * K + k`;
  return `for (var l = tid; l < ${S * BK}u; l = l + 256u) {
      ${split} let ${d} = ${d}0 + ${dd}; let k = k0 + kk;
      var v = 0.0; if (${d} < ${D} && k < K) { v = ${buf}[${at}]; }
      ${tile}[kk * ${S}u + ${dd}] = v;
    }`;
}

const BINDINGS: BindingDecl[] = [
  { name: 'C', write: true, type: 'f32' },
  { name: 'A', type: 'f32' },
  { name: 'B', type: 'f32' },
];

/** C[cOff + m·N + n] = Σ_k op(A)[m, k] · op(B)[k, n] over the element offsets aOff / bOff. */
function gemmCode(transA: boolean, transB: boolean): string {
  // op(A)[m, k]: A stored [M, K] or, transposed, [K, M]; op(B)[k, n]: B stored [K, N] or, transposed
  // (a Linear weight), [N, K].
  const loadA = loadTile('A', 'm', BM, transA);
  const loadB = loadTile('B', 'n', BN, !transB);
  return /* wgsl */ `
${paramsDecl(6)}
${bindingDecls(BINDINGS)}
var<workgroup> As: array<f32, ${BM * BK}>;
var<workgroup> Bs: array<f32, ${BN * BK}>;
@compute @workgroup_size(16, 16)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
  let M = P(0u); let N = P(1u); let K = P(2u);
  let aOff = P(3u); let bOff = P(4u); let cOff = P(5u);
  let tx = lid.x; let ty = lid.y; let tid = ty * 16u + tx;
  let m0 = wid.y * ${BM}u; let n0 = wid.x * ${BN}u;
  var acc: array<vec4<f32>, 4>;
  for (var k0 = 0u; k0 < K; k0 = k0 + ${BK}u) {
    ${loadA}
    ${loadB}
    workgroupBarrier();
    for (var kk = 0u; kk < ${BK}u; kk = kk + 1u) {
      let ao = kk * ${BM}u + ty * 4u;
      let bo = kk * ${BN}u + tx * 4u;
      let b = vec4<f32>(Bs[bo], Bs[bo + 1u], Bs[bo + 2u], Bs[bo + 3u]);
      acc[0] = fma(vec4<f32>(As[ao]), b, acc[0]);
      acc[1] = fma(vec4<f32>(As[ao + 1u]), b, acc[1]);
      acc[2] = fma(vec4<f32>(As[ao + 2u]), b, acc[2]);
      acc[3] = fma(vec4<f32>(As[ao + 3u]), b, acc[3]);
    }
    workgroupBarrier();
  }
  for (var i = 0u; i < 4u; i = i + 1u) {
    let m = m0 + ty * 4u + i;
    if (m >= M) { break; }
    let v = acc[i];
    let n = n0 + tx * 4u;
    let o = cOff + m * N + n;
    if (n < N) { C[o] = v.x; }
    if (n + 1u < N) { C[o + 1u] = v.y; }
    if (n + 2u < N) { C[o + 2u] = v.z; }
    if (n + 3u < N) { C[o + 3u] = v.w; }
  }
}
`;
}

const kernels = new Map<string, KernelCode>();
function kernelFor(transA: boolean, transB: boolean): KernelCode {
  const key = `${+transA}${+transB}`;
  let k = kernels.get(key);
  if (!k)
    kernels.set(
      key,
      (k = {
        label: `moe_grouped_gemm${transA ? '_tA' : ''}${transB ? '_tB' : ''}`,
        code: gemmCode(transA, transB),
        layout: layoutKey(BINDINGS),
      }),
    );
  return k;
}

function checkF32(op: string, ...ts: KernelTensor[]): void {
  for (const t of ts)
    if (t.dtype !== 'f32')
      throw new TypeError(`${op} on webgpu supports f32 only, got ${t.dtype} (use impl 'composed')`);
}

function checkBinding(be: WebGpuBackend, op: string, ...ss: WebGpuStorage[]): void {
  for (const s of ss) {
    if (s.byteLength > be.bindingLimit)
      throw new RangeError(
        `${op}: a ${s.byteLength}-byte operand exceeds the storage binding limit (${be.bindingLimit} bytes); split the batch`,
      );
  }
}

/** One segment's product C = op(A) · op(B), [M, K] x [K, N], at element offsets into shared buffers. */
interface SegmentGemm {
  transA: boolean;
  transB: boolean;
  c: WebGpuStorage;
  a: WebGpuStorage;
  b: WebGpuStorage;
  M: number;
  N: number;
  K: number;
  aOff: number;
  bOff: number;
  cOff: number;
}

function dispatch(be: WebGpuBackend, { transA, transB, c, a, b, M, N, K, aOff, bOff, cOff }: SegmentGemm): void {
  const gx = Math.ceil(N / BN);
  const gy = Math.ceil(M / BM);
  const max = be.limits.maxComputeWorkgroupsPerDimension;
  if (gx > max || gy > max)
    throw new RangeError(`moe grouped GEMM: ${M}x${N} needs more than ${max} workgroups along one axis`);
  be.run(kernelFor(transA, transB), [be.bind(c), be.bind(a), be.bind(b)], [M, N, K, aOff, bOff, cOff], [gx, gy, 1]);
}

export function webgpuGroupedMatmul(
  b: Backend,
  inputs: KernelTensor[],
  { offsets, transB }: GroupedMatmulAttrs,
): KernelTensor[] {
  const be = asWebGpu(b, 'moe grouped GEMM');
  const [x, ...ws] = inputs;
  checkF32('moe.groupedMatmul', x!, ...ws);
  const N = x!.shape[0]!;
  const K = x!.shape[1]!;
  const O = transB ? ws[0]!.shape[0]! : ws[0]!.shape[1]!;
  const xs = be.input(x!);
  const out = be.allocUninit('f32', N * O);
  checkBinding(be, 'moe.groupedMatmul', xs, out);
  for (let e = 0; e < ws.length; e++) {
    const r0 = offsets[e]!;
    const c = offsets[e + 1]! - r0;
    if (c === 0) continue;
    const w = be.input(ws[e]!);
    checkBinding(be, 'moe.groupedMatmul', w);
    dispatch(be, { transA: false, transB, c: out, a: xs, b: w, M: c, N: O, K, aOff: r0 * K, bOff: 0, cOff: r0 * O });
  }
  return [{ storage: out, shape: [N, O], dtype: 'f32' }];
}

export function webgpuGroupedWeightGrad(
  b: Backend,
  [g, x]: KernelTensor[],
  { offsets, experts }: GroupedWeightGradAttrs,
): KernelTensor[] {
  const be = asWebGpu(b, 'moe grouped GEMM');
  checkF32('moe.groupedWeightGrad', g!, x!);
  const O = g!.shape[1]!;
  const K = x!.shape[1]!;
  const gs = be.input(g!);
  const xs = be.input(x!);
  checkBinding(be, 'moe.groupedWeightGrad', gs, xs);
  return experts.map((e) => {
    const r0 = offsets[e]!;
    const c = offsets[e + 1]! - r0;
    if (c === 0) return { storage: be.alloc('f32', O * K), shape: [O, K], dtype: 'f32' as DType };
    const out = be.allocUninit('f32', O * K);
    // dW_e [O, K] = g_segᵀ [O, c] · x_seg [c, K]
    dispatch(be, {
      transA: true,
      transB: false,
      c: out,
      a: gs,
      b: xs,
      M: O,
      N: K,
      K: c,
      aOff: r0 * O,
      bOff: r0 * K,
      cOff: 0,
    });
    return { storage: out, shape: [O, K], dtype: 'f32' as DType };
  });
}
