// WebGPU (WGSL) kernels of the grouped GEMM over device-side segments: the offsets [E + 1] live in a
// device buffer, so nothing is read back to size the work.
//   forward / input gradient: one dispatch whose grid covers the worst case, ceil(N / 64) + E row tiles
//     (each segment needs at most one partial tile more than its share): workgroup y walks the offsets
//     to find its segment and row tile, and leaves when it has none;
//   weight gradient: one dispatch per expert, dW_e = g_segᵀ x_seg with the reduction length read from
//     the offsets (an empty segment gives zeros).
// The expert weights are read from one stacked [E, O, K] buffer (@dsv3/fp8's stackOnDevice: copied on
// the device once per set of weight storages when the caller passes a StackCache — the MoE layer keeps
// one per projection — else per call), f32, bf16 or f16 (inference: read through core's operandReader
// in the tile loads — bf16 bit-decoded, f16 as native f16 where the device has shader-f16, else
// bit-decoded — with f32 accumulation, as core's GEMM reads its weights).
// These kernels reach the device through core's typed WebGpuBackend (asWebGpu), so this package does
// not import the Node-only WebGPU loader.
import {
  asWebGpu,
  bindingDecls,
  hasShaderF16,
  layoutKey,
  operandReader,
  paramsDecl,
  segmentTileWgsl,
  WGSL_LIB,
  type Backend,
  type BindingDecl,
  type DType,
  type KernelCode,
  type KernelTensor,
  type OperandReader,
  type WebGpuBackend,
  type WebGpuStorage,
} from '@dsv3/core';
import { stackOnDevice } from '@dsv3/fp8';
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
      var v = 0.0; if (${d} < ${D} && k < K) { v = ${buf}_ld(${at}); }
      ${tile}[kk * ${S}u + ${dd}] = v;
    }`;
}

/** How the kernels read A (f32 activations) and B (the weights, f32 / bf16 / f16) as f32. */
interface Readers {
  A: OperandReader;
  B: OperandReader;
}
const readers = (wDType: DType, nativeF16: boolean): Readers => ({
  A: operandReader('A', 'f32', { nativeF16, vec: false }),
  B: operandReader('B', wDType, { nativeF16, vec: false }),
});

const bindings = (r: Readers): BindingDecl[] => [
  { name: 'C', write: true, type: 'f32' },
  { name: 'A', type: r.A.type },
  { name: 'B', type: r.B.type },
  { name: 'Offs', type: 'i32' },
];
const LAYOUT = layoutKey(bindings(readers('f32', false)));

/**
 * Where a workgroup's tile lies, found on the device (core's segmentTileWgsl for 'rows'; for 'wgrad'
 * thread 0 reads the segment bounds, the others get them through workgroupUniformLoad).
 *   'rows': C [rows, N] = x_seg · W_eᵀ (or x_seg · W_e): workgroup y is the y-th row tile of all
 *     segments; parameter 3 is the elements from one expert's weight to the next in the stack.
 *   'wgrad': C = dW_e [M, N] = g_segᵀ · x_seg for the expert e of parameter 3.
 */
function prologue(mode: 'rows' | 'wgrad'): string {
  if (mode === 'rows')
    return `let N = P(0u); let K = P(1u); let E = P(2u);
  ${segmentTileWgsl(BM)}
  let m0 = 0u; let n0 = wid.x * ${BN}u;
  let aOff = sg[1] * K; let bOff = sg[2] * P(3u); let cOff = sg[1] * N;`;
  return `let M = P(0u); let N = P(1u); let e = P(3u);
  if (tid == 0u) { seg = array<u32, 3>(u32(Offs[e]), u32(Offs[e + 1u]), 0u); }
  let sg = workgroupUniformLoad(&seg);
  let K = sg[1] - sg[0];
  let m0 = wid.y * ${BM}u; let n0 = wid.x * ${BN}u;
  let aOff = sg[0] * M; let bOff = sg[0] * N; let cOff = 0u;`;
}

/** C[cOff + m·N + n] = Σ_k op(A)[m, k] · op(B)[k, n] over the element offsets aOff / bOff. */
function gemmCode(mode: 'rows' | 'wgrad', transB: boolean, r: Readers): string {
  // op(A)[m, k]: A stored [M, K] or, transposed (the weight gradient's g), [K, M]; op(B)[k, n]: B stored
  // [K, N] or, transposed (a Linear weight), [N, K].
  const transA = mode === 'wgrad';
  const loadA = loadTile('A', 'm', BM, transA);
  const loadB = loadTile('B', 'n', BN, !transB);
  return /* wgsl */ `${r.A.enable || r.B.enable}
