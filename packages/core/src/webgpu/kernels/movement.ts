// Data movement on raw element bits: strided copies (slice / permute / broadcast / flip), pad,
// concat, gather (index select) and takeAlong. Out-of-range indices set the backend's index-error
// flag (reported by the next read or sync) and produce zeros.
import type { Backend, KernelTensor } from '../../backend.js';
import type { KernelAttrs } from '../../kernel-types.js';
import { sizeOf, splitAt, stridesOf } from '../../shape.js';
import { asWebGpu } from '../backend.js';
import { gpuInfo } from '../dtypes.js';
import { bindingDecls, grid, layoutKey, LIB, loaders, paramsDecl } from '../wgsl.js';
import { coalesce, EL_WG, elementwise, stridedIndexFn } from './elem.js';
import { copyKernel, elementBits } from './elementwise.js';

export function stridedKernel(
  b: Backend,
  [x]: KernelTensor[],
  { shape, strides, offset }: KernelAttrs['strided'],
): KernelTensor[] {
  const c = coalesce(shape, [strides]);
  const n = sizeOf(shape);
  // An identity view is a plain (chunkable) copy.
  if (
    offset === 0 &&
    n === sizeOf(x!.shape) &&
    (c.shape.length === 0 || (c.shape.length === 1 && c.strides[0]![0] === 1))
  ) {
    const y = copyKernel(b, x!);
    return [{ ...y, shape: [...shape] }];
  }
  return [
    elementwise(
      b,
      {
        label: `strided${c.shape.length}_${x!.dtype}`,
        out: x!.dtype,
        raw: true,
        inputs: [{ name: 'x', t: x!, contiguous: false }],
        body: (p) => `${stridedIndexFn('src', p, c.shape, c.strides[0]!, offset)}
fn value(i: u32) -> u32 { return x_raw(src(i)); }`,
      },
      shape,
    ),
  ];
}

export function padKernel(
  b: Backend,
  [x]: KernelTensor[],
  { before, after, value }: KernelAttrs['pad'],
): KernelTensor[] {
  const rank = x!.shape.length;
  const shape = x!.shape.map((d, i) => d + before[i]! + after[i]!);
  const bits = elementBits(x!.dtype, value);
  const inStrides = stridesOf(x!.shape);
  return [
    elementwise(
      b,
      {
        label: `pad${rank}_${x!.dtype}`,
        out: x!.dtype,
        raw: true,
        inputs: [{ name: 'x', t: x!, contiguous: false }],
        body: (p) => {
          const padAt = p.push(bits);
          let s = `fn value(i: u32) -> u32 {\n  var r = i;\n  var src = 0u;\n  var inside = true;\n`;
          for (let d = rank - 1; d >= 0; d--) {
            const od = p.push(shape[d]!);
            const bd = p.push(before[d]!);
            const id = p.push(x!.shape[d]!);
            const st = p.push(inStrides[d]!);
            s += `  { let n = P(${od}u); let c = i32(r % n) - Pi(${bd}u); r = r / n;
    if (c < 0i || c >= Pi(${id}u)) { inside = false; } else { src = src + u32(c) * P(${st}u); } }\n`;
          }
          return `${s}  if (!inside) { return P(${padAt}u); }\n  return x_raw(src);\n}`;
        },
      },
      shape,
    ),
  ];
}

/**
 * Concat: each input's rows are copied into a 32-bit-per-element staging array (so no two threads
 * ever share an output word), which is then packed; 32-bit dtypes are written in place directly.
 */
