// What a scope must leave alone: the tensors and typed arrays reachable from its roots through object
// fields, Maps, Sets and arrays (recycling-scope.ts, cpu/step-outputs.ts). A tensor's gradient is
// followed, its graph (gradFn) is not.
import { Tensor } from './tensor.js';

/** Calls `tensor` for every tensor (disposed ones too) and `view` for every typed array reachable from `roots`. */
export function forEachReachable(
  roots: readonly unknown[],
  tensor: (t: Tensor) => void,
  view: (v: ArrayBufferView) => void = () => {},
): void {
  const seen = new Set<object>();
  const stack: unknown[] = [...roots];
  while (stack.length) {
    const v = stack.pop();
    if (v === null || typeof v !== 'object' || seen.has(v)) continue;
    seen.add(v);
    if (v instanceof Tensor) {
      tensor(v);
      if (v.grad) stack.push(v.grad);
      continue;
    }
    if (ArrayBuffer.isView(v)) {
      view(v);
      continue;
    }
    if (v instanceof ArrayBuffer || (typeof SharedArrayBuffer !== 'undefined' && v instanceof SharedArrayBuffer))
      continue;
    if (v instanceof Map) {
      for (const [k, x] of v) stack.push(k, x);
    } else if (v instanceof Set || Array.isArray(v)) {
      for (const x of v) stack.push(x);
    } else for (const x of Object.values(v)) stack.push(x);
  }
}
