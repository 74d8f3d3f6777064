// Batched matrix product [.., M, K] @ [.., K, N] (op(A) / op(B) transposed on request, batch dims
// broadcast) as a tiled WGSL GEMM: A and B tiles staged in workgroup memory (k-major, so the inner
// loop reads vec4s), each thread accumulating a TM x TN register tile in vec4s; vec4 global loads
// when the contiguous axis is a multiple of 4, bounds-checked edges for ragged shapes. f32 writes
// its output directly; other dtypes compute in f32 and are packed afterwards. f16 operands load as
// f16 (half the bytes) where the device has shader-f16 (half.ts), bit-decoded elsewhere; f16
// products go to the subgroup-matrix (tensor core) kernel when the device has one that passed its
// self-test.
import type { Backend, KernelTensor } from '../../backend.js';
import { planMatmul } from '../../cpu/matmul.js';
import type { DType } from '../../dtype.js';
import type { KernelAttrs } from '../../kernel-types.js';
import { sizeOf } from '../../shape.js';
import { asWebGpu, type WebGpuBackend, type WebGpuStorage } from '../backend.js';
import { computeType } from '../dtypes.js';
import { hasShaderF16, operandReader } from '../half.js';
import { bindingDecls, layoutKey, LIB, paramsDecl } from '../wgsl.js';
import { coalesce } from './elem.js';
import { castKernel } from './elementwise.js';
import { subgroupMatmul, subgroupMatmulApplies } from './matmul-subgroup.js';

export interface TileConfig {
  /** threads along N and M */
  wgx: number;
  wgy: number;
  /** outputs per thread along M and N (multiples of 4) */
  tm: number;
  tn: number;
  bk: number;
}

export const TILE_LARGE: TileConfig = { wgx: 16, wgy: 16, tm: 8, tn: 8, bk: 16 };
export const TILE_MEDIUM: TileConfig = { wgx: 16, wgy: 16, tm: 4, tn: 4, bk: 16 };
export const TILE_SMALL_M: TileConfig = { wgx: 16, wgy: 4, tm: 4, tn: 4, bk: 32 };
/** CPU "GPUs" (lavapipe, SwiftShader) run each workgroup on one core: fewer threads, deeper k. */
export const TILE_SOFTWARE: TileConfig = { wgx: 8, wgy: 8, tm: 8, tn: 8, bk: 32 };

const isSoftware = (be: WebGpuBackend): boolean =>
  be.adapterInfo.isFallbackAdapter === true ||
  /llvmpipe|lavapipe|swiftshader/i.test(`${be.adapterInfo.device} ${be.adapterInfo.description}`);

/** Picks a tile for the problem (tests may force one). */
export function chooseTile(m: number, n: number, batch: number, be: WebGpuBackend): TileConfig {
  if (m <= 16 && n > 16) return TILE_SMALL_M;
  if (isSoftware(be) && m >= 64 && n >= 64) return TILE_SOFTWARE;
  const bigTiles = Math.ceil(m / 128) * Math.ceil(n / 128) * batch;
  const smem = 2 * TILE_LARGE.bk * 128 * 4;
  if (m >= 128 && n >= 128 && bigTiles >= 8 && smem <= be.limits.maxComputeWorkgroupStorageSize) return TILE_LARGE;
  return TILE_MEDIUM;
}

/** What is baked into a GEMM shader; transposes and batch shape are uniforms. */
export interface GemmShape {
  /** vec4 global loads of A / B (their contiguous axis is a multiple of 4) */
  vecA: boolean;
  vecB: boolean;
}

/** Batch dims (after coalescing) the kernel can decode. */
export const MAX_BATCH_DIMS = 6;

