// WebGPU kernels of the FP8 ops, registered under 'webgpu' in @dsv3/core's kernel registry. They
// use only the backend's public dispatch surface (allocUninit / input / bind / run, its pipeline
// cache keyed by shader source, its command batching), so this package needs no core internals.
//
// QUANTIZATION runs in two dispatches: (1) one workgroup per tile reduces amax (integer max of the
// bits, in a workgroup atomic) and writes the tile's scale; (2) one thread per output u32 word
// encodes its four bytes (x / s correctly rounded, then E4M3 round-to-nearest-even, saturating).
// Writing whole words from one thread keeps any shape and block size race-free, ragged ones
// included. Results are bit-identical to the CPU (see wgsl.ts for how).
//
// NON-FINITE INPUT cannot throw from a GPU kernel: a tile holding NaN/±Inf gets a NaN scale and NaN
// bytes (0x7f, sign kept), and a flag is raised that `checkFp8Errors(backend)` reports (and clears)
// as a RangeError. The CPU kernels throw at once.
//
// THE GEMM (NT, C[M, N] = Σ_kb sa[m, kb] · sb[n, kb] · Σ_{k in kb} qa[m, k] qb[n, k]): a 64 x 64
// output tile per workgroup of 16 x 16 threads, 4 x 4 outputs per thread. For each 128-wide K block
// the FP8 tiles (BK = 16 or 32 bytes of K at a time, u32 loads when K % 4 == 0) are decoded into
// workgroup memory — f32 by default, or f16 on request where the device has shader-f16 (E4M3 values
// are exact in f16; halves the workgroup memory; products are still formed and summed in f32) — and
// multiplied into a per-block f32 partial, which is then promoted: acc += partial * (sa * sb), in
// f32, the scheme of DeepGEMM with N_C = 128. Any M, N, K (ragged edges zero-filled), bScale per
// 128x128 block or per row. 128 x 128 tiles (8 x 8 per thread) for large outputs, 64 x 64 otherwise.
import { fromRaw, randn, registerKernel, type Backend, type DType, type KernelTensor, type Storage, type Tensor } from '@dsv3/core';
import { FP8_OPS, type DequantAttrs, type GemmAttrs, type QuantAttrs } from '../tensor/attrs';
import { FP8_LIB, bindings, layoutOf, paramsDecl, type Binding } from './wgsl';

/** What these kernels use of core's WebGPU backend (structural, so no core internals are imported). */
export interface GpuStorageLike extends Storage {
  readonly buffer: GPUBuffer;
}

export interface GpuBackendLike extends Backend {
  readonly device: GPUDevice;
  readonly limits: { maxComputeWorkgroupsPerDimension: number; maxComputeWorkgroupStorageSize: number };
  readonly features: { shaderF16: boolean; subgroups?: boolean; subgroupMatrix?: boolean };
  readonly bindingLimit: number;
  allocUninit(dtype: DType, size: number): GpuStorageLike;
  input(t: KernelTensor): GpuStorageLike;
  bind(s: GpuStorageLike, offset?: number, bytes?: number): GPUBufferBinding;
  run(kernel: { label: string; code: string; layout: string }, buffers: GPUBufferBinding[], params: ArrayLike<number>, workgroups: readonly [number, number, number]): void;
  flush(): void;
  free(storage: Storage): void;
  /** set by core when its own subgroup-matrix GEMM passed a self-test on this device */
  readonly subgroupMatrixGemm?: { config: { componentType: string; resultComponentType: string; M: number; N: number; K: number }; legacySyntax: boolean } | null;
  readonly adapterInfo?: { subgroupMinSize?: number; subgroupMaxSize?: number };
}

export function asGpu(b: Backend): GpuBackendLike {
  const g = b as Partial<GpuBackendLike>;
  if (typeof g.run !== 'function' || typeof g.allocUninit !== 'function' || typeof g.bind !== 'function' || !g.device) {
    throw new Error(`@dsv3/fp8: the '${b.name}' backend does not look like @dsv3/core's WebGPU backend (run/allocUninit/bind/device missing)`);
  }
  return g as GpuBackendLike;
}

// ---- error flags (non-finite inputs) ----

const ERR_BITS = { quantizeAct: 1, quantizeActT: 2, quantizeWeight: 4 } as const;
const flags = new WeakMap<GPUDevice, GPUBuffer>();

function errorBuffer(be: GpuBackendLike): GPUBuffer {
  let b = flags.get(be.device);
  if (!b) {
    // STORAGE | COPY_SRC | COPY_DST
    b = be.device.createBuffer({ size: 16, usage: 0x80 | 0x04 | 0x08, label: 'dsv3:fp8-errors' });
    be.device.queue.writeBuffer(b, 0, new Uint32Array(4));
    flags.set(be.device, b);
  }
  return b;
}

/**
 * WebGPU: resolves once every FP8 kernel recorded so far has run, and rejects with a RangeError if
 * a quantization met NaN/±Inf input since the last check (the flag is cleared). The affected
 * tiles hold NaN scales and NaN bytes. CPU backends throw at the call instead; there this resolves.
 */
export async function checkFp8Errors(backend: Backend): Promise<void> {
  if (backend.name !== 'webgpu') return;
  const be = asGpu(backend);
  const flag = flags.get(be.device);
  if (!flag) return;
  be.flush();
  // MAP_READ | COPY_DST
  const staging = be.device.createBuffer({ size: 16, usage: 0x01 | 0x08, label: 'dsv3:fp8-errors-read' });
  const enc = be.device.createCommandEncoder();
  enc.copyBufferToBuffer(flag, 0, staging, 0, 16);
  be.device.queue.submit([enc.finish()]);
  await staging.mapAsync(1);
  const bits = new Uint32Array(staging.getMappedRange().slice(0))[0]!;
  staging.unmap();
  staging.destroy();
  if (!bits) return;
  be.device.queue.writeBuffer(flag, 0, new Uint32Array(4));
  const ops = Object.entries(ERR_BITS)
    .filter(([, bit]) => bits & bit)
    .map(([op]) => op);
  throw new RangeError(`@dsv3/fp8 (webgpu): non-finite input (NaN or ±Infinity) in ${ops.join(', ')}; the affected tiles have NaN scales and NaN bytes`);
}

