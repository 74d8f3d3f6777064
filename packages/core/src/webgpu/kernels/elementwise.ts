// Elementwise WGSL kernels: unary math, broadcasting binary ops (compare ops give bool), where,
// cast, and the creation kernels full and iota. Semantics follow the CPU kernels: floats compute
// in f32 (f16/bf16 decoded), integers wrap modulo 2^32, NaN propagates through max/min.
import type { Backend, KernelTensor } from '../../backend.js';
import { fromNumeric, type DType } from '../../dtype.js';
import {
  ARITH_OPS,
  COMPARE_OPS,
  UNARY_OPS,
  type BinaryOp,
  type KernelAttrs,
  type UnaryOp,
} from '../../kernel-types.js';
import { broadcastShapes, sizeOf, splitAt } from '../../shape.js';
import { asWebGpu } from '../backend.js';
import { computeType, gpuInfo, type ComputeType } from '../dtypes.js';
import { convertExpr } from '../wgsl.js';
import { broadcastIndexFns, elementwise, isContiguousWith } from './elem.js';

const FLOAT_UNARY: Record<UnaryOp, (v: string) => string> = {
  neg: (v) => `-${v}`,
  exp: (v) => `exp(${v})`,
  log: (v) => `log(${v})`,
  sqrt: (v) => `sqrt(${v})`,
  rsqrt: (v) => `1.0 / sqrt(${v})`,
  sigmoid: (v) => `1.0 / (1.0 + exp(-${v}))`,
  silu: (v) => `${v} / (1.0 + exp(-${v}))`,
  tanh: (v) => `tanh_acc(${v})`,
  abs: (v) => `abs(${v})`,
  sign: (v) => `sign_f32(${v})`,
  recip: (v) => `1.0 / ${v}`,
  sin: (v) => `sin_acc(${v})`,
  cos: (v) => `cos_acc(${v})`,
  square: (v) => `${v} * ${v}`,
};

function unaryExpr(op: UnaryOp, ct: ComputeType, dtype: DType): string {
  if (ct === 'f32') return FLOAT_UNARY[op]('v');
  const z = ct === 'i32' ? '0i' : '0u';
  const one = ct === 'i32' ? '1i' : '1u';
  switch (op) {
    case 'neg':
      return ct === 'i32' ? '-v' : '0u - v';
    case 'abs':
      return ct === 'i32' ? 'abs(v)' : 'v';
    case 'sign':
      return ct === 'i32' ? `select(select(${z}, -1i, v < 0i), ${one}, v > 0i)` : `select(${z}, ${one}, v > 0u)`;
    case 'square':
      return 'v * v';
    default:
      // Float math on integers: compute in f32, then truncate and wrap like the CPU's typed arrays.
      return convertExpr(`(${FLOAT_UNARY[op](`${convertExpr('v', dtype, 'f32')}`)})`, 'f32', dtype);
  }
}

/**
 * One shader per dtype serves every unary op: the op is a uniform, so all invocations take the
 * same branch (elementwise kernels are memory-bound), and far fewer pipelines get compiled.
 */
function unarySwitch(ct: ComputeType, dtype: DType): string {
  const cases = UNARY_OPS.map((op, k) => `    case ${k}u: { return ${unaryExpr(op, ct, dtype)}; }`).join('\n');
  return `switch (op) {\n${cases}\n    default: { return v; }\n  }`;
}

export function unaryKernel(b: Backend, [x]: KernelTensor[], { op }: KernelAttrs['unary']): KernelTensor[] {
  const ct = computeType(x!.dtype, `unary ${op}`);
  const code = UNARY_OPS.indexOf(op);
  if (code < 0) throw new TypeError(`unary: unknown op '${op}'`);
  return [
    elementwise(
      b,
      {
        label: `unary_${x!.dtype}`,
        out: x!.dtype,
        raw: false,
        inputs: [{ name: 'x', t: x!, contiguous: true }],
        body: (p) => `fn value(i: u32) -> ${ct} {
  let v = x_ld(i);
  let op = P(${p.push(code)}u);
  ${unarySwitch(ct, x!.dtype)}
}`,
      },
      x!.shape,
    ),
  ];
}

