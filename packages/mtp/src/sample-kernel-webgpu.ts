// The WGSL kernel of 'mtp.sample': one workgroup of 256 lanes per row, lane t owning the t-th chunk of
// the row. Thresholds for top-k and top-p are found exactly by a bitwise search over order-preserving
// u32 keys of the logits (32 rounds of count / mass reductions), so nothing is sorted. Sums run in f32,
// chunk by chunk and then over the chunk sums in order, as the CPU kernel (sample-kernel-cpu.ts) does.
import {
  asWebGpu,
  bindingDecls,
  layoutKey,
  paramsDecl,
  type Backend,
  type BindingDecl,
  type KernelTensor,
} from '@dsv3/core';
import { SAMPLE_LANES } from './sample-kernel-cpu.js';

const BINDINGS: BindingDecl[] = [
  { name: 'ids', write: true, type: 'i32' },
  { name: 'w', write: true, type: 'f32' },
  { name: 'logits', type: 'f32' },
  { name: 'temp', type: 'f32' },
  { name: 'topk', type: 'i32' },
  { name: 'topp', type: 'f32' },
  { name: 'keys', type: 'u32' },
];

/**
 * WGSL shared by the sampling and verification kernels, over bindings \`logits\` (f32, read) and \`w\`
 * (f32, read_write, the weights of the row at the same offsets): the order-preserving keys, the hash,
 * per-row reductions over the lanes' chunks, the sampling weights of a row and the draw.
 */
export const ROW_WGSL = `
const WG: u32 = ${SAMPLE_LANES}u;
var<workgroup> pv: array<f32, ${SAMPLE_LANES}>;
var<workgroup> pi: array<i32, ${SAMPLE_LANES}>;
var<workgroup> pf: array<f32, ${SAMPLE_LANES}>;
var<workgroup> pu: array<u32, ${SAMPLE_LANES}>;
var<workgroup> bu: u32;
var<workgroup> bi: i32;
var<workgroup> bf: f32;

fn okey(x: f32) -> u32 {
  let b = bitcast<u32>(x);
  if ((b & 0x80000000u) != 0u) { return ~b; }
  return b | 0x80000000u;
}

fn mix(x0: u32) -> u32 {
  var x = x0;
  x ^= x >> 16u;
  x *= 0x7feb352du;
  x ^= x >> 15u;
  x *= 0x846ca68bu;
  x ^= x >> 16u;
  return x;
}

/** The uniform draw in [0, 1) of (seed, counter), as uniformOf() on the host. */
fn uniform_of(seed: u32, counter: u32) -> f32 {
  let h = mix(mix(counter + 0x9e3779b9u) ^ seed);
  return f32(h >> 8u) / 16777216.0;
}

/** Logits of the row with key >= t (all lanes together). */
fn count_ge(base: u32, lo: u32, hi: u32, t: u32, lid: u32) -> u32 {
  var n = 0u;
  for (var i = lo; i < hi; i++) { if (okey(logits[base + i]) >= t) { n++; } }
  pu[lid] = n;
  workgroupBarrier();
  if (lid == 0u) {
    var s = 0u;
    for (var c = 0u; c < WG; c++) { s += pu[c]; }
    bu = s;
  }
  return workgroupUniformLoad(&bu);
}

/** Weight of the row with key >= t; leaves the lanes' sums in pf. */
fn mass_ge(base: u32, lo: u32, hi: u32, t: u32, lid: u32) -> f32 {
  storageBarrier();
  var s = 0.0;
  for (var i = lo; i < hi; i++) { if (okey(logits[base + i]) >= t) { s += w[base + i]; } }
  pf[lid] = s;
  workgroupBarrier();
  if (lid == 0u) {
    var z = 0.0;
    for (var c = 0u; c < WG; c++) { z += pf[c]; }
    bf = z;
  }
  return workgroupUniformLoad(&bf);
}

fn last_positive(base: u32, c: u32, per: u32, V: u32) -> i32 {
  let lo = min(V, c * per);
  for (var i = min(V, lo + per); i > lo; i--) { if (w[base + i - 1u] > 0.0) { return i32(i - 1u); } }
  return -1;
}

struct RowMax { best: f32, arg: i32 }

/** The row's first maximum (NaN never wins) and its index (-1 when nothing beats -inf). */
fn row_max(base: u32, lo: u32, hi: u32, lid: u32, neg_inf: f32) -> RowMax {
  var v = neg_inf;
  var at = -1;
  for (var i = lo; i < hi; i++) { let x = logits[base + i]; if (x > v) { v = x; at = i32(i); } }
  pv[lid] = v;
  pi[lid] = at;
  workgroupBarrier();
  if (lid == 0u) {
    var best = neg_inf;
    var bat = -1;
    for (var c = 0u; c < WG; c++) { if (pv[c] > best) { best = pv[c]; bat = pi[c]; } }
    bf = best;
    bi = bat;
  }
  let best = workgroupUniformLoad(&bf);
  let arg = workgroupUniformLoad(&bi);
  return RowMax(best, arg);
}

/** The row's sampling weights into w (temperature T > 0 → top-k → top-p) and their sum (lane sums in pf). */
fn row_weights(base: u32, lo: u32, hi: u32, lid: u32, V: u32, best: f32, T: f32, k: i32, p: f32) -> f32 {
  var cut = 0u;
  if (k > 0 && u32(k) < V) {
    for (var bit = 31i; bit >= 0i; bit--) {
      let cand = cut | (1u << u32(bit));
      if (count_ge(base, lo, hi, cand, lid) >= u32(k)) { cut = cand; }
    }
  }
  for (var i = lo; i < hi; i++) {
    let x = logits[base + i];
    var e = 0.0;
    if (okey(x) >= cut && x == x) { e = exp((x - best) / T); }
    w[base + i] = e;
  }
  var z = mass_ge(base, lo, hi, 0u, lid);
  if (p < 1.0) {
    let goal = p * z;
    var cut2 = 0u;
    for (var bit = 31i; bit >= 0i; bit--) {
      let cand = cut2 | (1u << u32(bit));
      if (mass_ge(base, lo, hi, cand, lid) >= goal) { cut2 = cand; }
    }
    for (var i = lo; i < hi; i++) { if (okey(logits[base + i]) < cut2) { w[base + i] = 0.0; } }
    z = mass_ge(base, lo, hi, 0u, lid);
  }
  return z;
}

/** Lane 0 only, after a mass_ge over the row's w: the index where the running sum passes u · z. */
fn draw(base: u32, per: u32, V: u32, z: f32, seed: u32, counter: u32) -> i32 {
  let pos = uniform_of(seed, counter) * z;
  var acc = 0.0;
  var lastc = -1;
  for (var c = 0u; c < WG; c++) {
    let next = acc + pf[c];
    if (pf[c] > 0.0) { lastc = i32(c); }
    if (next > pos && pf[c] > 0.0) {
      let c0 = min(V, c * per);
      let c1 = min(V, c0 + per);
      for (var i = c0; i < c1; i++) {
        acc += w[base + i];
        if (w[base + i] > 0.0 && acc > pos) { return i32(i); }
      }
      return last_positive(base, c, per, V);
    }
    acc = next;
  }
  return select(-1, last_positive(base, u32(lastc), per, V), lastc >= 0);
}
`;