export function gemmCode(t: TileConfig, g: GemmShape, aType: DType, bType: DType, nativeF16: boolean): string {
  const BM = t.wgy * t.tm;
  const BN = t.wgx * t.tn;
  const BK = t.bk;
  const NT = t.wgx * t.wgy;
  const TM4 = t.tm / 4;
  const TN4 = t.tn / 4;
  const ra = operandReader('A', aType, { nativeF16, vec: g.vecA });
  const rb = operandReader('B', bType, { nativeF16, vec: g.vecB });
  const vecA = ra.vec;
  const vecB = rb.vec;
  const decls = [
    { name: 'C', write: true, type: 'f32' },
    { name: 'A', type: ra.type },
    { name: 'B', type: rb.type },
  ];
  // Params: 0 M, 1 N, 2 K, 3 batch base, 4 transA, 5 transB, 6 batch rank, then per batch dim
  // (size, a stride, b stride), outermost first.
  const nparams = 7 + 3 * MAX_BATCH_DIMS;
  const batchDecode = batchDecodeWgsl();
  // A tile -> As[k * BM + m]; B tile -> Bs[k * BN + n]. Both layouts are in the shader; the
  // transpose flags are uniforms.
  const loadANormal = vecA
    ? `for (var l = tid; l < ${(BM * BK) / 4}u; l = l + ${NT}u) {
      let row = l / ${BK / 4}u; let kv = (l % ${BK / 4}u) * 4u;
      let m = m0 + row; let k = k0 + kv;
      var v = vec4<f32>(0.0);
      if (m < M && k < K) { v = A_ld4((aOff + m * K + k) / 4u); }
      stA((kv) * ${BM}u + row, v.x); stA((kv + 1u) * ${BM}u + row, v.y); stA((kv + 2u) * ${BM}u + row, v.z); stA((kv + 3u) * ${BM}u + row, v.w);
    }`
    : `for (var l = tid; l < ${BM * BK}u; l = l + ${NT}u) {
      let row = l / ${BK}u; let kk = l % ${BK}u;
      let m = m0 + row; let k = k0 + kk;
      var v = 0.0;
      if (m < M && k < K) { v = A_ld(aOff + m * K + k); }
      stA(kk * ${BM}u + row, v);
    }`;
  const loadATrans = vecA
    ? `for (var l = tid; l < ${(BM * BK) / 4}u; l = l + ${NT}u) {
      let kr = l / ${BM / 4}u; let mv = (l % ${BM / 4}u) * 4u;
      let m = m0 + mv; let k = k0 + kr;
      var v = vec4<f32>(0.0);
      if (m < M && k < K) { v = A_ld4((aOff + k * M + m) / 4u); }
      let o = kr * ${BM}u + mv;
      As[o >> 2u] = v;
    }`
    : `for (var l = tid; l < ${BM * BK}u; l = l + ${NT}u) {
      let kr = l / ${BM}u; let mm = l % ${BM}u;
      let m = m0 + mm; let k = k0 + kr;
      var v = 0.0;
      if (m < M && k < K) { v = A_ld(aOff + k * M + m); }
      stA(kr * ${BM}u + mm, v);
    }`;
  const loadBNormal = vecB
    ? `for (var l = tid; l < ${(BN * BK) / 4}u; l = l + ${NT}u) {
      let kr = l / ${BN / 4}u; let nv = (l % ${BN / 4}u) * 4u;
      let n = n0 + nv; let k = k0 + kr;
      var v = vec4<f32>(0.0);
      if (n < N && k < K) { v = B_ld4((bOff + k * N + n) / 4u); }
      let o = kr * ${BN}u + nv;
      Bs[o >> 2u] = v;
    }`
    : `for (var l = tid; l < ${BN * BK}u; l = l + ${NT}u) {
      let kr = l / ${BN}u; let nn = l % ${BN}u;
      let n = n0 + nn; let k = k0 + kr;
      var v = 0.0;
      if (n < N && k < K) { v = B_ld(bOff + k * N + n); }
      stB(kr * ${BN}u + nn, v);
    }`;
  const loadBTrans = vecB
    ? `for (var l = tid; l < ${(BN * BK) / 4}u; l = l + ${NT}u) {
      let row = l / ${BK / 4}u; let kv = (l % ${BK / 4}u) * 4u;
      let n = n0 + row; let k = k0 + kv;
      var v = vec4<f32>(0.0);
      if (n < N && k < K) { v = B_ld4((bOff + n * K + k) / 4u); }
      stB(kv * ${BN}u + row, v.x); stB((kv + 1u) * ${BN}u + row, v.y); stB((kv + 2u) * ${BN}u + row, v.z); stB((kv + 3u) * ${BN}u + row, v.w);
    }`
    : `for (var l = tid; l < ${BN * BK}u; l = l + ${NT}u) {
      let row = l / ${BK}u; let kk = l % ${BK}u;
      let n = n0 + row; let k = k0 + kk;
      var v = 0.0;
      if (n < N && k < K) { v = B_ld(bOff + n * K + k); }
      stB(kk * ${BN}u + row, v);
    }`;
  const loadA = `if (transA) {\n    ${loadATrans}\n    } else {\n    ${loadANormal}\n    }`;
  const loadB = `if (transB) {\n    ${loadBTrans}\n    } else {\n    ${loadBNormal}\n    }`;
  // Each thread owns TM/4 x TN/4 blocks of 4x4 outputs, interleaved across the tile (block i of
  // rows starts at i * 4 * wgy + 4 * ty): vec4 reads of the workgroup tiles hit consecutive
  // addresses across a warp, and neighbouring threads store neighbouring columns.
  // C is written with scalar stores (a small share of the traffic), bounds-checked at the edges.
  const store = `for (var i = 0u; i < ${t.tm}u; i = i + 1u) {
    let m = m0 + (i / 4u) * ${4 * t.wgy}u + ty * 4u + (i % 4u);
    if (m >= M) { break; }
    for (var j = 0u; j < ${TN4}u; j = j + 1u) {
      let v = acc[i * ${TN4}u + j];
      let n = n0 + j * ${4 * t.wgx}u + tx * 4u;
      let o = cOff + m * N + n;
      if (n < N) { C[o] = v.x; }
      if (n + 1u < N) { C[o + 1u] = v.y; }
      if (n + 2u < N) { C[o + 2u] = v.z; }
      if (n + 3u < N) { C[o + 3u] = v.w; }
    }
  }`;
  const enable = ra.enable || rb.enable;
  return `${enable}
${paramsDecl(nparams)}
${bindingDecls(decls)}
${LIB}
${ra.code}
${rb.code}
// k-major tiles as vec4s: the inner loop reads TM/4 + TN/4 vec4s per k.
var<workgroup> As: array<vec4<f32>, ${(BM * BK) / 4}>;
var<workgroup> Bs: array<vec4<f32>, ${(BN * BK) / 4}>;
fn stA(i: u32, v: f32) { As[i >> 2u][i & 3u] = v; }
fn stB(i: u32, v: f32) { Bs[i >> 2u][i & 3u] = v; }
@compute @workgroup_size(${t.wgx}, ${t.wgy})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
  let M = P(0u);
  let N = P(1u);
  let K = P(2u);
  let z = wid.z + P(3u);
  let transA = P(4u) != 0u;
  let transB = P(5u) != 0u;
  ${batchDecode}
  let aOff = aMat * M * K;
  let bOff = bMat * K * N;
  let cOff = z * M * N;
  let tx = lid.x;
  let ty = lid.y;
  let tid = ty * ${t.wgx}u + tx;
  let m0 = wid.y * ${BM}u;
  let n0 = wid.x * ${BN}u;
  var acc: array<vec4<f32>, ${t.tm * TN4}>;
  for (var k0 = 0u; k0 < K; k0 = k0 + ${BK}u) {
    ${loadA}
    ${loadB}
    workgroupBarrier();
    for (var kk = 0u; kk < ${BK}u; kk = kk + 1u) {
      var a: array<vec4<f32>, ${TM4}>;
      for (var i = 0u; i < ${TM4}u; i = i + 1u) { a[i] = As[kk * ${BM / 4}u + i * ${t.wgy}u + ty]; }
      for (var j = 0u; j < ${TN4}u; j = j + 1u) {
        let bv = Bs[kk * ${BN / 4}u + j * ${t.wgx}u + tx];
        for (var i = 0u; i < ${TM4}u; i = i + 1u) {
          let av = a[i];
          acc[(i * 4u) * ${TN4}u + j] = fma(vec4<f32>(av.x), bv, acc[(i * 4u) * ${TN4}u + j]);
          acc[(i * 4u + 1u) * ${TN4}u + j] = fma(vec4<f32>(av.y), bv, acc[(i * 4u + 1u) * ${TN4}u + j]);
          acc[(i * 4u + 2u) * ${TN4}u + j] = fma(vec4<f32>(av.z), bv, acc[(i * 4u + 2u) * ${TN4}u + j]);
          acc[(i * 4u + 3u) * ${TN4}u + j] = fma(vec4<f32>(av.w), bv, acc[(i * 4u + 3u) * ${TN4}u + j]);
        }
      }
    }
    workgroupBarrier();
  }
  ${store}
}
`;
}

