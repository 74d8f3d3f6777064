// WebGPU kernels of FP8 quantization and dequantization.
//
// QUANTIZATION runs in two dispatches: (1) one workgroup per tile reduces amax (integer max of the
// bits, in a workgroup atomic) and writes the tile's scale; (2) one thread per output u32 word
// encodes its four bytes (x / s correctly rounded, then E4M3 round-to-nearest-even, saturating).
// Writing whole words from one thread keeps any shape and block size race-free, ragged ones
// included. Results are bit-identical to the CPU (see wgsl.ts for how). Non-finite input raises the
// error flag of common.ts.
import {
  asWebGpu,
  bindingDecls,
  layoutKey,
  paramsDecl,
  type Backend,
  type BindingDecl,
  type DType,
  type KernelTensor,
} from '@dsv3/core';
import type { DequantAttrs, QuantAttrs } from '../tensor/attrs';
import { FP8_LIB, decodeFn } from './wgsl';
import { checkBinding, errorBuffer, ERR_BITS, f32Bits, grid, outT, size } from './common';

// ---- quantization ----

type TileMode = 'row' | 'colT' | 'weight' | 'colTSeg';

/**
 * The index maps of a tiling. Params: 0 R (rows), 1 C (cols), 2 B (block), 3 nb (tiles along the
 * scale's second axis), then mode-specific ones from 4 on.
 *  row:    tile t = r * nb + b                 element e → r*C + b*B + e               (e < min(B, C - b*B))
 *  colT:   tile t = j * nb + rb (nb = ceil(R/B))  element e → (rb*B + e)*C + j         (e < min(B, R - rb*B))
 *  weight: tile t = bi * nb + bj (nb = ceil(C/B)) element e → (bi*B + e / w)*C + bj*B + e % w, w = min(B, C - bj*B)
 *  colTSeg: colT with the tiles restarting at each expert segment's first row (binding Offs [E + 1]):
 *          tile t = j * nb + slot, nb = ceil(R/B) + E; segment e's tiles take the slots from
 *          floor(offsets[e] / B) + e on (never overlapping the next segment's); other slots are empty.
 */
function tileFns(mode: TileMode): string {
  switch (mode) {
    case 'row':
      return `fn tile_count(t: u32) -> u32 { let b = t % P(3u); return min(P(2u), P(1u) - b * P(2u)); }
fn tile_elem(t: u32, e: u32) -> u32 { let r = t / P(3u); let b = t % P(3u); return r * P(1u) + b * P(2u) + e; }`;
    case 'colT':
      return `fn tile_count(t: u32) -> u32 { let rb = t % P(3u); return min(P(2u), P(0u) - rb * P(2u)); }
fn tile_elem(t: u32, e: u32) -> u32 { let j = t / P(3u); let rb = t % P(3u); return (rb * P(2u) + e) * P(1u) + j; }`;
    case 'colTSeg':
      return `${SEG_FNS}
fn tile_count(t: u32) -> u32 {
  let sj = slot_seg(t % P(3u));
  if (sj.x == seg_count()) { return 0u; }
  return min(P(2u), u32(Offs[sj.x + 1u]) - u32(Offs[sj.x]) - sj.y * P(2u));
}
fn tile_elem(t: u32, e: u32) -> u32 { let sj = slot_seg(t % P(3u)); return (u32(Offs[sj.x]) + sj.y * P(2u) + e) * P(1u) + t / P(3u); }`;
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
    case 'colTSeg':
      return `${SEG_FNS}
fn src_of(o: u32) -> u32 { let j = o / P(0u); let i = o % P(0u); return i * P(1u) + j; }
fn scale_of(o: u32) -> u32 { let j = o / P(0u); let i = o % P(0u); return j * P(3u) + row_slot(i); }`;
  }
}

/** Segment helpers of 'colTSeg' (params 0 R, 2 B, 3 nb = ceil(R/B) + E; binding Offs). */
const SEG_FNS = `fn seg_count() -> u32 { return P(3u) - (P(0u) + P(2u) - 1u) / P(2u); }
// slot -> (segment, tile within it); segment E: an empty slot
fn slot_seg(s: u32) -> vec2<u32> {
  let E = seg_count();
  for (var e = 0u; e < E; e++) {
    let a = u32(Offs[e]);
    let first = a / P(2u) + e;
    let n = (u32(Offs[e + 1u]) - a + P(2u) - 1u) / P(2u);
    if (s >= first && s < first + n) { return vec2<u32>(e, s - first); }
  }
  return vec2<u32>(E, 0u);
}
// the slot of row i's tile
fn row_slot(i: u32) -> u32 {
  let E = seg_count();
  for (var e = 0u; e < E; e++) {
    let a = u32(Offs[e]);
    if (i < u32(Offs[e + 1u])) { return a / P(2u) + e + (i - a) / P(2u); }
  }
  return 0u;
}`;

