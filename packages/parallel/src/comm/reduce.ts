// Element-wise reductions on the working arrays collectives reduce in (f32 for f32/bf16/f16,
// f64, i32, u32). avg is a sum divided once at the end, so every rank divides the same sum.
export type ReduceOp = 'sum' | 'avg' | 'max' | 'min' | 'prod';
export const REDUCE_OPS: readonly ReduceOp[] = ['sum', 'avg', 'max', 'min', 'prod'];

export type WorkArray = Float32Array | Float64Array | Int32Array | Uint32Array;

export function assertReduceOp(op: unknown): ReduceOp {
  if (typeof op !== 'string' || !(REDUCE_OPS as readonly string[]).includes(op))
    throw new TypeError(`unknown reduce op ${JSON.stringify(op)}; expected one of ${REDUCE_OPS.join(', ')}`);
  return op as ReduceOp;
}

/** acc[i] = acc[i] (op) src[i]; avg accumulates as a sum. */
export function combineInto(acc: WorkArray, src: WorkArray, op: ReduceOp): void {
  const n = acc.length;
  if (src.length !== n) throw new Error(`internal: reducing ${src.length} elements into ${n}`);
  switch (op) {
    case 'sum':
    case 'avg':
      for (let i = 0; i < n; i++) acc[i]! += src[i]!;
      return;
    case 'prod':
      for (let i = 0; i < n; i++) acc[i]! *= src[i]!;
      return;
    case 'max':
      for (let i = 0; i < n; i++) {
        const v = src[i]!;
        if (v > acc[i]! || v !== v) acc[i] = v; // NaN wins, as in torch
      }
      return;
    case 'min':
      for (let i = 0; i < n; i++) {
        const v = src[i]!;
        if (v < acc[i]! || v !== v) acc[i] = v;
      }
      return;
  }
}