/** WGSL turning the batch index z into the matrix indices of A and B (params 6.. hold the dims). */
export function batchDecodeWgsl(): string {
  return `var aMat = 0u;
  var bMat = 0u;
  var r = z;
  let rank = P(6u);
  for (var d = 0u; d < rank; d = d + 1u) {
    let p = 7u + 3u * (rank - 1u - d);
    let n = P(p);
    let c = r % n;
    r = r / n;
    aMat = aMat + c * P(p + 1u);
    bMat = bMat + c * P(p + 2u);
  }`;
}

/** Batch dims of both operands broadcast to the output's, coalesced, in matrix units. */
export function batchPlan(
  aShape: readonly number[],
  bShape: readonly number[],
  batchShape: number[],
): { dims: number[]; sa: number[]; sb: number[] } {
  const strides = (own: readonly number[]): number[] => {
    const out = new Array<number>(batchShape.length).fill(0);
    let acc = 1;
    for (let i = own.length - 1; i >= 0; i--) {
      const t = batchShape.length - own.length + i;
      out[t] = own[i] === 1 ? 0 : acc;
      acc *= own[i]!;
    }
    return out;
  };
  const c = coalesce(batchShape, [strides(aShape.slice(0, -2)), strides(bShape.slice(0, -2))]);
  return { dims: c.shape, sa: c.strides[0]!, sb: c.strides[1]! };
}

