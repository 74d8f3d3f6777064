// Elementwise ops with broadcasting, and their gradients.
import { record } from '../autograd.js';
import { hasKernel } from '../backend.js';
import { isFloatDType, type DType } from '../dtype.js';
import type { ArithOp, CompareOp, UnaryOp } from '../kernel-types.js';
import { broadcastShapes, sameShape } from '../shape.js';
import type { Tensor } from '../tensor.js';
import { full } from './creation.js';
import { exec1, requireComputable, requireFloat } from './exec.js';
import { sumToShape } from './reduce.js';

type Operand = Tensor | number;

/** Turns a JS number into a 0-d tensor matching `like`. */
function lift(x: Operand, like: Tensor): Tensor {
  return typeof x === 'number' ? full([], x, { dtype: like.dtype, backend: like.backend }) : x;
}

function operands(op: string, a: Operand, b: Operand): [Tensor, Tensor] {
  if (typeof a === 'number' && typeof b === 'number')
    throw new TypeError(`${op}: at least one operand must be a tensor`);
  requireComputable(op, ...[a, b].filter((t): t is Tensor => typeof t !== 'number'));
  const ta = typeof a === 'number' ? lift(a, b as Tensor) : a;
  const tb = lift(b, ta);
  if (ta.dtype !== tb.dtype) throw new TypeError(`${op}: dtypes differ (${ta.dtype} and ${tb.dtype}); cast one first`);
  broadcastShapes(ta.shape, tb.shape);
  return [ta, tb];
}

function arith(
  op: ArithOp,
  a: Operand,
  b: Operand,
  grad: (g: Tensor, x: Tensor, y: Tensor, out: Tensor) => [Tensor | null, Tensor | null],
): Tensor {
  const [x, y] = operands(op, a, b);
  const out = exec1('binary', [x, y], { op });
  return record(out, op, [x, y], (g) => {
    const [gx, gy] = grad(g, x, y, out);
    return [gx && sumToShape(gx, x.shape), gy && sumToShape(gy, y.shape)];
  });
}

export const add = (a: Operand, b: Operand): Tensor => arith('add', a, b, (g) => [g, g]);
export const sub = (a: Operand, b: Operand): Tensor => arith('sub', a, b, (g) => [g, neg(g)]);
export const mul = (a: Operand, b: Operand): Tensor => arith('mul', a, b, (g, x, y) => [mul(g, y), mul(g, x)]);
export const div = (a: Operand, b: Operand): Tensor =>
  arith('div', a, b, (g, x, y) => [div(g, y), y.requiresGrad ? neg(div(mul(g, x), mul(y, y))) : null]);
export const pow = (a: Operand, b: Operand): Tensor =>
  arith('pow', a, b, (g, x, y, out) => [
    x.requiresGrad ? mul(g, mul(y, pow(x, sub(y, 1)))) : null,
    y.requiresGrad ? mul(g, mul(out, log(x))) : null,
  ]);
// Ties send the gradient to the first operand.
export const maximum = (a: Operand, b: Operand): Tensor =>
  arith('max', a, b, (g, x, y) => {
    const m = ge(x, y);
    return [where(m, g, 0), where(m, 0, g)];
  });
export const minimum = (a: Operand, b: Operand): Tensor =>
  arith('min', a, b, (g, x, y) => {
    const m = le(x, y);
    return [where(m, g, 0), where(m, 0, g)];
  });

function compare(op: CompareOp, a: Operand, b: Operand): Tensor {
  const [x, y] = operands(op, a, b);
  return exec1('binary', [x, y], { op });
}
export const lt = (a: Operand, b: Operand): Tensor => compare('lt', a, b);
export const le = (a: Operand, b: Operand): Tensor => compare('le', a, b);
export const gt = (a: Operand, b: Operand): Tensor => compare('gt', a, b);
export const ge = (a: Operand, b: Operand): Tensor => compare('ge', a, b);
export const eq = (a: Operand, b: Operand): Tensor => compare('eq', a, b);
export const ne = (a: Operand, b: Operand): Tensor => compare('ne', a, b);