// ---- helpers ----

const size = (s: readonly number[]): number => s.reduce((a, b) => a * b, 1);

function f32Bits(v: number): number {
  return new Uint32Array(new Float32Array([v]).buffer)[0]!;
}

/** Workgroup counts for `groups` workgroups, split over x and y beyond the per-dimension limit. */
function grid(groups: number, maxPerDim: number): [number, number, number] {
  if (groups <= maxPerDim) return [Math.max(groups, 1), 1, 1];
  const y = Math.ceil(groups / maxPerDim);
  if (y > maxPerDim) throw new RangeError(`@dsv3/fp8 (webgpu): ${groups} workgroups exceed the dispatch limit`);
  return [maxPerDim, y, 1];
}

function checkBinding(be: GpuBackendLike, what: string, bytes: number): void {
  if (bytes > be.bindingLimit) {
    throw new RangeError(`@dsv3/fp8 (webgpu): ${what} needs ${bytes} bytes in one storage binding, over this device's limit of ${be.bindingLimit} bytes (maxStorageBufferBindingSize); split the tensor`);
  }
}

const outT = (storage: Storage, shape: readonly number[], dtype: DType): KernelTensor => ({ storage, shape: [...shape], dtype });

// ---- quantization ----

type TileMode = 'row' | 'colT' | 'weight';

/**
 * The index maps of a tiling. Params: 0 R (rows), 1 C (cols), 2 B (block), 3 nb (tiles along the
 * scale's second axis), then mode-specific ones from 4 on.
 *  row:    tile t = r * nb + b                 element e → r*C + b*B + e               (e < min(B, C - b*B))
 *  colT:   tile t = j * nb + rb (nb = ceil(R/B))  element e → (rb*B + e)*C + j         (e < min(B, R - rb*B))
 *  weight: tile t = bi * nb + bj (nb = ceil(C/B)) element e → (bi*B + e / w)*C + bj*B + e % w, w = min(B, C - bj*B)
 */
function tileFns(mode: TileMode): string {
  switch (mode) {
    case 'row':
      return `fn tile_count(t: u32) -> u32 { let b = t % P(3u); return min(P(2u), P(1u) - b * P(2u)); }
fn tile_elem(t: u32, e: u32) -> u32 { let r = t / P(3u); let b = t % P(3u); return r * P(1u) + b * P(2u) + e; }`;
    case 'colT':
      return `fn tile_count(t: u32) -> u32 { let rb = t % P(3u); return min(P(2u), P(0u) - rb * P(2u)); }
fn tile_elem(t: u32, e: u32) -> u32 { let j = t / P(3u); let rb = t % P(3u); return (rb * P(2u) + e) * P(1u) + j; }`;
    case 'weight':
      return `fn tile_w(t: u32) -> u32 { let bj = t % P(3u); return min(P(2u), P(1u) - bj * P(2u)); }
fn tile_count(t: u32) -> u32 { let bi = t / P(3u); return min(P(2u), P(0u) - bi * P(2u)) * tile_w(t); }
fn tile_elem(t: u32, e: u32) -> u32 { let bi = t / P(3u); let bj = t % P(3u); let w = tile_w(t); return (bi * P(2u) + e / w) * P(1u) + bj * P(2u) + e % w; }`;
  }
}

/**
 * Output byte o → (source element, scale index).
 *  row / weight: q has x's layout; colT: q is [C, R] (q[j, i] = quant(x[i, j])).
 */
function encodeFns(mode: TileMode): string {
  switch (mode) {
    case 'row':
      return `fn src_of(o: u32) -> u32 { return o; }
fn scale_of(o: u32) -> u32 { let r = o / P(1u); let c = o % P(1u); return r * P(3u) + c / P(2u); }`;
    case 'colT':
      return `fn src_of(o: u32) -> u32 { let j = o / P(0u); let i = o % P(0u); return i * P(1u) + j; }
fn scale_of(o: u32) -> u32 { let j = o / P(0u); let i = o % P(0u); return j * P(3u) + i / P(2u); }`;
    case 'weight':
      return `fn src_of(o: u32) -> u32 { return o; }
fn scale_of(o: u32) -> u32 { let r = o / P(1u); let c = o % P(1u); return (r / P(2u)) * P(3u) + c / P(2u); }`;
  }
}

const SCALE_WG = 128;
/** bits of f32(1/448) and of 448 */
const INV_448_BITS = f32Bits(1 / 448);
const F448_BITS = f32Bits(448);

/**
 * Pass 1: one workgroup per tile → scales (f32 bits). Params 0 R, 1 C, 2 B, 3 nb, 4 amax floor
 * bits, 5 ue8m0, 6 weight rule (correctly rounded amax / 448 instead of amax * f32(1/448)),
 * 7 error bit, 8 number of tiles.
 */