export function concatKernel(b: Backend, xs: KernelTensor[], { axis }: KernelAttrs['concat']): KernelTensor[] {
  const be = asWebGpu(b);
  const first = xs[0]!;
  const dtype = first.dtype;
  const info = gpuInfo(dtype);
  const total = xs.reduce((s, t) => s + t.shape[axis]!, 0);
  const shape = first.shape.map((d, i) => (i === axis ? total : d));
  const [outer, , inner] = splitAt(shape, axis);
  const count = sizeOf(shape);
  const direct = info.bits === 32;
  const wide = direct ? be.allocUninit(dtype, count) : be.allocUninit('u32', count);
  if (count * 4 > be.bindingLimit) {
    throw new RangeError(
      `webgpu concat: the result (${count * 4} bytes as 32-bit words) exceeds the storage binding limit of ${be.bindingLimit} bytes (maxStorageBufferBindingSize)`,
    );
  }
  const decls = [{ name: 'out', write: true }, { name: 'x' }];
  let at = 0;
  for (const t of xs) {
    const span = t.shape[axis]! * inner;
    const n = outer * span;
    if (n > 0) {
      const code = `${paramsDecl(4)}
${bindingDecls(decls)}
${LIB}
${loaders('x', t.dtype)}
@compute @workgroup_size(${EL_WG})
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let e = gid.x + gid.y * nwg.x * ${EL_WG}u;
  if (e >= P(0u)) { return; }
  let o = e / P(1u);
  let j = e % P(1u);
  out[o * P(2u) + P(3u) + j] = x_raw(e);
}
`;
      const src = be.input(t);
      be.run(
        { label: `concat_${t.dtype}`, code, layout: layoutKey(decls) },
        [be.bind(wide), be.bind(src)],
        [n, span, total * inner, at],
        grid(Math.ceil(n / EL_WG), be.limits.maxComputeWorkgroupsPerDimension),
      );
    }
    at += span;
  }
  if (direct) return [{ storage: wide, shape, dtype }];
  const packed = elementwise(
    b,
    {
      label: `pack_${dtype}`,
      out: dtype,
      raw: true,
      inputs: [{ name: 'w', t: { storage: wide, shape, dtype: 'u32' }, contiguous: true }],
      body: () => 'fn value(i: u32) -> u32 { return w_raw(i); }',
    },
    shape,
  );
  be.free(wide);
  return [packed];
}

export function gatherKernel(b: Backend, [x, idx]: KernelTensor[], { axis }: KernelAttrs['gather']): KernelTensor[] {
  if (idx!.dtype !== 'i32') throw new TypeError(`gather: indices must be i32, got ${idx!.dtype}`);
  const [, len, inner] = splitAt(x!.shape, axis);
  const nIdx = sizeOf(idx!.shape);
  const shape = [...x!.shape.slice(0, axis), ...idx!.shape, ...x!.shape.slice(axis + 1)];
  return [
    elementwise(
      b,
      {
        label: `gather_${x!.dtype}`,
        out: x!.dtype,
        raw: true,
        errFlag: true,
        inputs: [
          { name: 'x', t: x!, contiguous: false },
          { name: 'ids', t: idx!, contiguous: false },
        ],
        body: (p) => {
          const inAt = p.push(inner);
          const jAt = p.push(Math.max(nIdx, 1));
          const lenAt = p.push(len);
          return `fn value(i: u32) -> u32 {
  let ii = i % P(${inAt}u);
  let t = i / P(${inAt}u);
  let j = t % P(${jAt}u);
  let o = t / P(${jAt}u);
  let id = ids_ld(j);
  if (id < 0i || u32(id) >= P(${lenAt}u)) { atomicOr(&errflag, 1u); return 0u; }
  return x_raw((o * P(${lenAt}u) + u32(id)) * P(${inAt}u) + ii);
}`;
        },
      },
      shape,
    ),
  ];
}

export function takeAlongKernel(
  b: Backend,
  [x, idx]: KernelTensor[],
  { axis }: KernelAttrs['takeAlong'],
): KernelTensor[] {
  if (idx!.dtype !== 'i32') throw new TypeError(`takeAlong: indices must be i32, got ${idx!.dtype}`);
  const [, len, inner] = splitAt(x!.shape, axis);
  const [, jlen] = splitAt(idx!.shape, axis);
  return [
    elementwise(
      b,
      {
        label: `takeAlong_${x!.dtype}`,
        out: x!.dtype,
        raw: true,
        errFlag: true,
        inputs: [
          { name: 'x', t: x!, contiguous: false },
          { name: 'ids', t: idx!, contiguous: true },
        ],
        body: (p) => {
          const inAt = p.push(inner);
          const jAt = p.push(Math.max(jlen, 1));
          const lenAt = p.push(len);
          return `fn value(i: u32) -> u32 {
  let ii = i % P(${inAt}u);
  let o = (i / P(${inAt}u)) / P(${jAt}u);
  let id = ids_ld(i);
  if (id < 0i || u32(id) >= P(${lenAt}u)) { atomicOr(&errflag, 4u); return 0u; }
  return x_raw((o * P(${lenAt}u) + u32(id)) * P(${inAt}u) + ii);
}`;
        },
      },
      idx!.shape,
    ),
  ];
}