const INT_OK: readonly UnaryOp[] = ['neg', 'abs', 'sign', 'square'];

function unary(op: UnaryOp, x: Tensor, grad: (g: Tensor, x: Tensor, y: Tensor) => Tensor): Tensor {
  if (!INT_OK.includes(op)) requireFloat(op, x);
  else requireComputable(op, x);
  const y = exec1('unary', [x], { op });
  return record(y, op, [x], (g) => [grad(g, x, y)]);
}

export const neg = (x: Tensor): Tensor => unary('neg', x, (g) => neg(g));
export const exp = (x: Tensor): Tensor => unary('exp', x, (g, _x, y) => mul(g, y));
export const log = (x: Tensor): Tensor => unary('log', x, (g, x) => div(g, x));
export const sqrt = (x: Tensor): Tensor => unary('sqrt', x, (g, _x, y) => div(mul(g, 0.5), y));
export const rsqrt = (x: Tensor): Tensor => unary('rsqrt', x, (g, _x, y) => mul(g, mul(pow(y, 3), -0.5)));
export const sigmoid = (x: Tensor): Tensor => unary('sigmoid', x, (g, _x, y) => mul(g, mul(y, sub(1, y))));
export const silu = (x: Tensor): Tensor =>
  unary('silu', x, (g, x) => {
    if ((x.dtype === 'f32' || x.dtype === 'f64') && hasKernel('siluBackward', x.backend.name))
      return exec1('siluBackward', [x, g], {});
    const s = sigmoid(x);
    return mul(g, mul(s, add(1, mul(x, sub(1, s)))));
  });
export const tanh = (x: Tensor): Tensor => unary('tanh', x, (g, _x, y) => mul(g, sub(1, mul(y, y))));
export const abs = (x: Tensor): Tensor => unary('abs', x, (g, x) => mul(g, sign(x)));
export const sign = (x: Tensor): Tensor => unary('sign', x, (g) => mul(g, 0));
export const recip = (x: Tensor): Tensor => unary('recip', x, (g, _x, y) => neg(mul(g, mul(y, y))));
export const sin = (x: Tensor): Tensor => unary('sin', x, (g, x) => mul(g, cos(x)));
export const cos = (x: Tensor): Tensor => unary('cos', x, (g, x) => neg(mul(g, sin(x))));
export const square = (x: Tensor): Tensor => unary('square', x, (g, x) => mul(g, mul(x, 2)));
export const relu = (x: Tensor): Tensor => maximum(x, 0);

/** cond ? a : b, broadcasting all three; cond must be bool. */
export function where(cond: Tensor, a: Operand, b: Operand): Tensor {
  if (cond.dtype !== 'bool') throw new TypeError(`where: the condition must be bool, got ${cond.dtype}`);
  const like = typeof a === 'number' ? (typeof b === 'number' ? null : b) : a;
  const x = typeof a === 'number' ? full([], a, { dtype: like?.dtype ?? 'f32', backend: cond.backend }) : a;
  const y = lift(b, x);
  if (x.dtype !== y.dtype) throw new TypeError(`where: branch dtypes differ (${x.dtype} and ${y.dtype})`);
  broadcastShapes(cond.shape, x.shape, y.shape);
  const out = exec1('where', [cond, x, y], {});
  return record(out, 'where', [x, y], (g) => [
    x.requiresGrad ? sumToShape(where(cond, g, 0), x.shape) : null,
    y.requiresGrad ? sumToShape(where(cond, 0, g), y.shape) : null,
  ]);
}

export function cast(x: Tensor, dtype: DType): Tensor {
  if (x.dtype === dtype) return x;
  requireComputable('cast', x);
  const out = exec1('cast', [x], { dtype });
  if (!isFloatDType(dtype) || !isFloatDType(x.dtype)) return out;
  return record(out, 'cast', [x], (g) => [cast(g, x.dtype)]);
}

export function sameShapeOrThrow(op: string, a: Tensor, b: Tensor): void {
  if (!sameShape(a.shape, b.shape))
    throw new Error(`${op}: shapes differ ([${a.shape.join(', ')}] vs [${b.shape.join(', ')}])`);
}
