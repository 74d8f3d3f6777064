// The WGSL kernel of 'mtp.verify': one workgroup of 256 lanes per sequence, walking its K drafts with
// the sampling kernel's row functions (ROW_WGSL); the same steps and f32 arithmetic as the CPU kernel
// (verify-kernel-cpu.ts). Decisions lane 0 makes from storage reach the other lanes through
// workgroupUniformLoad, so every barrier stays in uniform control flow.
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
import { ROW_WGSL } from './sample-kernel-webgpu.js';
import type { VerifyAttrs } from './verify-kernel-cpu.js';

const BINDINGS: BindingDecl[] = [
  { name: 'out', write: true, type: 'i32' },
  { name: 'w', write: true, type: 'f32' },
  { name: 'logits', type: 'f32' },
  { name: 'drafts', type: 'i32' },
  { name: 'settings', type: 'f32' },
  { name: 'topk', type: 'i32' },
  { name: 'keys', type: 'u32' },
];

// params: 0 V, 1 elements per lane, 2 the bits of -inf, 3 K, 4 rows per sequence, 5 draft rows (0/1)
const CODE = `${paramsDecl(6)}
${bindingDecls(BINDINGS)}
${ROW_WGSL}
@compute @workgroup_size(${SAMPLE_LANES})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let V = P(0u);
  let per = P(1u);
  let neg_inf = bitcast<f32>(P(2u));
  let K = P(3u);
  let R = P(4u);
  let b = wid.x;
  let lo = min(V, lid * per);
  let hi = min(V, lo + per);
  if (lid == 0u) { bf = settings[4u * b]; }
  let Tt = workgroupUniformLoad(&bf);
  if (lid == 0u) { bf = settings[4u * b + 1u]; }
  let pt = workgroupUniformLoad(&bf);
  if (lid == 0u) { bf = settings[4u * b + 2u]; }
  let Td = workgroupUniformLoad(&bf);
  if (lid == 0u) { bf = settings[4u * b + 3u]; }
  let pd = workgroupUniformLoad(&bf);
  if (lid == 0u) { bi = topk[2u * b]; }
  let kt = workgroupUniformLoad(&bi);
  if (lid == 0u) { bi = topk[2u * b + 1u]; }
  let kd = workgroupUniformLoad(&bi);
  if (lid == 0u) { bu = keys[2u * b]; }
  let seed = workgroupUniformLoad(&bu);
  if (lid == 0u) { bu = keys[2u * b + 1u]; }
  let c = workgroupUniformLoad(&bu);
  var j = 0u;
  var z = 0.0;
  var zbase = 0u;
  var bad = false;
  var rejected = false;
  for (; j < K; j++) {
    let pb = (b * R + j) * V;
    let m = row_max(pb, lo, hi, lid, neg_inf);
    if (m.arg < 0) { bad = true; break; }
    let zp = row_weights(pb, lo, hi, lid, V, m.best, Tt, kt, pt);
    if (lid == 0u) { bu = u32(drafts[b * K + j]); }
    let x = workgroupUniformLoad(&bu);
    var greedyQ = P(5u) == 0u || !(Td > 0.0);
    var zq = 1.0;
    let qb = (b * R + K + 1u + j) * V;
    if (!greedyQ) {
      let mq = row_max(qb, lo, hi, lid, neg_inf);
      if (mq.arg < 0) { greedyQ = true; } else { zq = row_weights(qb, lo, hi, lid, V, mq.best, Td, kd, pd); }
    }
    if (lid == 0u) {
      let wpx = w[pb + x];
      var wqx = 1.0;
      if (!greedyQ) { wqx = w[qb + x]; }
      let u = uniform_of(seed, c + j);
      var ok = u * wqx * zp < wpx * zq;
      if (wqx <= 0.0) { ok = wpx > 0.0; }
      bu = select(0u, 1u, ok);
    }
    if (workgroupUniformLoad(&bu) == 1u) { continue; }
    // rejected: the residual max(0, p − q), scaled by z_p · z_q, replaces p's weights
    for (var i = lo; i < hi; i++) {
      var wq = select(0.0, 1.0, i == x);
      if (!greedyQ) { wq = w[qb + i]; }
      let r = w[pb + i] * zq - wq * zp;
      w[pb + i] = select(0.0, r, r > 0.0);
    }
    z = mass_ge(pb, lo, hi, 0u, lid);
    if (!(z > 0.0)) { z = row_weights(pb, lo, hi, lid, V, m.best, Tt, kt, pt); }
    zbase = pb;
    rejected = true;
    break;
  }
  if (!bad && !rejected) {
    zbase = (b * R + K) * V;
    let m = row_max(zbase, lo, hi, lid, neg_inf);
    if (m.arg < 0) { bad = true; } else { z = row_weights(zbase, lo, hi, lid, V, m.best, Tt, kt, pt); }
  }
  if (lid != 0u) { return; }
  out[2u * b] = i32(j);
  if (bad) { out[2u * b + 1u] = -1; } else { out[2u * b + 1u] = draw(zbase, per, V, z, seed, c + K); }
}
`;

/** See verifyCpu: logits f32 [B, R, V], drafts i32 [B, K], settings f32 [B, 4], topK i32 [B, 2], keys u32 [B, 2] → i32 [B, 2]. */
export function verifyWebGpu(b: Backend, inputs: KernelTensor[], { draftRows }: VerifyAttrs): KernelTensor[] {
  const be = asWebGpu(b, 'mtp.verify');
  const [lt, dt, st, kt, yt] = inputs as [KernelTensor, KernelTensor, KernelTensor, KernelTensor, KernelTensor];
  const [B, R, V] = lt.shape as [number, number, number];
  const K = dt.shape[1]!;
  if (B * R * V * 4 > be.bindingLimit)
    throw new RangeError(
      `mtp.verify on webgpu: ${B}x${R} rows of ${V} logits exceed the storage binding limit of ${be.bindingLimit} bytes`,
    );
  const out = be.allocUninit('i32', 2 * B);
  const w = be.allocUninit('f32', B * R * V);
  be.run(
    { label: 'mtp_verify', code: CODE, layout: layoutKey(BINDINGS) },
    [out, w, ...[lt, dt, st, kt, yt].map((t) => be.input(t))].map((s) => be.bind(s)),
    [V, Math.ceil(V / SAMPLE_LANES), 0xff800000, K, R, draftRows ? 1 : 0],
    [B, 1, 1],
  );
  be.free(w);
  return [{ storage: out, shape: [B, 2], dtype: 'i32' }];
}