function scaleCode(mode: TileMode): { code: string; layout: string } {
  const decls: Binding[] = [{ name: 'S', write: true }, { name: 'X' }, { name: 'errflag', atomic: true }];
  const code = `${paramsDecl(9)}
${bindings(decls)}
${FP8_LIB}
${tileFns(mode)}
var<workgroup> wmax: atomic<u32>;
@compute @workgroup_size(${SCALE_WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let t = wid.x + wid.y * nwg.x;
  let valid = t < P(8u);
  if (lid == 0u) { atomicStore(&wmax, 0u); }
  workgroupBarrier();
  if (valid) {
    let n = tile_count(t);
    var m = 0u;
    for (var e = lid; e < n; e = e + ${SCALE_WG}u) {
      m = max(m, X[tile_elem(t, e)] & 0x7fffffffu);
    }
    atomicMax(&wmax, m);
  }
  workgroupBarrier();
  if (valid && lid == 0u) {
    let a = atomicLoad(&wmax);
    var s: u32;
    if (a >= 0x7f800000u) {
      s = 0x7fc00000u;
      atomicOr(&errflag[0], P(7u));
    } else {
      let am = max(a, P(4u));
      if (P(6u) == 1u) {
        s = div_rn_mag(am, ${F448_BITS}u);
      } else {
        s = bitcast<u32>(bitcast<f32>(am) * bitcast<f32>(${INV_448_BITS}u));
      }
      if (P(5u) == 1u) { s = ue8m0_ceil_bits(s); }
    }
    S[t] = s;
  }
}
`;
  return { code, layout: layoutOf(decls) };
}

const EL_WG = 256;

/**
 * A shader with one thread per element over `mode`'s tile helpers: `body` runs for the flat thread
 * index `idx` while it is below param `bound`.
 */
function elementCode(params: number, decls: Binding[], mode: TileMode, idx: string, bound: number, body: string): { code: string; layout: string } {
  const code = `${paramsDecl(params)}
${bindings(decls)}
${FP8_LIB}
${encodeFns(mode)}
@compute @workgroup_size(${EL_WG})
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let ${idx} = gid.x + gid.y * nwg.x * ${EL_WG}u;
  if (${idx} >= P(${bound}u)) { return; }
${body}}
`;
  return { code, layout: layoutOf(decls) };
}

/** Pass 2: one thread per output word (4 bytes). Params 0 R, 1 C, 2 B, 3 nb, 4 bytes in total, 5 words. */
function encodeCode(mode: TileMode): { code: string; layout: string } {
  const decls: Binding[] = [{ name: 'Q', write: true }, { name: 'X' }, { name: 'S' }];
  return elementCode(6, decls, mode, 'w', 5, `  var word = 0u;
  for (var e = 0u; e < 4u; e = e + 1u) {
    let o = w * 4u + e;
    if (o < P(4u)) {
      let x = bitcast<f32>(X[src_of(o)]);
      let s = S[scale_of(o)];
      var b: u32;
      if ((s & 0x7fffffffu) > 0x7f800000u) { b = ((bitcast<u32>(x) >> 24u) & 0x80u) | 0x7fu; } else { b = quant_e4m3(x, s); }
      word = word | (b << (e * 8u));
    }
  }
  Q[w] = word;
`);
}

interface QuantGeometry {
  mode: TileMode;
  R: number;
  C: number;
  /** tiles along the scale's second axis */
  nb: number;
  tiles: number;
  qShape: number[];
  sShape: number[];
  weightRule: boolean;
  errBit: number;
  label: string;
}

function runQuant(b: Backend, x: KernelTensor, g: QuantGeometry, a: QuantAttrs): KernelTensor[] {
  const be = asGpu(b);
  if (x.dtype !== 'f32') throw new TypeError(`${g.label}: expected an f32 tensor, got ${x.dtype}`);
  const total = g.R * g.C;
  checkBinding(be, `${g.label} input`, total * 4);
  const xs = be.input(x);
  const q = be.allocUninit('fp8-e4m3', total);
  const s = be.allocUninit('f32', g.tiles);
  if (total === 0 || g.tiles === 0) return [outT(q, g.qShape, 'fp8-e4m3'), outT(s, g.sShape, 'f32')];
  const maxDim = be.limits.maxComputeWorkgroupsPerDimension;
  const sc = scaleCode(g.mode);
  const floorBits = f32Bits(a.amaxFloor);
  be.run(
    { label: `fp8_scales_${g.mode}`, ...sc },
    [be.bind(s), be.bind(xs), { buffer: errorBuffer(be), offset: 0, size: 16 }],
    [g.R, g.C, a.block, g.nb, floorBits, a.scaleFormat === 'ue8m0' ? 1 : 0, g.weightRule ? 1 : 0, g.errBit, g.tiles],
    grid(g.tiles, maxDim),
  );
  const words = Math.ceil(total / 4);
  const ec = encodeCode(g.mode);
  be.run({ label: `fp8_encode_${g.mode}`, ...ec }, [be.bind(q), be.bind(xs), be.bind(s)], [g.R, g.C, a.block, g.nb, total, words], grid(Math.ceil(words / EL_WG), maxDim));
  return [outT(q, g.qShape, 'fp8-e4m3'), outT(s, g.sShape, 'f32')];
}

/** [rows, cols] of a [..., cols] shape (rows = product of the leading dimensions). */
function rowsCols(shape: readonly number[]): [number, number] {
  return [size(shape.slice(0, -1)), shape[shape.length - 1]!];
}

function quantizeActGpu(b: Backend, [x]: KernelTensor[], a: QuantAttrs): KernelTensor[] {
  const [R, C] = rowsCols(x!.shape);
  const nb = Math.ceil(C / a.block);
  return runQuant(b, x!, { mode: 'row', R, C, nb, tiles: R * nb, qShape: [...x!.shape], sShape: [...x!.shape.slice(0, -1), nb], weightRule: false, errBit: ERR_BITS.quantizeAct, label: 'quantizeActivation' }, a);
}

function quantizeActTGpu(b: Backend, [x]: KernelTensor[], a: QuantAttrs): KernelTensor[] {
  const [R, C] = [x!.shape[0]!, x!.shape[1]!];
  const nb = Math.ceil(R / a.block);
  return runQuant(b, x!, { mode: 'colT', R, C, nb, tiles: C * nb, qShape: [C, R], sShape: [C, nb], weightRule: false, errBit: ERR_BITS.quantizeActT, label: 'quantizeActivationTransposed' }, a);
}