export interface GemmArgs {
  a: WebGpuStorage;
  b: WebGpuStorage;
  aType: DType;
  bType: DType;
  aShape: readonly number[];
  bShape: readonly number[];
  transA: boolean;
  transB: boolean;
  /** force a tile configuration (tests, benchmarks) */
  tile?: TileConfig;
}

/** Records the tiled GEMM; returns f32 storage holding the [batch.., M, N] result. */
export function tiledGemm(be: WebGpuBackend, args: GemmArgs): { out: WebGpuStorage; shape: number[] } {
  const p = planMatmul(args.aShape, args.bShape, args.transA, args.transB);
  const { m, n, k } = p;
  const shape = [...p.batchShape, m, n];
  const batch = sizeOf(p.batchShape);
  const count = batch * m * n;
  const out = be.allocUninit('f32', count);
  if (count === 0) return { out, shape };
  for (const [what, bytes] of [
    ['A', args.a.byteLength],
    ['B', args.b.byteLength],
    ['the result', count * 4],
  ] as const) {
    if (bytes > be.bindingLimit) {
      throw new RangeError(
        `webgpu matmul: ${what} (${bytes} bytes) exceeds the storage binding limit of ${be.bindingLimit} bytes (maxStorageBufferBindingSize); split the batch`,
      );
    }
  }
  const bp = batchPlan(args.aShape, args.bShape, p.batchShape);
  const tile = args.tile ?? chooseTile(m, n, batch, be);
  if (bp.dims.length > MAX_BATCH_DIMS)
    throw new RangeError(`webgpu matmul: more than ${MAX_BATCH_DIMS} independent batch dimensions; reshape first`);
  const g: GemmShape = {
    vecA: (args.transA ? m : k) % 4 === 0,
    vecB: (args.transB ? k : n) % 4 === 0,
  };
  const nativeF16 = hasShaderF16(be) && (args.aType === 'f16' || args.bType === 'f16');
  const code = gemmCode(tile, g, args.aType, args.bType, nativeF16);
  const decls = [{ name: 'C', write: true }, { name: 'A' }, { name: 'B' }];
  const kernel = {
    label: `matmul_${args.aType}_${args.bType}${nativeF16 ? '_native' : ''}_${tile.wgy * tile.tm}x${tile.wgx * tile.tn}`,
    code,
    layout: layoutKey(decls),
  };
  const BM = tile.wgy * tile.tm;
  const BN = tile.wgx * tile.tn;
  const gx = Math.ceil(n / BN);
  const gy = Math.ceil(m / BM);
  const maxDim = be.limits.maxComputeWorkgroupsPerDimension;
  if (gx > maxDim || gy > maxDim)
    throw new RangeError(`webgpu matmul: ${m}x${n} needs more than ${maxDim} workgroups along one axis`);
  const tail: number[] = [];
  bp.dims.forEach((d, i) => tail.push(d, bp.sa[i]!, bp.sb[i]!));
  for (let z0 = 0; z0 < batch; z0 += maxDim) {
    const nz = Math.min(maxDim, batch - z0);
    be.run(
      kernel,
      [be.bind(out), be.bind(args.a), be.bind(args.b)],
      [m, n, k, z0, +args.transA, +args.transB, bp.dims.length, ...tail],
      [gx, gy, nz],
    );
  }
  return { out, shape };
}

