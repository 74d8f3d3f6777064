// AdamW's update of one parameter as three element kernels (new weight, first and second moment)
// instead of ~30 composed dispatches: each recomputes the f32 moments from the stored ones (f32 or
// bf16) in the order the composed update uses, so both paths compute the same values.
import type { Backend, KernelTensor } from '../../backend.js';
import type { AdamWKernelAttrs } from '../../optim/adamw.js';
import { asWebGpu } from '../backend.js';
import { f32Bits } from '../wgsl.js';
import { elementwise, type Params } from './elem.js';

/** [w: f32, g: f32, m, v (f32 or bf16)] → [w', m', v' (the moments in attrs.stateDType)]. */
export function adamwKernel(b: Backend, inputs: KernelTensor[], a: AdamWKernelAttrs): KernelTensor[] {
  const be = asWebGpu(b);
  const [w, g, m, v] = inputs as [KernelTensor, KernelTensor, KernelTensor, KernelTensor];
  for (const t of [g, m, v]) {
    if (t.shape.length !== w.shape.length || t.shape.some((d, i) => d !== w.shape[i]))
      throw new Error(`adamw: operand of shape [${t.shape}] for a parameter of shape [${w.shape}]`);
  }
  if (w.dtype !== 'f32' || g.dtype !== 'f32')
    throw new TypeError(`adamw on webgpu: weight and gradient must be f32, got ${w.dtype} and ${g.dtype}`);
  const inputsOf = [
    { name: 'xw', t: w, contiguous: true },
    { name: 'xg', t: g, contiguous: true },
    { name: 'xm', t: m, contiguous: true },
    { name: 'xv', t: v, contiguous: true },
  ];
  const c = (p: Params, x: number): string => `bitcast<f32>(P(${p.push(f32Bits(x))}u))`;
  const moments = (p: Params): string => `
fn new_m(i: u32) -> f32 { return xm_ld(i) * ${c(p, a.b1)} + xg_ld(i) * ${c(p, 1 - a.b1)}; }
fn new_v(i: u32) -> f32 { let g = xg_ld(i); return xv_ld(i) * ${c(p, a.b2)} + (g * g) * ${c(p, 1 - a.b2)}; }`;
  const run = (what: 'w' | 'm' | 'v', out: 'f32' | 'bf16') =>
    elementwise(
      be,
      {
        label: `adamw_${what}_${m.dtype}`,
        out,
        raw: false,
        inputs: inputsOf,
        body: (p) => {
          const lib = moments(p);
          if (what === 'm') return `${lib}\nfn value(i: u32) -> f32 { return new_m(i); }`;
          if (what === 'v') return `${lib}\nfn value(i: u32) -> f32 { return new_v(i); }`;
          const decayed = a.decay === 1 ? 'xw_ld(i)' : `xw_ld(i) * ${c(p, a.decay)}`;
          return `${lib}
fn value(i: u32) -> f32 {
  let update = (new_m(i) / ${c(p, a.c1)}) / (sqrt(new_v(i) / ${c(p, a.c2)}) + ${c(p, a.eps)});
  return ${decayed} - update * ${c(p, a.lr)};
}`;
        },
      },
      w.shape,
    );
  return [run('w', 'f32'), run('m', a.stateDType), run('v', a.stateDType)];
}