function quantizeWeightGpu(b: Backend, [w]: KernelTensor[], a: QuantAttrs): KernelTensor[] {
  const [R, C] = [w!.shape[0]!, w!.shape[1]!];
  const rb = Math.ceil(R / a.block);
  const nb = Math.ceil(C / a.block);
  return runQuant(b, w!, { mode: 'weight', R, C, nb, tiles: rb * nb, qShape: [R, C], sShape: [rb, nb], weightRule: true, errBit: ERR_BITS.quantizeWeight, label: 'quantizeWeight' }, a);
}

// ---- dequantization ----

function decodeFn(dtype: DType): string {
  return dtype === 'fp8-e5m2' ? 'e5m2_to_f32' : 'e4m3_to_f32';
}

/** f32 out[o] = decode(q[o]) * S[scale_of(o)]. Params 0 R, 1 C, 2 B, 3 nb, 4 count. */
function dequantCode(mode: 'row' | 'weight', dtype: DType): { code: string; layout: string } {
  const decls: Binding[] = [{ name: 'Y', write: true }, { name: 'Q' }, { name: 'S' }];
  return elementCode(5, decls, mode, 'o', 4, `  let v = ${decodeFn(dtype)}(byte_at(Q[o >> 2u], o));
  Y[o] = bitcast<u32>(v * bitcast<f32>(S[scale_of(o)]));
`);
}

function runDequant(b: Backend, q: KernelTensor, s: KernelTensor, mode: 'row' | 'weight', R: number, C: number, nb: number, block: number): KernelTensor[] {
  const be = asGpu(b);
  const total = R * C;
  checkBinding(be, 'dequantize output', total * 4);
  const y = be.allocUninit('f32', total);
  if (total === 0) return [outT(y, q.shape, 'f32')];
  const c = dequantCode(mode, q.dtype);
  be.run({ label: `fp8_dequant_${mode}`, ...c }, [be.bind(y), be.bind(be.input(q)), be.bind(be.input(s))], [R, C, block, nb, total], grid(Math.ceil(total / EL_WG), be.limits.maxComputeWorkgroupsPerDimension));
  return [outT(y, q.shape, 'f32')];
}

function dequantizeActGpu(b: Backend, [q, s]: KernelTensor[], a: DequantAttrs): KernelTensor[] {
  const [R, C] = rowsCols(q!.shape);
  return runDequant(b, q!, s!, 'row', R, C, Math.ceil(C / a.block), a.block);
}

function dequantizeWeightGpu(b: Backend, [q, s]: KernelTensor[], a: DequantAttrs): KernelTensor[] {
  const [R, C] = [q!.shape[0]!, q!.shape[1]!];
  return runDequant(b, q!, s!, 'weight', R, C, Math.ceil(C / a.block), a.block);
}

// ---- block-scaled GEMM ----

export interface GemmTile {
  /** threads along N (x) and M (y) */
  wgx: number;
  wgy: number;
  /** outputs per thread along M and N */
  tm: number;
  tn: number;
  /** K bytes staged per step (a multiple of 4) */
  bk: number;
}

/** 128 x 128 output tiles, 8 x 8 per thread: large problems. */
export const GEMM_TILE_LARGE: GemmTile = { wgx: 16, wgy: 16, tm: 8, tn: 8, bk: 16 };
/** 64 x 64 output tiles, 4 x 4 per thread: small or thin problems. */
export const GEMM_TILE_SMALL: GemmTile = { wgx: 16, wgy: 16, tm: 4, tn: 4, bk: 32 };

export function chooseGemmTile(m: number, n: number): GemmTile {
  return m >= 128 && n >= 128 && Math.ceil(m / 128) * Math.ceil(n / 128) >= 8 ? GEMM_TILE_LARGE : GEMM_TILE_SMALL;
}

export interface GemmVariant {
  tile: GemmTile;
  /** u32 loads of 4 K-bytes at once (K % 4 == 0 and block % 4 == 0) */
  words: boolean;
  /** decoded tiles in f16 workgroup memory (shader-f16) */
  f16: boolean;
  aType: DType;
  bType: DType;
}

/**
 * Params: 0 M, 1 N, 2 K, 3 block, 4 kBlocks, 5 rows of b per bScale row (1: 'row', block: 'block').
 * Bindings: C (f32, written), A (fp8 words), SA (f32), B (fp8 words), SB (f32).
 */
