// 'rmsnormBackward' [x, w, g] (f32) → [dx, dw], the contract of the CPU's fused kernel: one pass over
// each row (the composed rule takes ~17 dispatches) with r = (mean(x²) + eps)^-1/2 gives
// dx = r·(g·w) − x·r³·mean(g·w·x) and the terms g·x·r, whose sum over rows (one reduce) is dw.
import type { Backend, KernelTensor } from '../../backend.js';
import { sizeOf } from '../../shape.js';
import { asWebGpu } from '../backend.js';
import { bindingDecls, f32Bits, grid, layoutKey, LIB, paramsDecl } from '../wgsl.js';
import { reduceKernel, rowKernelEntry, rowWG, treeF32 } from './reduce.js';

export function rmsnormBackwardKernel(b: Backend, [x, w, g]: KernelTensor[], { eps }: { eps: number }): KernelTensor[] {
  const be = asWebGpu(b);
  for (const t of [x!, w!, g!])
    if (t.dtype !== 'f32') throw new TypeError(`rmsnormBackward on webgpu needs f32 tensors, got ${t.dtype}`);
  const n = x!.shape[x!.shape.length - 1] ?? 1;
  const size = sizeOf(x!.shape);
  const rows = n === 0 ? 0 : size / n;
  const dx = be.allocUninit('f32', size);
  const gxr = be.allocUninit('f32', size);
  const WG = rowWG(n);
  const decls = [
    { name: 'dx', write: true },
    { name: 'gxr', write: true },
    { name: 'x' },
    { name: 'w' },
    { name: 'g' },
  ];
  const ld = (a: string, i: string): string => `bitcast<f32>(${a}[${i}])`;
  const code = `${paramsDecl(4)}
${bindingDecls(decls)}
${LIB}
var<workgroup> red: array<f32, ${WG}>;
${rowKernelEntry(WG)}
  let base = row * n;
  var s = 0.0;
  for (var j = lid; j < n; j = j + ${WG}u) { let v = ${ld('x', 'base + j')}; s = s + v * v; }
  red[lid] = s;
  ${treeF32(WG, (a, c) => `${a} + ${c}`, 'ss')}
  var t = 0.0;
  for (var j = lid; j < n; j = j + ${WG}u) { t = t + ${ld('g', 'base + j')} * ${ld('w', 'j')} * ${ld('x', 'base + j')}; }
  red[lid] = t;
  ${treeF32(WG, (a, c) => `${a} + ${c}`, 'dot')}
  let r = 1.0 / sqrt(ss / f32(n) + Pf(2u));
  let k = r * r * r * (dot / f32(n));
  for (var j = lid; j < n; j = j + ${WG}u) {
    let xv = ${ld('x', 'base + j')};
    let gv = ${ld('g', 'base + j')};
    dx[base + j] = bitcast<u32>(gv * ${ld('w', 'j')} * r - xv * k);
    gxr[base + j] = bitcast<u32>(gv * xv * r);
  }
}
`;
  if (rows > 0)
    be.run(
      { label: 'rmsnorm_backward_f32', code, layout: layoutKey(decls) },
      [be.bind(dx), be.bind(gxr), be.bind(be.input(x!)), be.bind(be.input(w!)), be.bind(be.input(g!))],
      [rows, n, f32Bits(eps)],
      grid(rows, be.limits.maxComputeWorkgroupsPerDimension),
    );
  const [dw] = reduceKernel(be, [{ storage: gxr, shape: [rows, n], dtype: 'f32' }], { op: 'sum', axis: 0 });
  be.free(gxr);
  return [{ storage: dx, shape: [...x!.shape], dtype: 'f32' }, dw!];
}