// params: 0 V, 1 elements per lane, 2 the bits of -inf (WGSL has no infinite constants)
const CODE = `${paramsDecl(3)}
${bindingDecls(BINDINGS)}
${ROW_WGSL}
@compute @workgroup_size(${SAMPLE_LANES})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let V = P(0u);
  let per = P(1u);
  let b = wid.x;
  let base = b * V;
  let lo = min(V, lid * per);
  let hi = min(V, lo + per);
  let m = row_max(base, lo, hi, lid, bitcast<f32>(P(2u)));
  if (lid == 0u) { bf = temp[b]; }
  let T = workgroupUniformLoad(&bf);
  if (!(T > 0.0) || m.arg < 0) {
    if (lid == 0u) { ids[b] = select(max(m.arg, 0), -1, m.arg < 0 && T > 0.0); }
    return;
  }
  if (lid == 0u) { bi = topk[b]; }
  let k = workgroupUniformLoad(&bi);
  if (lid == 0u) { bf = topp[b]; }
  let p = workgroupUniformLoad(&bf);
  let z = row_weights(base, lo, hi, lid, V, m.best, T, k, p);
  if (lid != 0u) { return; }
  ids[b] = draw(base, per, V, z, keys[2u * b], keys[2u * b + 1u]);
}
`;

/** inputs [logits f32 [B, V], temperature f32 [B], topK i32 [B], topP f32 [B], keys u32 [B, 2]] → ids i32 [B] */
export function sampleWebGpu(b: Backend, inputs: KernelTensor[]): KernelTensor[] {
  const be = asWebGpu(b, 'mtp.sample');
  const [lt, tt, kt, pt, st] = inputs as [KernelTensor, KernelTensor, KernelTensor, KernelTensor, KernelTensor];
  const [B, V] = lt.shape as [number, number];
  if (B * V * 4 > be.bindingLimit)
    throw new RangeError(
      `mtp.sample on webgpu: ${B} rows of ${V} logits exceed the storage binding limit of ${be.bindingLimit} bytes`,
    );
  const ids = be.allocUninit('i32', B);
  const w = be.allocUninit('f32', B * V);
  be.run(
    { label: 'mtp_sample', code: CODE, layout: layoutKey(BINDINGS) },
    [ids, w, ...[lt, tt, kt, pt, st].map((t) => be.input(t))].map((s) => be.bind(s)),
    [V, Math.ceil(V / SAMPLE_LANES), 0xff800000],
    [B, 1, 1],
  );
  be.free(w);
  return [{ storage: ids, shape: [B], dtype: 'i32' }];
}