/** The offsets binding of the segmented modes. */
const segDecls = (mode: TileMode): BindingDecl[] => (mode === 'colTSeg' ? [{ name: 'Offs', type: 'i32' }] : []);

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
  const decls: BindingDecl[] = [
    { name: 'S', write: true },
    { name: 'X' },
    { name: 'errflag', write: true, type: 'atomic<u32>' },
    ...segDecls(mode),
  ];
  const code = `${paramsDecl(9)}
${bindingDecls(decls)}
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
  return { code, layout: layoutKey(decls) };
}

const EL_WG = 256;

/**
 * A shader with one thread per element over `mode`'s tile helpers: `body` runs for the flat thread
 * index `idx` while it is below param `bound`.
 */
function elementCode(
  params: number,
  decls: BindingDecl[],
  mode: TileMode,
  idx: string,
  bound: number,
  body: string,
): { code: string; layout: string } {
  const code = `${paramsDecl(params)}
${bindingDecls(decls)}
${FP8_LIB}
${encodeFns(mode)}
@compute @workgroup_size(${EL_WG})
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let ${idx} = gid.x + gid.y * nwg.x * ${EL_WG}u;
  if (${idx} >= P(${bound}u)) { return; }
${body}}
`;
  return { code, layout: layoutKey(decls) };
}

/** Pass 2: one thread per output word (4 bytes). Params 0 R, 1 C, 2 B, 3 nb, 4 bytes in total, 5 words. */
function encodeCode(mode: TileMode): { code: string; layout: string } {
  const decls: BindingDecl[] = [{ name: 'Q', write: true }, { name: 'X' }, { name: 'S' }, ...segDecls(mode)];
  return elementCode(
    6,
    decls,
    mode,
    'w',
    5,
    `  var word = 0u;
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
`,
  );
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

function runQuant(
  b: Backend,
  x: KernelTensor,
  g: QuantGeometry,
  a: QuantAttrs,
  offsets?: KernelTensor,
): KernelTensor[] {
  const be = asWebGpu(b, 'fp8 (webgpu)');
  if (x.dtype !== 'f32') throw new TypeError(`${g.label}: expected an f32 tensor, got ${x.dtype}`);
  const total = g.R * g.C;
  checkBinding(be, `${g.label} input`, total * 4);
  const xs = be.input(x);
  const q = be.allocUninit('fp8-e4m3', total);
  const s = be.allocUninit('f32', g.tiles);
  const offs = offsets ? [be.bind(be.input(offsets))] : [];
  if (total === 0 || g.tiles === 0) return [outT(q, g.qShape, 'fp8-e4m3'), outT(s, g.sShape, 'f32')];
  const maxDim = be.limits.maxComputeWorkgroupsPerDimension;
  const sc = scaleCode(g.mode);
  const floorBits = f32Bits(a.amaxFloor);
  be.run(
    { label: `fp8_scales_${g.mode}`, ...sc },
    [be.bind(s), be.bind(xs), { buffer: errorBuffer(be), offset: 0, size: 16 }, ...offs],
    [g.R, g.C, a.block, g.nb, floorBits, a.scaleFormat === 'ue8m0' ? 1 : 0, g.weightRule ? 1 : 0, g.errBit, g.tiles],
    grid(g.tiles, maxDim),
  );
  const words = Math.ceil(total / 4);
  const ec = encodeCode(g.mode);
  be.run(
    { label: `fp8_encode_${g.mode}`, ...ec },
    [be.bind(q), be.bind(xs), be.bind(s), ...offs],
    [g.R, g.C, a.block, g.nb, total, words],
    grid(Math.ceil(words / EL_WG), maxDim),
  );
  return [outT(q, g.qShape, 'fp8-e4m3'), outT(s, g.sShape, 'f32')];
}

/** [rows, cols] of a [..., cols] shape (rows = product of the leading dimensions). */
function rowsCols(shape: readonly number[]): [number, number] {
  return [size(shape.slice(0, -1)), shape[shape.length - 1]!];
}

export function quantizeActGpu(b: Backend, [x]: KernelTensor[], a: QuantAttrs): KernelTensor[] {
  const [R, C] = rowsCols(x!.shape);
  const nb = Math.ceil(C / a.block);
  return runQuant(
    b,
    x!,
    {
      mode: 'row',
      R,
      C,
      nb,
      tiles: R * nb,
      qShape: [...x!.shape],
      sShape: [...x!.shape.slice(0, -1), nb],
      weightRule: false,
      errBit: ERR_BITS.quantizeAct,
      label: 'quantizeActivation',
    },
    a,
  );
}

export function quantizeActTGpu(b: Backend, [x]: KernelTensor[], a: QuantAttrs): KernelTensor[] {
  const [R, C] = [x!.shape[0]!, x!.shape[1]!];
  const nb = Math.ceil(R / a.block);
  return runQuant(
    b,
    x!,
    {
      mode: 'colT',
      R,
      C,
      nb,
      tiles: C * nb,
      qShape: [C, R],
      sShape: [C, nb],
      weightRule: false,
      errBit: ERR_BITS.quantizeActT,
      label: 'quantizeActivationTransposed',
    },
    a,
  );
}

/**
 * quantizeActT with the 128-row tiles restarting at each expert segment (the Wgrad operands of the
 * routed experts): inputs [x f32 [R, C], offsets i32 [E + 1]] → q fp8 [C, R], scales f32
 * [C, ceil(R/B) + E] (see 'colTSeg' for where a segment's scales are; empty slots hold a valid scale).
 */
export function groupedQuantizeActTGpu(b: Backend, [x, offsets]: KernelTensor[], a: QuantAttrs): KernelTensor[] {
  const [R, C] = [x!.shape[0]!, x!.shape[1]!];
  const nb = Math.ceil(R / a.block) + offsets!.shape[0]! - 1;
  return runQuant(
    b,
    x!,
    {
      mode: 'colTSeg',
      R,
      C,
      nb,
      tiles: C * nb,
      qShape: [C, R],
      sShape: [C, nb],
      weightRule: false,
      errBit: ERR_BITS.quantizeActT,
      label: 'groupedQuantizeActivationTransposed',
    },
    a,
    offsets,
  );
}

export function quantizeWeightGpu(b: Backend, [w]: KernelTensor[], a: QuantAttrs): KernelTensor[] {
  const [R, C] = [w!.shape[0]!, w!.shape[1]!];
  const rb = Math.ceil(R / a.block);
  const nb = Math.ceil(C / a.block);
  return runQuant(
    b,
    w!,
    {
      mode: 'weight',
      R,
      C,
      nb,
      tiles: rb * nb,
      qShape: [R, C],
      sShape: [rb, nb],
      weightRule: true,
      errBit: ERR_BITS.quantizeWeight,
      label: 'quantizeWeight',
    },
    a,
  );
}

// ---- dequantization ----

/** f32 out[o] = decode(q[o]) * S[scale_of(o)]. Params 0 R, 1 C, 2 B, 3 nb, 4 count. */
function dequantCode(mode: 'row' | 'weight', dtype: DType): { code: string; layout: string } {
  const decls: BindingDecl[] = [{ name: 'Y', write: true }, { name: 'Q' }, { name: 'S' }];
  return elementCode(
    5,
    decls,
    mode,
    'o',
    4,
    `  let v = ${decodeFn(dtype)}(byte_at(Q[o >> 2u], o));
  Y[o] = bitcast<u32>(v * bitcast<f32>(S[scale_of(o)]));
