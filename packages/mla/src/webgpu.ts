// WGSL versions of the two latent-attention ops, registered for core's 'webgpu' backend.
//
// One workgroup handles one query token and a group of up to 16 heads. It walks the visible keys in
// tiles: the tile's latent rows [TK, d_c + d_R] are loaded into workgroup memory once and used by
// every head of the group (with ≤ 16 heads, each cached row is read once per query token), each
// (head, key) score is one thread's dot product, each head's running max / sum is updated by one
// thread (online softmax in f32), and the output accumulator [heads, d_c] lives in registers spread
// over the workgroup. Only the causal limit of the token is needed (the tile is clipped to it), so
// no mask is built. The paged variant finds key j at pool row table[j / bs] * bs + j % bs.
//
// The kernels reach the device through core's typed WebGpuBackend (asWebGpu: run, bind, allocUninit,
// input, limits); this module never imports the Node entry, so it stays browser-safe.
import {
  asWebGpu,
  bindingDecls,
  layoutKey,
  paramsDecl,
  type Backend,
  type BindingDecl,
  type KernelTensor,
  type WebGpuBackend,
} from '@dsv3/core';
import type { FlashPrefillAttrs, PagedAttentionAttrs } from './attention-attrs.js';

const f32bits = (x: number): number => new Uint32Array(new Float32Array([x]).buffer)[0]!;

interface Plan {
  HG: number;
  TK: number;
  WG: number;
  PER: number;
}

/** Heads per workgroup, keys per tile, threads, accumulator slots per thread. */
function plan(be: WebGpuBackend, H: number, C: number, R: number): Plan {
  const HG = Math.min(H, 16);
  const WG = Math.min(256, be.limits.maxComputeInvocationsPerWorkgroup);
  const words = Math.floor((Math.min(be.limits.maxComputeWorkgroupStorageSize, 48 * 1024) * 0.9) / 4) - 3 * HG;
  const TK = Math.max(1, Math.min(64, Math.floor(words / (C + R + HG))));
  if (TK * (C + R + HG) + 3 * HG > be.limits.maxComputeWorkgroupStorageSize / 4) {
    throw new RangeError(
      `webgpu MLA attention: one latent row (${C} + ${R} floats) does not fit the ${be.limits.maxComputeWorkgroupStorageSize}-byte workgroup memory`,
    );
  }
  return { HG, TK, WG, PER: Math.ceil((HG * C) / WG) };
}

const PREFILL_BINDINGS: BindingDecl[] = [
  { name: 'outp', write: true, type: 'f32' },
  { name: 'ql', type: 'f32' },
  { name: 'qr', type: 'f32' },
  { name: 'kv', type: 'f32' },
  { name: 'kr', type: 'f32' },
];
const PAGED_BINDINGS: BindingDecl[] = [
  ...PREFILL_BINDINGS,
  { name: 'tables', type: 'i32' },
  { name: 'lengths', type: 'i32' },
];