export function gemmCode(v: GemmVariant): string {
  const { wgx, wgy, tm, tn, bk } = v.tile;
  const BM = wgy * tm;
  const BN = wgx * tn;
  const NT = wgx * wgy;
  const T = v.f16 ? 'f16' : 'f32';
  const decA = (e: string): string => (v.f16 ? `f16(${decodeFn(v.aType)}(${e}))` : `${decodeFn(v.aType)}(${e})`);
  const decB = (e: string): string => (v.f16 ? `f16(${decodeFn(v.bType)}(${e}))` : `${decodeFn(v.bType)}(${e})`);
  const zero = v.f16 ? 'f16(0.0)' : '0.0';
  const load = (tileName: string, src: string, rows: number, rowsVar: string, r0: string, dec: (e: string) => string): string =>
    v.words
      ? `for (var l = tid; l < ${(rows * bk) / 4}u; l = l + ${NT}u) {
        let row = l / ${bk / 4}u;
        let kw = (l % ${bk / 4}u) * 4u;
        let r = ${r0} + row;
        let k = k0 + kw;
        var w = 0u;
        if (r < ${rowsVar} && k < kEnd) { w = ${src}[(r * K + k) >> 2u]; }
        ${tileName}[kw * ${rows}u + row] = ${dec('w & 0xffu')};
        ${tileName}[(kw + 1u) * ${rows}u + row] = ${dec('(w >> 8u) & 0xffu')};
        ${tileName}[(kw + 2u) * ${rows}u + row] = ${dec('(w >> 16u) & 0xffu')};
        ${tileName}[(kw + 3u) * ${rows}u + row] = ${dec('w >> 24u')};
      }`
      : `for (var l = tid; l < ${rows * bk}u; l = l + ${NT}u) {
        let row = l / ${bk}u;
        let kk = l % ${bk}u;
        let r = ${r0} + row;
        let k = k0 + kk;
        var x = ${zero};
        if (r < ${rowsVar} && k < kEnd) { let idx = r * K + k; x = ${dec(`byte_at(${src}[idx >> 2u], idx)`)}; }
        ${tileName}[kk * ${rows}u + row] = x;
      }`;
  const decls: Binding[] = [{ name: 'C', write: true, type: 'f32' }, { name: 'A' }, { name: 'SA', type: 'f32' }, { name: 'B' }, { name: 'SB', type: 'f32' }];
  return `${v.f16 ? 'enable f16;' : ''}
${paramsDecl(6)}
${bindings(decls)}
${FP8_LIB}
var<workgroup> As: array<${T}, ${bk * BM}>;
var<workgroup> Bs: array<${T}, ${bk * BN}>;
@compute @workgroup_size(${wgx}, ${wgy})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
  let M = P(0u);
  let N = P(1u);
  let K = P(2u);
  let BLK = P(3u);
  let KB = P(4u);
  let G = P(5u);
  let tx = lid.x;
  let ty = lid.y;
  let tid = ty * ${wgx}u + tx;
  let m0 = wid.y * ${BM}u;
  let n0 = wid.x * ${BN}u;
  var acc: array<f32, ${tm * tn}>;
  for (var i = 0u; i < ${tm * tn}u; i = i + 1u) { acc[i] = 0.0; }
  for (var kb = 0u; kb < KB; kb = kb + 1u) {
    // one block of the contraction: its partial sum in f32, then promotion with both scales
    var part: array<f32, ${tm * tn}>;
    for (var i = 0u; i < ${tm * tn}u; i = i + 1u) { part[i] = 0.0; }
    let kStart = kb * BLK;
    let kEnd = min(kStart + BLK, K);
    for (var k0 = kStart; k0 < kEnd; k0 = k0 + ${bk}u) {
      ${load('As', 'A', BM, 'M', 'm0', decA)}
      ${load('Bs', 'B', BN, 'N', 'n0', decB)}
      workgroupBarrier();
      for (var kk = 0u; kk < ${bk}u; kk = kk + 1u) {
        var a: array<f32, ${tm}>;
        var b: array<f32, ${tn}>;
        for (var i = 0u; i < ${tm}u; i = i + 1u) { a[i] = f32(As[kk * ${BM}u + ty * ${tm}u + i]); }
        for (var j = 0u; j < ${tn}u; j = j + 1u) { b[j] = f32(Bs[kk * ${BN}u + tx * ${tn}u + j]); }
        for (var i = 0u; i < ${tm}u; i = i + 1u) {
          for (var j = 0u; j < ${tn}u; j = j + 1u) { part[i * ${tn}u + j] = part[i * ${tn}u + j] + a[i] * b[j]; }
        }
      }
      workgroupBarrier();
    }
    var sb: array<f32, ${tn}>;
    for (var j = 0u; j < ${tn}u; j = j + 1u) {
      let n = n0 + tx * ${tn}u + j;
      sb[j] = 0.0;
      if (n < N) { sb[j] = SB[(n / G) * KB + kb]; }
    }
    for (var i = 0u; i < ${tm}u; i = i + 1u) {
      let m = m0 + ty * ${tm}u + i;
      var sa = 0.0;
      if (m < M) { sa = SA[m * KB + kb]; }
      for (var j = 0u; j < ${tn}u; j = j + 1u) { acc[i * ${tn}u + j] = acc[i * ${tn}u + j] + part[i * ${tn}u + j] * (sa * sb[j]); }
    }
  }
  for (var i = 0u; i < ${tm}u; i = i + 1u) {
    let m = m0 + ty * ${tm}u + i;
    if (m >= M) { break; }
    for (var j = 0u; j < ${tn}u; j = j + 1u) {
      let n = n0 + tx * ${tn}u + j;
      if (n < N) { C[m * N + n] = acc[i * ${tn}u + j]; }
    }
  }
}
`;
}

export interface GemmRunOptions {
  /** f16 workgroup tiles (needs shader-f16) instead of the default f32 ones */
  f16?: boolean;
  tile?: GemmTile;
  /** false: never take the subgroup-matrix path even when enabled on the device */
  subgroupMatrix?: boolean;
  /** test hook: run the subgroup-matrix kernel's skeleton with scalar emulation of the matrix builtins, for this matrix shape */
  emulateSubgroupMatrix?: { M: number; N: number; K: number };
}

/** Per-backend overrides of the GEMM variant (tests and benchmarks). */
const gemmOverrides = new WeakMap<Backend, GemmRunOptions>();

/** Forces GEMM options on a backend (tests/benchmarks); pass {} to restore the defaults. */
export function setFp8GemmOptions(backend: Backend, opts: GemmRunOptions): void {
  gemmOverrides.set(backend, opts);
}

