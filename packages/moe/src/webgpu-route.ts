// WebGPU (WGSL) kernels of routing and dispatch (see route-kernels.ts for the ops).
//
// Routing: one invocation per token, the rule of routing.ts step by step in f32: choice = s + bias,
// group score (top-2 sum or max), the top `topkGroup` groups, then the top k allowed experts picked one
// at a time as the largest (value, lowest index): the same order as the host's insertion sort, ties
// included. The sizes (E, k, groups) are compiled into the shader, one pipeline per gate shape.
//
// Dispatch: one workgroup does the stable counting sort. Invocation e (strided over the experts) counts
// expert e's pairs, one invocation writes the exclusive prefix sum, then invocation e walks the pairs
// again writing its rows in pair order. O(E·T·k / 256) work per invocation, no atomics, deterministic.
import {
  asWebGpu,
  bindingDecls,
  layoutKey,
  paramsDecl,
  type Backend,
  type BindingDecl,
  type KernelCode,
  type KernelTensor,
} from '@dsv3/core';
import type { DispatchAttrs, RouteAttrs } from './route-kernels';

const ROUTE_BINDINGS: BindingDecl[] = [
  { name: 'Idx', write: true, type: 'i32' },
  { name: 'W', write: true, type: 'f32' },
  { name: 'S', type: 'f32' },
  { name: 'Bias', type: 'f32' },
  { name: 'Ovr', type: 'i32' },
  { name: 'Nan', atomic: true },
];

function routeCode(a: RouteAttrs): string {
  const { numExperts: E, k, nGroup, topkGroup } = a;
  const G = E / nGroup;
  const limit = nGroup > 1 && topkGroup < nGroup;
  const words = Math.ceil(E / 32);
  const choice = a.hasBias ? 'S[base + e] + Bias[e]' : 'S[base + e]';
  const groupScore =
    a.groupScore === 'max'
      ? `var sc = -3.4e38; for (var j = 0u; j < ${G}u; j++) { sc = max(sc, choiceOf(base, g * ${G}u + j)); }`
      : G === 1
        ? 'let sc = choiceOf(base, g);'
        : `var v1 = -3.4e38; var v2 = -3.4e38;
      for (var j = 0u; j < ${G}u; j++) {
        let v = choiceOf(base, g * ${G}u + j);
        if (v > v1) { v2 = v1; v1 = v; } else if (v > v2) { v2 = v; }
      }
      let sc = v1 + v2;`;
  const pick = a.override
    ? `for (var j = 0u; j < ${k}u; j++) { sel[j] = u32(Ovr[t * ${k}u + j]); }`
    : `${
        limit
          ? `var gs: array<f32, ${nGroup}>;
    for (var g = 0u; g < ${nGroup}u; g++) { ${groupScore} gs[g] = sc; }
    var keep: array<bool, ${nGroup}>;
    for (var i = 0u; i < ${topkGroup}u; i++) {
      var best = ${nGroup}u;
      for (var g = 0u; g < ${nGroup}u; g++) {
        if (!keep[g] && (best == ${nGroup}u || gs[g] > gs[best])) { best = g; }
      }
      keep[best] = true;
    }`
          : ''
      }
    var taken: array<u32, ${words}>;
    for (var j = 0u; j < ${k}u; j++) {
      var best = ${E}u; var bv = 0.0;
      for (var e = 0u; e < ${E}u; e++) {
        ${limit ? `if (!keep[e / ${G}u]) { continue; }` : ''}
        if ((taken[e >> 5u] & (1u << (e & 31u))) != 0u) { continue; }
        let v = choiceOf(base, e);
        if (best == ${E}u || v > bv) { best = e; bv = v; }
      }
      taken[best >> 5u] |= 1u << (best & 31u);
      sel[j] = best;
    }`;
  return `${paramsDecl(2)}
${bindingDecls(ROUTE_BINDINGS)}
fn choiceOf(base: u32, e: u32) -> f32 { return ${choice}; }
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let t = gid.x;
  if (t >= P(0u)) { return; }
  let base = t * ${E}u;
  // a NaN score cannot be ranked: count the token (bit test, not x != x, which a compiler may fold)
  var bad = false;
  for (var e = 0u; e < ${E}u; e++) { bad = bad || (bitcast<u32>(S[base + e]) & 0x7fffffffu) > 0x7f800000u; }
  if (bad) { atomicAdd(&Nan, 1u); }
  var sel: array<u32, ${k}>;
  ${pick}
  var s = 0.0;
  var w: array<f32, ${k}>;
  for (var j = 0u; j < ${k}u; j++) { w[j] = S[base + sel[j]]; s = s + w[j]; }
  let denom = s + 1e-20;
  for (var j = 0u; j < ${k}u; j++) {
    Idx[t * ${k}u + j] = i32(sel[j]);
    W[t * ${k}u + j] = ${a.normTopkProb ? 'w[j] / denom' : 'w[j]'} * Pf(1u);
  }
}
`;
}