${paramsDecl(4)}
${bindingDecls(bindings(r))}
${WGSL_LIB}
${r.A.code}
${r.B.code}
var<workgroup> As: array<f32, ${BM * BK}>;
var<workgroup> Bs: array<f32, ${BN * BK}>;
var<workgroup> seg: array<u32, 3>;
@compute @workgroup_size(16, 16)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
  let tx = lid.x; let ty = lid.y; let tid = ty * 16u + tx;
  ${prologue(mode)}
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
function kernelFor(mode: 'rows' | 'wgrad', transB: boolean, wDType: DType = 'f32', nativeF16 = false): KernelCode {
  // the f16 loads differ with the device's shader-f16; f32 and bf16 do not
  const native = wDType === 'f16' && nativeF16;
  const key = `${mode}${+transB}_${wDType}${native ? 'n' : ''}`;
  let k = kernels.get(key);
  if (!k) {
    const code = gemmCode(mode, transB, readers(wDType, native));
    kernels.set(key, (k = { label: `moe_grouped_gemm_${key}`, code, layout: LAYOUT }));
  }
  return k;
}

function checkDType(op: string, dtypes: readonly DType[], ...ts: KernelTensor[]): void {
  for (const t of ts)
    if (!dtypes.includes(t.dtype))
      throw new TypeError(`${op} on webgpu takes ${dtypes.join(' or ')} here, got ${t.dtype} (use impl 'composed')`);
}

function checkBinding(be: WebGpuBackend, op: string, ...ss: WebGpuStorage[]): void {
  for (const s of ss) {
    if (s.byteLength > be.bindingLimit)
      throw new RangeError(
        `${op}: a ${s.byteLength}-byte operand exceeds the storage binding limit (${be.bindingLimit} bytes); split the batch`,
      );
  }
}

export function webgpuGroupedMatmul(
  b: Backend,
  inputs: KernelTensor[],
  { transB, cache }: GroupedMatmulAttrs,
): KernelTensor[] {
  const be = asWebGpu(b, 'moe grouped GEMM');
  const [x, offsets, ...ws] = inputs;
  checkDType('moe.groupedMatmul', ['f32'], x!);
  checkDType('moe.groupedMatmul', ['f32', 'bf16', 'f16'], ...ws);
  const wDType = ws[0]!.dtype;
  const wBytes = wDType === 'f32' ? 4 : 2;
  checkDType('moe.groupedMatmul', [wDType], ...ws);
  const N = x!.shape[0]!;
  const K = x!.shape[1]!;
  const O = transB ? ws[0]!.shape[0]! : ws[0]!.shape[1]!;
  const E = ws.length;
  const out = be.allocUninit('f32', N * O);
  if (N === 0) return [{ storage: out, shape: [N, O], dtype: 'f32' }];
  const xs = be.input(x!);
  const stackBytes = E * Math.ceil((O * K * wBytes) / 4) * 4;
  if (stackBytes > be.bindingLimit)
    throw new RangeError(
      `moe.groupedMatmul: the ${E} stacked expert weights take ${stackBytes} bytes, over the storage binding limit (${be.bindingLimit} bytes); hold fewer experts per device (expert parallelism)`,
    );
  const { stacked, strideBytes, temporary } = stackOnDevice(be, ws, cache);
  checkBinding(be, 'moe.groupedMatmul', xs, out);
  const gx = Math.ceil(O / BN);
  const gy = Math.ceil(N / BM) + E;
  const max = be.limits.maxComputeWorkgroupsPerDimension;
  if (gx > max || gy > max)
    throw new RangeError(
      `moe grouped GEMM: ${N}x${O} over ${E} experts needs more than ${max} workgroups along one axis`,
    );
  const offs = be.input(offsets!);
  be.run(
    kernelFor('rows', transB, wDType, hasShaderF16(be)),
    [be.bind(out), be.bind(xs), be.bind(stacked), be.bind(offs)],
    [O, K, E, strideBytes / wBytes],
    [gx, gy, 1],
  );
  if (temporary) be.free(stacked);
  return [{ storage: out, shape: [N, O], dtype: 'f32' }];
}

export function webgpuGroupedWeightGrad(
  b: Backend,
  [g, x, offsets]: KernelTensor[],
  { experts }: GroupedWeightGradAttrs,
): KernelTensor[] {
  const be = asWebGpu(b, 'moe grouped GEMM');
  checkDType('moe.groupedWeightGrad', ['f32'], g!, x!);
  const O = g!.shape[1]!;
  const K = x!.shape[1]!;
  if (g!.shape[0] === 0)
    return experts.map(() => ({ storage: be.alloc('f32', O * K), shape: [O, K], dtype: 'f32' as DType }));
  const gs = be.input(g!);
  const xs = be.input(x!);
  const offs = be.input(offsets!);
  checkBinding(be, 'moe.groupedWeightGrad', gs, xs);
  return experts.map((e) => {
    const out = be.allocUninit('f32', O * K);
    // dW_e [O, K] = g_segᵀ [O, c] · x_seg [c, K]; zeros when the segment is empty (c = 0)
    be.run(
      kernelFor('wgrad', false),
      [be.bind(out), be.bind(gs), be.bind(xs), be.bind(offs)],
      [O, K, 0, e],
      [Math.ceil(K / BN), Math.ceil(O / BM), 1],
    );
    return { storage: out, shape: [O, K], dtype: 'f32' as DType };
  });
}