function blockGemmGpu(b: Backend, [a, as, bb, bs]: KernelTensor[], attrs: GemmAttrs): KernelTensor[] {
  const be = asGpu(b);
  const K = a!.shape[a!.shape.length - 1]!;
  const M = size(a!.shape.slice(0, -1));
  const N = bb!.shape[0]!;
  const kBlocks = Math.ceil(K / attrs.block);
  const out = be.allocUninit('f32', M * N);
  if (M === 0 || N === 0) return [outT(out, [M, N], 'f32')];
  checkBinding(be, 'fp8GemmBlockScaled output', M * N * 4);
  checkBinding(be, 'fp8GemmBlockScaled a', M * K);
  checkBinding(be, 'fp8GemmBlockScaled b', N * K);
  if (M * K >= 2 ** 32 || N * K >= 2 ** 32) throw new RangeError('@dsv3/fp8 (webgpu): operands over 2^32 elements');
  const o = gemmOverrides.get(b) ?? {};
  const tile = o.tile ?? chooseGemmTile(M, N);
  const v: GemmVariant = {
    tile,
    words: K % 4 === 0 && attrs.block % 4 === 0,
    // f32 tiles by default: the f16 variant (tested, bit-for-bit the same products) measured slower on
    // lavapipe and is unmeasured on real GPUs; opt in with setFp8GemmOptions(be, { f16: true })
    f16: o.f16 ?? false,
    aType: a!.dtype,
    bType: bb!.dtype,
  };
  if (v.f16 && !be.features.shaderF16) throw new Error('@dsv3/fp8 (webgpu): f16 tiles requested but the device has no shader-f16');
  const buffers = [be.bind(out), be.bind(be.input(a!)), be.bind(be.input(as!)), be.bind(be.input(bb!)), be.bind(be.input(bs!))];
  const params = [M, N, K, attrs.block, kBlocks, attrs.bScaleLayout === 'row' ? 1 : attrs.block];
  if (o.emulateSubgroupMatrix && v.words) {
    const sv: SgFp8Variant = { config: o.emulateSubgroupMatrix, legacySyntax: false, subgroupSize: 32, sgTile: sgTile(o.emulateSubgroupMatrix), emulate: true };
    const { bm, bn } = sv.sgTile;
    be.run({ label: 'fp8_gemm_subgroup_matrix_emulated', code: sgGemmCode(sv), layout: 'uwrrrr' }, buffers, params, [Math.ceil(N / bn), Math.ceil(M / bm), 1]);
    return [outT(out, [M, N], 'f32')];
  }
  const sg = subgroupPaths.get(be.device);
  if (sg && o.subgroupMatrix !== false && v.words && M >= 32 && N >= 32 && a!.dtype === 'fp8-e4m3' && bb!.dtype === 'fp8-e4m3') {
    const sv: SgFp8Variant = { ...sg, sgTile: sgTile(sg.config) };
    const { bm, bn } = sv.sgTile;
    be.run({ label: 'fp8_gemm_subgroup_matrix', code: sgGemmCode(sv), layout: 'uwrrrr' }, buffers, params, [Math.ceil(N / bn), Math.ceil(M / bm), 1]);
    return [outT(out, [M, N], 'f32')];
  }
  const decls = 'uwrrrr';
  const code = gemmCode(v);
  const BM = tile.wgy * tile.tm;
  const BN = tile.wgx * tile.tn;
  const gy = Math.ceil(M / BM);
  const gx = Math.ceil(N / BN);
  const maxDim = be.limits.maxComputeWorkgroupsPerDimension;
  if (gx > maxDim || gy > maxDim) throw new RangeError(`@dsv3/fp8 (webgpu): a ${M}x${N} output needs ${gx}x${gy} workgroups, over the limit of ${maxDim} per dimension`);
  be.run({ label: `fp8_gemm${v.f16 ? '_f16' : ''}${v.words ? '' : '_bytes'}`, code, layout: decls }, buffers, params, [gx, gy, 1]);
  return [outT(out, [M, N], 'f32')];
}

// ---- subgroup-matrix (tensor core) path: UNVALIDATED ----
//
// Through Dawn's chromium-experimental-subgroup-matrix (f16 x f16 → f32 matrices). E4M3 values are
// exact in f16, so the per-block products are those of the tiled kernel; the partial of each
// 128-wide K block is accumulated in f32 result matrices, stored to workgroup memory and promoted
// by each lane into its f32 registers with both scales (acc += partial * sa * sb) — DeepGEMM's
// scheme. A workgroup of four subgroups (2 x 2) computes a (2·FM·SM) x (2·FN·SN) tile.
//
// No adapter available to this project exposes the feature (lavapipe does not), so this kernel has
// never run. It is off unless `enableFp8SubgroupMatrix(backend)` succeeds, which requires core's own
// subgroup-matrix GEMM to have passed its self-test (so the builtin spelling and the config are
// known good), builds this kernel, and compares it with the tiled kernel on aligned and ragged
// products (relative L2 <= 1e-6); anything else leaves the tiled kernel in charge.

interface SgConfig {
  config: { M: number; N: number; K: number };
  legacySyntax: boolean;
  /** the subgroup size the code is generated for (checked by the self-test) */
  subgroupSize: number;
}

interface SgFp8Variant extends SgConfig {
  sgTile: { fm: number; fn: number; bm: number; bn: number };
  /**
   * Test hook: replace the subgroup-matrix builtins by scalar code with the same load / store
   * layouts (each lane computes its share of every result matrix straight into workgroup memory),
   * so the tiling, fragment offsets, promotion and edge handling can be checked on any adapter.
   * It cannot check the builtins themselves.
   */
  emulate?: boolean;
}

const SG_BK = 32;
const subgroupPaths = new WeakMap<GPUDevice, SgConfig>();

function sgTile(c: { M: number; N: number }): { fm: number; fn: number; bm: number; bn: number } {
  const fm = Math.max(1, 32 / c.M);
  const fn = Math.max(1, 32 / c.N);
  return { fm, fn, bm: 2 * fm * c.M, bn: 2 * fn * c.N };
}