function binaryExpr(op: BinaryOp, ct: ComputeType, out: DType): string {
  if (ct === 'f32') {
    switch (op) {
      case 'add':
        return 'a + b';
      case 'sub':
        return 'a - b';
      case 'mul':
        return 'a * b';
      case 'div':
        return 'a / b';
      case 'pow':
        return 'pow_js(a, b)';
      case 'max':
        return 'select(b, a, a > b || is_nan(a))';
      case 'min':
        return 'select(b, a, a < b || is_nan(a))';
      case 'lt':
        return 'select(0u, 1u, !is_nan(a) && !is_nan(b) && a < b)';
      case 'le':
        return 'select(0u, 1u, !is_nan(a) && !is_nan(b) && a <= b)';
      case 'gt':
        return 'select(0u, 1u, !is_nan(a) && !is_nan(b) && a > b)';
      case 'ge':
        return 'select(0u, 1u, !is_nan(a) && !is_nan(b) && a >= b)';
      case 'eq':
        return 'select(0u, 1u, !is_nan(a) && a == b)';
      case 'ne':
        return 'select(1u, 0u, !is_nan(a) && a == b)';
    }
  }
  const zero = ct === 'i32' ? '0i' : '0u';
  switch (op) {
    case 'add':
      return 'a + b';
    case 'sub':
      return 'a - b';
    case 'mul':
      return 'a * b';
    // x/0 is ±inf or NaN on the CPU, which integer storage turns into 0 (bool: inf → 1, NaN → 0;
    // WGSL's x/0 = x gives exactly that once the bool encoder tests for non-zero).
    case 'div':
      return out === 'bool' ? 'a / b' : `select(a / b, ${zero}, b == ${zero})`;
    case 'pow':
      return ct === 'i32' ? 'pow_i32(a, b)' : 'pow_u32(a, b)';
    case 'max':
      return 'max(a, b)';
    case 'min':
      return 'min(a, b)';
    case 'lt':
      return 'select(0u, 1u, a < b)';
    case 'le':
      return 'select(0u, 1u, a <= b)';
    case 'gt':
      return 'select(0u, 1u, a > b)';
    case 'ge':
      return 'select(0u, 1u, a >= b)';
    case 'eq':
      return 'select(0u, 1u, a == b)';
    case 'ne':
      return 'select(0u, 1u, a != b)';
  }
}

export function binaryKernel(b: Backend, [x, y]: KernelTensor[], { op }: KernelAttrs['binary']): KernelTensor[] {
  if (x!.dtype !== y!.dtype) throw new TypeError(`binary ${op}: dtypes differ (${x!.dtype} and ${y!.dtype})`);
  const shape = broadcastShapes(x!.shape, y!.shape);
  const compare = (COMPARE_OPS as readonly string[]).includes(op);
  const family: readonly BinaryOp[] = compare ? COMPARE_OPS : ARITH_OPS;
  const code = family.indexOf(op);
  if (code < 0) throw new TypeError(`binary: unknown op '${op}'`);
  const out: DType = compare ? 'bool' : x!.dtype;
  const ct = computeType(x!.dtype, `binary ${op}`);
  const rt = compare ? 'u32' : ct;
  // As for unary ops, the op is a uniform: one shader per dtype, family and broadcast pattern.
  const cases = family.map((o, k) => `    case ${k}u: { return ${binaryExpr(o, ct, out)}; }`).join('\n');
  return [
    elementwise(
      b,
      {
        label: `binary_${compare ? 'compare' : 'arith'}_${x!.dtype}`,
        out,
        raw: false,
        inputs: [
          { name: 'xa', t: x!, contiguous: isContiguousWith(x!.shape, shape) },
          { name: 'xb', t: y!, contiguous: isContiguousWith(y!.shape, shape) },
        ],
        body: (p) => {
          const opAt = p.push(code);
          return `${broadcastIndexFns(p, shape, [
            { fn: 'ia', shape: x!.shape },
            { fn: 'ib', shape: y!.shape },
          ])}
fn value(i: u32) -> ${rt} {
  let a = xa_ld(ia(i));
  let b = xb_ld(ib(i));
  switch (P(${opAt}u)) {
${cases}
    default: { return ${compare ? '0u' : 'a'}; }
  }
}`;
        },
      },
      shape,
    ),
  ];
}

function truthy(dtype: DType, e: string): string {
  const ct = computeType(dtype, 'where');
  if (ct === 'f32') return `(f32_truthy(${e}) != 0u)`;
  return `(${e} != ${ct === 'i32' ? '0i' : '0u'})`;
}