export function matmulKernel(
  b: Backend,
  [a, bt]: KernelTensor[],
  { transA, transB }: KernelAttrs['matmul'],
): KernelTensor[] {
  const be = asWebGpu(b);
  // Weight-only bf16 / f16: f32 activations against a 16-bit weight, decoded in the tile loads, f32 result.
  const weightOnly = a!.dtype === 'f32' && (bt!.dtype === 'bf16' || bt!.dtype === 'f16');
  if (a!.dtype !== bt!.dtype && !weightOnly)
    throw new TypeError(`matmul: dtypes differ (${a!.dtype} and ${bt!.dtype})`);
  computeType(a!.dtype, 'matmul');
  let args: GemmArgs = {
    a: be.input(a!),
    b: be.input(bt!),
    aType: a!.dtype,
    bType: bt!.dtype,
    aShape: a!.shape,
    bShape: bt!.shape,
    transA,
    transB,
  };
  // An f16 weight meets tensor cores as f16 × f16: the activations are rounded to f16 for that GEMM
  // only (accumulation and result stay f32). Smaller products keep f32 activations in the tiled kernel.
  let halfA: WebGpuStorage | null = null;
  if (weightOnly && bt!.dtype === 'f16' && subgroupMatmulApplies(be, { ...args, aType: 'f16' })) {
    halfA = castKernel(be, [a!], { dtype: 'f16' })[0]!.storage as WebGpuStorage;
    args = { ...args, a: halfA, aType: 'f16' };
  }
  const r = args.aType === 'f16' && subgroupMatmulApplies(be, args) ? subgroupMatmul(be, args) : tiledGemm(be, args);
  if (halfA) be.free(halfA);
  if (a!.dtype === 'f32') return [{ storage: r.out, shape: r.shape, dtype: 'f32' }];
  const [y] = castKernel(be, [{ storage: r.out, shape: r.shape, dtype: 'f32' }], { dtype: a!.dtype });
  be.free(r.out);
  return [y!];
}