export function sgGemmCode(v: SgFp8Variant): string {
  const { M: SM, N: SN, K: SK } = v.config;
  const { fm: FM, fn: FN, bm: BM, bn: BN } = v.sgTile;
  const SG = v.subgroupSize;
  const WG = 4 * SG;
  const E = FM * FN * SM * SN; // result elements per subgroup
  if (E % SG !== 0) throw new Error(`internal: ${E} result elements do not split over a subgroup of ${SG}`);
  const PER = E / SG;
  const L = `subgroup_matrix_left<f16, ${SK}, ${SM}>`;
  const R = `subgroup_matrix_right<f16, ${SN}, ${SK}>`;
  const RES = `subgroup_matrix_result<f32, ${SN}, ${SM}>`;
  const load = (ty: string, ptr: string, off: string, colMajor: boolean, stride: string): string =>
    v.legacySyntax ? `subgroupMatrixLoad<${ty}>(${ptr}, ${off}, ${colMajor}, ${stride})` : `subgroupMatrixLoad<${ty}, ${colMajor ? 'col_major' : 'row_major'}>(${ptr}, ${off}, ${stride})`;
  const store = (ptr: string, off: string, val: string, stride: string): string =>
    v.legacySyntax ? `subgroupMatrixStore(${ptr}, ${off}, ${val}, false, ${stride})` : `subgroupMatrixStore<row_major>(${ptr}, ${off}, ${val}, ${stride})`;
  const tileLoad = (dst: string, src: string, rows: number, rowsVar: string, r0: string): string => `for (var l = lid; l < ${(rows * SG_BK) / 4}u; l = l + ${WG}u) {
        let row = l / ${SG_BK / 4}u;
        let kw = (l % ${SG_BK / 4}u) * 4u;
        let r = ${r0} + row;
        let k = k0 + kw;
        var w = 0u;
        if (r < ${rowsVar} && k < kEnd) { w = ${src}[(r * K + k) >> 2u]; }
        let o = row * ${SG_BK}u + kw;
        ${dst}[o] = f16(e4m3_to_f32(w & 0xffu));
        ${dst}[o + 1u] = f16(e4m3_to_f32((w >> 8u) & 0xffu));
        ${dst}[o + 2u] = f16(e4m3_to_f32((w >> 16u) & 0xffu));
        ${dst}[o + 3u] = f16(e4m3_to_f32(w >> 24u));
      }`;
  let decl = '';
  let mma = '';
  let stores = '';
  for (let i = 0; i < FM; i++) mma += `          let l${i} = ${load(L, '&As', `(sgm * ${FM * SM}u + ${i * SM}u) * ${SG_BK}u + kk`, false, `${SG_BK}u`)};\n`;
  for (let j = 0; j < FN; j++) {
    mma += `          { let r = ${load(R, '&Bs', `(sgn * ${FN * SN}u + ${j * SN}u) * ${SG_BK}u + kk`, true, `${SG_BK}u`)};\n`;
    for (let i = 0; i < FM; i++) mma += `            p${i}_${j} = subgroupMatrixMultiplyAccumulate(l${i}, r, p${i}_${j});\n`;
    mma += '          }\n';
  }
  for (let i = 0; i < FM; i++) {
    for (let j = 0; j < FN; j++) {
      decl += `    var p${i}_${j} = ${RES}();\n`;
      stores += `    ${store('&Cs', `sg * ${E}u + ${(i * FN + j) * SM * SN}u`, `p${i}_${j}`, `${SN}u`)};\n`;
    }
  }
  if (v.emulate) {
    // left (SM x SK) row-major from As at (row0 + r) * BK + kk + k; right (SK x SN) column-major
    // from Bs at (col0 + c) * BK + kk + k; result (r, c) row-major in Cs — the layouts used above
    decl = `    for (var t = 0u; t < ${PER}u; t = t + 1u) { Cs[sg * ${E}u + lane + t * ${SG}u] = 0.0; }\n`;
    mma = `          for (var t = 0u; t < ${PER}u; t = t + 1u) {
            let e = lane + t * ${SG}u;
            let f = e / ${SM * SN}u;
            let r0 = sgm * ${FM * SM}u + (f / ${FN}u) * ${SM}u + (e % ${SM * SN}u) / ${SN}u;
            let c0 = sgn * ${FN * SN}u + (f % ${FN}u) * ${SN}u + e % ${SN}u;
            var d = 0.0;
            for (var k = 0u; k < ${SK}u; k = k + 1u) { d = d + f32(As[r0 * ${SG_BK}u + kk + k]) * f32(Bs[c0 * ${SG_BK}u + kk + k]); }
            Cs[sg * ${E}u + e] = Cs[sg * ${E}u + e] + d;
          }\n`;
    stores = '';
  }
  // element e of a subgroup's results: fragment f = e / (SM*SN) = i * FN + j, then row-major within it
  const coords = `let f = e / ${SM * SN}u;
      let i = f / ${FN}u;
      let j = f % ${FN}u;
      let m = m0 + sgm * ${FM * SM}u + i * ${SM}u + (e % ${SM * SN}u) / ${SN}u;
      let n = n0 + sgn * ${FN * SN}u + j * ${SN}u + e % ${SN}u;`;
  const header = v.emulate
    ? 'enable f16;'
    : `enable f16;
enable subgroups;
enable chromium_experimental_subgroup_matrix;
diagnostic(off, chromium_experimental.subgroup_matrix_uniformity);`;
  return `${header}
${paramsDecl(6)}
${bindings([{ name: 'C', write: true, type: 'f32' }, { name: 'A' }, { name: 'SA', type: 'f32' }, { name: 'B' }, { name: 'SB', type: 'f32' }])}
${FP8_LIB}
var<workgroup> As: array<f16, ${BM * SG_BK}>;
var<workgroup> Bs: array<f16, ${BN * SG_BK}>;
var<workgroup> Cs: array<f32, ${4 * E}>;
@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let M = P(0u);
  let N = P(1u);
  let K = P(2u);
  let BLK = P(3u);
  let KB = P(4u);
  let G = P(5u);
  let m0 = wid.y * ${BM}u;
  let n0 = wid.x * ${BN}u;
  // subgroups assumed to be consecutive runs of ${SG} invocations (the self-test checks the result)
  let sg = lid / ${SG}u;
  let lane = lid % ${SG}u;
  let sgm = sg / 2u;
  let sgn = sg % 2u;
  var acc: array<f32, ${PER}>;
  for (var t = 0u; t < ${PER}u; t = t + 1u) { acc[t] = 0.0; }
  for (var kb = 0u; kb < KB; kb = kb + 1u) {
${decl}    let kStart = kb * BLK;
    let kEnd = min(kStart + BLK, K);
    for (var k0 = kStart; k0 < kEnd; k0 = k0 + ${SG_BK}u) {
      ${tileLoad('As', 'A', BM, 'M', 'm0')}
      ${tileLoad('Bs', 'B', BN, 'N', 'n0')}
      workgroupBarrier();
      for (var kk = 0u; kk < ${SG_BK}u; kk = kk + ${SK}u) {
${mma}      }
      workgroupBarrier();
    }
    // promotion: the block's f32 partials through workgroup memory into per-lane f32 accumulators
${stores}    workgroupBarrier();
    for (var t = 0u; t < ${PER}u; t = t + 1u) {
      let e = lane + t * ${SG}u;
      ${coords}
      var s = 0.0;
      if (m < M && n < N) { s = SA[m * KB + kb] * SB[(n / G) * KB + kb]; }
      acc[t] = acc[t] + Cs[sg * ${E}u + e] * s;
    }
    workgroupBarrier();
  }
  for (var t = 0u; t < ${PER}u; t = t + 1u) {
    let e = lane + t * ${SG}u;
    ${coords}
    if (m < M && n < N) { C[m * N + n] = acc[t]; }
  }
}
`;
}

