// The backward kernels of SiLU and softmax / log-softmax, with the contracts of the CPU's fused ones:
//   siluBackward     [x, g] → [dx]   dx = g·s·(1 + x·(1 − s)), s = sigmoid(x)   (one element kernel)
//   softmaxBackward  [y, g] → [dx]   dx = y·(g − Σ g·y), or for log-softmax g − exp(y)·Σ g (one pass a row)
import type { Backend, KernelTensor } from '../../backend.js';
import { sizeOf } from '../../shape.js';
import { asWebGpu } from '../backend.js';
import { bindingDecls, grid, layoutKey, LIB, paramsDecl } from '../wgsl.js';
import { elementwise } from './elem.js';
import { rowKernelEntry, rowWG, treeF32 } from './reduce.js';

function requireF32(op: string, ...ts: KernelTensor[]): void {
  for (const t of ts) if (t.dtype !== 'f32') throw new TypeError(`${op} on webgpu needs f32 tensors, got ${t.dtype}`);
}

export function siluBackwardKernel(b: Backend, [x, g]: KernelTensor[]): KernelTensor[] {
  requireF32('siluBackward', x!, g!);
  return [
    elementwise(
      b,
      {
        label: 'silu_backward_f32',
        out: 'f32',
        raw: false,
        inputs: [
          { name: 'xx', t: x!, contiguous: true },
          { name: 'xg', t: g!, contiguous: true },
        ],
        body: () => `fn value(i: u32) -> f32 {
  let v = xx_ld(i);
  let s = 1.0 / (1.0 + exp(-v));
  return xg_ld(i) * s * (1.0 + v * (1.0 - s));
}`,
      },
      x!.shape,
    ),
  ];
}

export function softmaxBackwardKernel(b: Backend, [y, g]: KernelTensor[], { log }: { log: boolean }): KernelTensor[] {
  const be = asWebGpu(b);
  requireF32('softmaxBackward', y!, g!);
  const n = y!.shape[y!.shape.length - 1] ?? 1;
  const size = sizeOf(y!.shape);
  const rows = n === 0 ? 0 : size / n;
  const dx = be.allocUninit('f32', size);
  const WG = rowWG(n);
  const decls = [{ name: 'dx', write: true }, { name: 'y' }, { name: 'g' }];
  const ld = (a: string, i: string): string => `bitcast<f32>(${a}[${i}])`;
  const term = log ? ld('g', 'base + j') : `${ld('g', 'base + j')} * ${ld('y', 'base + j')}`;
  const out = log
    ? `${ld('g', 'base + j')} - exp(${ld('y', 'base + j')}) * s`
    : `${ld('y', 'base + j')} * (${ld('g', 'base + j')} - s)`;
  const code = `${paramsDecl(2)}
${bindingDecls(decls)}
${LIB}
var<workgroup> red: array<f32, ${WG}>;
${rowKernelEntry(WG)}
  let base = row * n;
  var t = 0.0;
  for (var j = lid; j < n; j = j + ${WG}u) { t = t + ${term}; }
  red[lid] = t;
  ${treeF32(WG, (a, c) => `${a} + ${c}`, 's')}
  for (var j = lid; j < n; j = j + ${WG}u) { dx[base + j] = bitcast<u32>(${out}); }
}
`;
  if (rows > 0)
    be.run(
      { label: `softmax_backward_${log ? 'log' : 'plain'}_f32`, code, layout: layoutKey(decls) },
      [be.bind(dx), be.bind(be.input(y!)), be.bind(be.input(g!))],
      [rows, n],
      grid(rows, be.limits.maxComputeWorkgroupsPerDimension),
    );
  return [{ storage: dx, shape: [...y!.shape], dtype: 'f32' }];
}