`,
  );
}

function runDequant(
  b: Backend,
  q: KernelTensor,
  s: KernelTensor,
  mode: 'row' | 'weight',
  R: number,
  C: number,
  nb: number,
  block: number,
): KernelTensor[] {
  const be = asWebGpu(b, 'fp8 (webgpu)');
  const total = R * C;
  checkBinding(be, 'dequantize output', total * 4);
  const y = be.allocUninit('f32', total);
  if (total === 0) return [outT(y, q.shape, 'f32')];
  const c = dequantCode(mode, q.dtype);
  be.run(
    { label: `fp8_dequant_${mode}`, ...c },
    [be.bind(y), be.bind(be.input(q)), be.bind(be.input(s))],
    [R, C, block, nb, total],
    grid(Math.ceil(total / EL_WG), be.limits.maxComputeWorkgroupsPerDimension),
  );
  return [outT(y, q.shape, 'f32')];
}

export function dequantizeActGpu(b: Backend, [q, s]: KernelTensor[], a: DequantAttrs): KernelTensor[] {
  const [R, C] = rowsCols(q!.shape);
  return runDequant(b, q!, s!, 'row', R, C, Math.ceil(C / a.block), a.block);
}

export function dequantizeWeightGpu(b: Backend, [q, s]: KernelTensor[], a: DequantAttrs): KernelTensor[] {
  const [R, C] = [q!.shape[0]!, q!.shape[1]!];
  return runDequant(b, q!, s!, 'weight', R, C, Math.ceil(C / a.block), a.block);
}