export function whereKernel(b: Backend, [c, x, y]: KernelTensor[]): KernelTensor[] {
  if (x!.dtype !== y!.dtype) throw new TypeError(`where: dtypes differ (${x!.dtype} and ${y!.dtype})`);
  const shape = broadcastShapes(c!.shape, x!.shape, y!.shape);
  return [
    elementwise(
      b,
      {
        label: `where_${x!.dtype}`,
        out: x!.dtype,
        raw: true,
        inputs: [
          { name: 'xc', t: c!, contiguous: isContiguousWith(c!.shape, shape) },
          { name: 'xa', t: x!, contiguous: isContiguousWith(x!.shape, shape) },
          { name: 'xb', t: y!, contiguous: isContiguousWith(y!.shape, shape) },
        ],
        body: (p) =>
          `${broadcastIndexFns(p, shape, [
            { fn: 'ic', shape: c!.shape },
            { fn: 'ia', shape: x!.shape },
            { fn: 'ib', shape: y!.shape },
          ])}
fn value(i: u32) -> u32 { return select(xb_raw(ib(i)), xa_raw(ia(i)), ${truthy(c!.dtype, 'xc_ld(ic(i))')}); }`,
      },
      shape,
    ),
  ];
}

/** A raw copy into new storage (cast to the same dtype, contiguous copies). */
export function copyKernel(b: Backend, x: KernelTensor): KernelTensor {
  return elementwise(
    b,
    {
      label: `copy_${x.dtype}`,
      out: x.dtype,
      raw: true,
      inputs: [{ name: 'x', t: x, contiguous: true }],
      body: () => 'fn value(i: u32) -> u32 { return x_raw(i); }',
    },
    x.shape,
  );
}

export function castKernel(b: Backend, [x]: KernelTensor[], { dtype }: KernelAttrs['cast']): KernelTensor[] {
  if (x!.dtype === dtype) return [copyKernel(b, x!)];
  gpuInfo(dtype);
  computeType(x!.dtype, `cast to ${dtype}`);
  const to = computeType(dtype, `cast from ${x!.dtype}`);
  return [
    elementwise(
      b,
      {
        label: `cast_${x!.dtype}_${dtype}`,
        out: dtype,
        raw: false,
        inputs: [{ name: 'x', t: x!, contiguous: true }],
        body: () => `fn value(i: u32) -> ${to} { return ${convertExpr('x_ld(i)', x!.dtype, dtype)}; }`,
      },
      x!.shape,
    ),
  ];
}

/** The raw element bits of `value` stored as `dtype` (exactly what the CPU would store). */
export function elementBits(dtype: DType, value: number): number {
  const info = gpuInfo(dtype);
  if (!info.ct) {
    if (value === 0) return 0;
    throw new TypeError(`full: core cannot encode ${value} as ${dtype}; use the codecs of @dsv3/fp8`);
  }
  const a = fromNumeric(dtype, [value]);
  if (a instanceof Float32Array) return new Uint32Array(a.buffer, a.byteOffset, 1)[0]!;
  if (a instanceof Int32Array) return a[0]! >>> 0;
  return a[0]!;
}

/** Element count up to which `full` uploads its values instead of dispatching. */
const SMALL_FULL = 1024;

export function fullKernel(
  b: Backend,
  _in: KernelTensor[],
  { shape, dtype, value }: KernelAttrs['full'],
): KernelTensor[] {
  const be = asWebGpu(b);
  const bits = elementBits(dtype, value);
  if (bits === 0) return [{ storage: be.alloc(dtype, sizeOf(shape)), shape: [...shape], dtype }];
  // Small constants (the scalars of `x * 0.5`, optimizer coefficients) are written with the queue, not
  // computed by a dispatch: a training step makes hundreds of them.
  if (sizeOf(shape) <= SMALL_FULL) {
    const data = fromNumeric(dtype, new Array<number>(sizeOf(shape)).fill(value));
    return [{ storage: be.upload(dtype, data), shape: [...shape], dtype }];
  }
  return [
    elementwise(
      b,
      {
        label: `full_${dtype}`,
        out: dtype,
        raw: true,
        inputs: [],
        body: (p) => `fn value(i: u32) -> u32 { return P(${p.push(bits)}u); }`,
      },
      shape,
    ),
  ];
}

export function iotaKernel(
  b: Backend,
  _in: KernelTensor[],
  { shape, axis, dtype }: KernelAttrs['iota'],
): KernelTensor[] {
  const [, len, inner] = splitAt(shape, axis);
  const ct = computeType(dtype, 'iota');
  return [
    elementwise(
      b,
      {
        label: `iota_${dtype}`,
        out: dtype,
        raw: false,
        inputs: [],
        body: (p) => {
          const innerAt = p.push(inner);
          const lenAt = p.push(Math.max(len, 1));
          return `fn value(i: u32) -> ${ct} { let j = (i / P(${innerAt}u)) % P(${lenAt}u); return ${convertExpr('j', 'u32', dtype)}; }`;
        },
      },
      shape,
    ),
  ];
}