/**
 * Turns on the subgroup-matrix FP8 GEMM for this backend if it builds and passes a self-test
 * against the tiled kernel; resolves to a status line either way. UNVALIDATED: no device available
 * to this project has the feature, so expect 'unavailable' everywhere it was tested.
 */
export async function enableFp8SubgroupMatrix(backend: Backend): Promise<string> {
  if (backend.name !== 'webgpu') return 'unavailable: not a WebGPU backend';
  const be = asGpu(backend);
  const core = be.subgroupMatrixGemm;
  if (!core) return "unavailable: core's subgroup-matrix GEMM is not enabled on this device (no chromium-experimental-subgroup-matrix f16 config, or its self-test failed)";
  const sgs = be.adapterInfo?.subgroupMaxSize ?? 32;
  if (be.adapterInfo?.subgroupMinSize !== undefined && be.adapterInfo.subgroupMinSize !== sgs) return `unavailable: variable subgroup size (${be.adapterInfo.subgroupMinSize}..${sgs})`;
  const cfg: SgConfig = { config: core.config, legacySyntax: core.legacySyntax, subgroupSize: sgs };
  const v: SgFp8Variant = { ...cfg, sgTile: sgTile(cfg.config) };
  let code: string;
  try {
    code = sgGemmCode(v);
  } catch (e) {
    return `unavailable: ${e instanceof Error ? e.message : String(e)}`;
  }
  const dev = be.device;
  dev.pushErrorScope('validation');
  const module = dev.createShaderModule({ code, label: 'fp8_gemm_subgroup_matrix' });
  let buildError = '';
  try {
    await dev.createComputePipelineAsync({ layout: 'auto', compute: { module, entryPoint: 'main' } });
  } catch (e) {
    buildError = e instanceof Error ? e.message : String(e);
  }
  const err = await dev.popErrorScope();
  if (err || buildError) return `unavailable: the kernel does not build (${(buildError || err!.message).slice(0, 300)})`;
  // self-test against the tiled kernel (which is validated against the goldens)
  const { quantizeActivationT, quantizeWeightT, fp8GemmBlockScaledT } = await import('../tensor/ops');
  let worst = 0;
  try {
    for (const [m, n, k] of [
      [192, 160, 384],
      [70, 45, 300],
    ] as const) {
      const x = quantizeActivationT(randn([m, k], { seed: m }));
      const w = quantizeWeightT(randn([n, k], { seed: n }));
      const on = (t: Tensor): Tensor => fromRaw(t.dtype, t.shape, t.rawSync(), backend);
      const args = [on(x.q), on(x.scales), on(w.q), on(w.scales)] as const;
      subgroupPaths.set(be.device, cfg);
      const fast = (await fp8GemmBlockScaledT(...args).data()) as Float32Array;
      subgroupPaths.delete(be.device);
      const ref = (await fp8GemmBlockScaledT(...args).data()) as Float32Array;
      let num = 0;
      let den = 0;
      for (let i = 0; i < ref.length; i++) {
        num += (fast[i]! - ref[i]!) ** 2;
        den += ref[i]! ** 2;
      }
      const e = Math.sqrt(num / Math.max(den, 1e-30));
      worst = Math.max(worst, Number.isFinite(e) ? e : Infinity);
    }
  } catch (e) {
    subgroupPaths.delete(be.device);
    return `unavailable: self-test failed (${e instanceof Error ? e.message : String(e)})`;
  }
  if (!(worst <= 1e-6)) return `unavailable: self-test mismatch (relative L2 ${worst.toExponential(2)} vs the tiled kernel)`;
  subgroupPaths.set(be.device, cfg);
  return `enabled: f16 ${core.config.M}x${core.config.N}x${core.config.K} subgroup matrices, self-test relative L2 ${worst.toExponential(2)}`;
}

let registered = false;

/** Registers the WebGPU kernels (idempotent; done on import of the package; nothing runs until called). */
export function registerFp8WebGpuKernels(): void {
  if (registered) return;
  registered = true;
  registerKernel(FP8_OPS.quantizeAct, 'webgpu', quantizeActGpu);
  registerKernel(FP8_OPS.quantizeActT, 'webgpu', quantizeActTGpu);
  registerKernel(FP8_OPS.quantizeWeight, 'webgpu', quantizeWeightGpu);
  registerKernel(FP8_OPS.dequantizeAct, 'webgpu', dequantizeActGpu);
  registerKernel(FP8_OPS.dequantizeWeight, 'webgpu', dequantizeWeightGpu);
  registerKernel(FP8_OPS.blockGemm, 'webgpu', blockGemmGpu);
}