function shader(p: Plan, C: number, R: number, paged: boolean): string {
  const D = C + R;
  const { HG, TK, WG, PER } = p;
  const bindings = bindingDecls(paged ? PAGED_BINDINGS : PREFILL_BINDINGS);
  // params: 0 H, 1 S, 2 T (contiguous), 3 causal offset (contiguous), 4 scale bits, 5 maxBlocks, 6 blockSize
  const rowOf = paged
    ? `fn row_of(b: u32, j: u32) -> u32 { let bs = P(6u); return u32(tables[b * P(5u) + j / bs]) * bs + j % bs; }`
    : `fn row_of(b: u32, j: u32) -> u32 { return b * P(2u) + j; }`;
  const extent = paged ? `let T = u32(lengths[b]); let limit = T - S + s;` : `let T = P(2u); let limit = P(3u) + s;`;
  return `${paramsDecl(7)}
${bindings}
const C: u32 = ${C}u;
const R: u32 = ${R}u;
const D: u32 = ${D}u;
const HG: u32 = ${HG}u;
const TK: u32 = ${TK}u;
const WG: u32 = ${WG}u;
const PER: u32 = ${PER}u;
var<workgroup> tile: array<f32, ${TK * D}>;
var<workgroup> pr: array<f32, ${HG * TK}>;
var<workgroup> mrun: array<f32, ${HG}>;
var<workgroup> lrun: array<f32, ${HG}>;
var<workgroup> alpha: array<f32, ${HG}>;
${rowOf}
@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let H = P(0u);
  let S = P(1u);
  let scale = bitcast<f32>(P(4u));
  let h0 = wid.x * HG;
  let s = wid.y;
  let b = wid.z;
  ${extent}
  let kEnd = min(T, limit + 1u);
  let qrow = (b * S + s) * H;
  var acc: array<f32, ${PER}>;
  for (var k = 0u; k < PER; k++) { acc[k] = 0.0; }
  if (lid < HG) { mrun[lid] = -3.0e38; lrun[lid] = 0.0; }
  workgroupBarrier();
  for (var k0 = 0u; k0 < kEnd; k0 += TK) {
    let n = min(TK, kEnd - k0);
    for (var i = lid; i < n * D; i += WG) {
      let t = i / D;
      let c = i % D;
      let row = row_of(b, k0 + t);
      if (c < C) { tile[i] = kv[row * C + c]; } else { tile[i] = kr[row * R + (c - C)]; }
    }
    workgroupBarrier();
    for (var i = lid; i < HG * n; i += WG) {
      let hh = i / n;
      let t = i % n;
      let h = h0 + hh;
      var d = 0.0;
      if (h < H) {
        let qo = (qrow + h) * C;
        let qro = (qrow + h) * R;
        for (var c = 0u; c < C; c++) { d += ql[qo + c] * tile[t * D + c]; }
        for (var c = 0u; c < R; c++) { d += qr[qro + c] * tile[t * D + C + c]; }
      }
      pr[hh * TK + t] = d * scale;
    }
    workgroupBarrier();
    if (lid < HG) {
      var mt = -3.0e38;
      for (var t = 0u; t < n; t++) { mt = max(mt, pr[lid * TK + t]); }
      let mo = mrun[lid];
      let mn = max(mo, mt);
      var sum = 0.0;
      for (var t = 0u; t < n; t++) {
        let e = exp(pr[lid * TK + t] - mn);
        pr[lid * TK + t] = e;
        sum += e;
      }
      let a = exp(mo - mn);
      alpha[lid] = a;
      lrun[lid] = lrun[lid] * a + sum;
      mrun[lid] = mn;
    }
    workgroupBarrier();
    for (var k = 0u; k < PER; k++) {
      let e = lid + k * WG;
      if (e < HG * C) {
        let hh = e / C;
        let c = e % C;
        var a = acc[k] * alpha[hh];
        for (var t = 0u; t < n; t++) { a += pr[hh * TK + t] * tile[t * D + c]; }
        acc[k] = a;
      }
    }
    workgroupBarrier();
  }
  for (var k = 0u; k < PER; k++) {
    let e = lid + k * WG;
    let hh = e / C;
    let h = h0 + hh;
    if (e < HG * C && h < H) {
      outp[(qrow + h) * C + e % C] = acc[k] / lrun[hh];
    }
  }
}
`;
}

function checkF32(op: string, ts: KernelTensor[]): void {
  for (const t of ts) if (t.dtype !== 'f32') throw new TypeError(`${op} on webgpu needs f32 tensors, got ${t.dtype}`);
}

function checkBinding(be: WebGpuBackend, op: string, what: string, elems: number): void {
  if (elems * 4 > be.bindingLimit)
    throw new RangeError(
      `${op} on webgpu: ${what} (${elems * 4} bytes) exceeds the storage binding limit of ${be.bindingLimit} bytes`,
    );
}