const routeKernels = new Map<string, KernelCode>();

export function webgpuRoute(b: Backend, inputs: KernelTensor[], a: RouteAttrs): KernelTensor[] {
  const be = asWebGpu(b, 'moe routing');
  const s = inputs[0]!;
  if (s.dtype !== 'f32') throw new TypeError(`moe routing on webgpu needs f32 scores, got ${s.dtype}`);
  const T = s.shape[0]!;
  const key = JSON.stringify({ ...a, routedScalingFactor: 0 });
  let code = routeKernels.get(key);
  if (!code)
    routeKernels.set(key, (code = { label: 'moe_route', code: routeCode(a), layout: layoutKey(ROUTE_BINDINGS) }));
  const S = be.input(s);
  const bias = a.hasBias ? be.input(inputs[1]!) : S;
  const ovr = a.override ? be.input(inputs[inputs.length - 1]!) : S;
  const idx = be.allocUninit('i32', T * a.k);
  const w = be.allocUninit('f32', T * a.k);
  const nan = be.alloc('i32', 1);
  const scale = new Float32Array([a.routedScalingFactor]);
  const params = [T, new Uint32Array(scale.buffer)[0]!];
  const bound = [be.bind(idx), be.bind(w), be.bind(S), be.bind(bias), be.bind(ovr), be.bind(nan)];
  be.run(code, bound, params, [Math.ceil(T / 64), 1, 1]);
  return [
    { storage: idx, shape: [T, a.k], dtype: 'i32' },
    { storage: w, shape: [T, a.k], dtype: 'f32' },
    { storage: nan, shape: [1], dtype: 'i32' },
  ];
}

const DISPATCH_BINDINGS: BindingDecl[] = [
  { name: 'Off', write: true, type: 'i32' },
  { name: 'Cnt', write: true, type: 'i32' },
  { name: 'Rows', write: true, type: 'i32' },
  { name: 'Perm', write: true, type: 'i32' },
  { name: 'Idx', type: 'i32' },
];

const DISPATCH: KernelCode = {
  label: 'moe_dispatch',
  layout: layoutKey(DISPATCH_BINDINGS),
  code: `${paramsDecl(3)}
${bindingDecls(DISPATCH_BINDINGS)}
@compute @workgroup_size(256)
fn main(@builtin(local_invocation_id) lid: vec3<u32>) {
  let n = P(0u); let E = P(1u); let k = P(2u);
  for (var e = lid.x; e < E; e += 256u) {
    var c = 0;
    for (var p = 0u; p < n; p++) { if (u32(Idx[p]) == e) { c++; } }
    Cnt[e] = c;
  }
  storageBarrier();
  if (lid.x == 0u) {
    var acc = 0;
    Off[0] = 0;
    for (var e = 0u; e < E; e++) { acc += Cnt[e]; Off[e + 1u] = acc; }
  }
  storageBarrier();
  for (var e = lid.x; e < E; e += 256u) {
    var pos = u32(Off[e]);
    for (var p = 0u; p < n; p++) {
      if (u32(Idx[p]) == e) { Perm[pos] = i32(p); Rows[pos] = i32(p / k); pos++; }
    }
  }
}
`,
};

export function webgpuDispatch(
  b: Backend,
  [indices]: KernelTensor[],
  { numExperts: E }: DispatchAttrs,
): KernelTensor[] {
  const be = asWebGpu(b, 'moe dispatch');
  const [T, k] = indices!.shape as [number, number];
  const n = T * k;
  const off = be.allocUninit('i32', E + 1);
  const cnt = be.allocUninit('i32', E);
  const rows = be.allocUninit('i32', Math.max(n, 1));
  const perm = be.allocUninit('i32', Math.max(n, 1));
  const idx = be.input(indices!);
  be.run(DISPATCH, [be.bind(off), be.bind(cnt), be.bind(rows), be.bind(perm), be.bind(idx)], [n, E, k], [1, 1, 1]);
  return [
    { storage: off, shape: [E + 1], dtype: 'i32' },
    { storage: cnt, shape: [E], dtype: 'i32' },
    { storage: rows, shape: [n], dtype: 'i32' },
    { storage: perm, shape: [n], dtype: 'i32' },
  ];
}