function dispatch(be: WebGpuBackend, op: string, H: number, S: number, N: number, p: Plan): [number, number, number] {
  const g: [number, number, number] = [Math.ceil(H / p.HG), S, N];
  const max = be.limits.maxComputeWorkgroupsPerDimension;
  if (g[1] > max || g[2] > max)
    throw new RangeError(
      `${op} on webgpu: ${S} queries x ${N} sequences need more than ${max} workgroups along one axis`,
    );
  return g;
}

/** inputs [qLat [B,S,H,C], qRope [B,S,H,R], ckv [B,T,C], kr [B,T,R]] → [out [B,S,H,C]] */
export function flashPrefillWebGpu(b: Backend, inputs: KernelTensor[], attrs: FlashPrefillAttrs): KernelTensor[] {
  const op = 'mla.flashPrefill';
  const be = asWebGpu(b, op);
  checkF32(op, inputs);
  const [ql, qr, kv, kr] = inputs as [KernelTensor, KernelTensor, KernelTensor, KernelTensor];
  const [B, S, H, C] = ql.shape as [number, number, number, number];
  const R = qr.shape[3]!;
  const T = kv.shape[1]!;
  for (const [w, t] of [
    ['qLat', ql],
    ['ckv', kv],
  ] as const)
    checkBinding(
      be,
      op,
      w,
      t.shape.reduce((a, x) => a * x, 1),
    );
  const p = plan(be, H, C, R);
  const out = be.allocUninit('f32', B * S * H * C);
  const kernel = {
    label: `mla_prefill_${C}_${R}_${p.HG}_${p.TK}`,
    code: shader(p, C, R, false),
    layout: layoutKey(PREFILL_BINDINGS),
  };
  be.run(
    kernel,
    [be.bind(out), be.bind(be.input(ql)), be.bind(be.input(qr)), be.bind(be.input(kv)), be.bind(be.input(kr))],
    [H, S, T, attrs.causalOffset, f32bits(attrs.scale), 0, 0],
    dispatch(be, op, H, S, B, p),
  );
  return [{ storage: out, shape: [B, S, H, C], dtype: 'f32' }];
}

/** inputs [qLat [N,S,H,C], qRope, poolKv [nb,bs,C], poolKr [nb,bs,R], tables i32 [N,maxB], lengths i32 [N]] → [out [N,S,H,C]] */
export function pagedAttentionWebGpu(b: Backend, inputs: KernelTensor[], attrs: PagedAttentionAttrs): KernelTensor[] {
  const op = 'mla.pagedAttention';
  const be = asWebGpu(b, op);
  const [ql, qr, kv, kr, tab, len] = inputs as [
    KernelTensor,
    KernelTensor,
    KernelTensor,
    KernelTensor,
    KernelTensor,
    KernelTensor,
  ];
  checkF32(op, [ql, qr, kv, kr]);
  if (tab.dtype !== 'i32' || len.dtype !== 'i32') throw new TypeError(`${op}: block tables and lengths must be i32`);
  const [N, S, H, C] = ql.shape as [number, number, number, number];
  const R = qr.shape[3]!;
  checkBinding(
    be,
    op,
    'the latent pool of one layer',
    kv.shape.reduce((a, x) => a * x, 1),
  );
  const p = plan(be, H, C, R);
  const out = be.allocUninit('f32', N * S * H * C);
  const kernel = {
    label: `mla_paged_${C}_${R}_${p.HG}_${p.TK}`,
    code: shader(p, C, R, true),
    layout: layoutKey(PAGED_BINDINGS),
  };
  be.run(
    kernel,
    [
      be.bind(out),
      be.bind(be.input(ql)),
      be.bind(be.input(qr)),
      be.bind(be.input(kv)),
      be.bind(be.input(kr)),
      be.bind(be.input(tab)),
      be.bind(be.input(len)),
    ],
    [H, S, 0, 0, f32bits(attrs.scale), tab.shape[1]!, attrs.blockSize],
    dispatch(be, op, H, S, N, p),
  );
  return [{ storage: out, shape: [N, S, H, C], dtype: 'f32' }];
}
