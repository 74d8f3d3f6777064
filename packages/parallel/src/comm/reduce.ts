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
  combineAllInto(acc, [src], op);
}

/**
 * acc[i] = (...((acc[i] (op) srcs[0][i]) (op) srcs[1][i]) ...) (op) srcs[m-1][i]: bitwise what
 * combineInto with each source in turn gives (the same roundings in the same order), but the f32 SIMD
 * path loads and stores each block of `acc` once for all sources instead of once per source, which
 * saves two of every three passes over `acc` in memory when three peers' pieces are reduced.
 */
export function combineAllInto(acc: WorkArray, srcs: readonly WorkArray[], op: ReduceOp): void {
  const n = acc.length;
  for (const src of srcs) if (src.length !== n) throw new Error(`internal: reducing ${src.length} elements into ${n}`);
  if (acc instanceof Float32Array && n >= SIMD_MIN && (op === 'sum' || op === 'avg' || op === 'prod')) {
    const k = simdKernel();
    if (k) return simdCombine(k, acc, srcs as readonly Float32Array[], op === 'prod' ? k.mul : k.add);
  }
  for (const src of srcs) scalarCombine(acc, src, op);
}

function scalarCombine(acc: WorkArray, src: WorkArray, op: ReduceOp): void {
  const n = acc.length;
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

// f32 sums and products through a WebAssembly SIMD128 kernel (V8 does not vectorise the JS loops
// above: they reduce ~0.5 G elements/s, the kernel several times that). The kernel has its own small
// memory; blocks of both operands are copied in and the result out, which stays in cache, so the
// memory traffic is that of the JS loop. IEEE f32 add/mul give bitwise the JS loop's results (a sum
// or product of two f32 rounded once via f64 equals the directly rounded one). max/min stay in JS,
// whose NaN and signed-zero rules the SIMD instructions do not share.

/** Arrays shorter than this are reduced by the JS loop (the copies would not pay). */
const SIMD_MIN = 1024;
/** Elements per block: two operands of 64 KiB in the kernel's memory. */
const SIMD_BLOCK = 16384;

interface SimdKernel {
  add: (dst: number, src: number, bytes: number) => void;
  mul: (dst: number, src: number, bytes: number) => void;
  acc: Float32Array;
  src: Float32Array;
}

let kernel: SimdKernel | null | undefined;

/** The module: two functions (dst, src, bytes) doing dst[i] = dst[i] (+ or *) src[i] over 16-byte lanes. */
function simdModule(): Uint8Array<ArrayBuffer> {
  const str = (t: string) => [t.length, ...Array.from(t, (c) => c.charCodeAt(0))];
  const section = (id: number, body: number[]) => [id, ...leb(body.length), ...body];
  // biome-ignore format: one line per instruction group reads as the assembly it is
  const loop = (opcode: number) => [
    1, 1, 0x7f, // one local (end)
    0x20, 0, 0x20, 2, 0x6a, 0x21, 3, // end = dst + bytes
    0x02, 0x40, 0x03, 0x40, // block, loop
    0x20, 0, 0x20, 3, 0x4f, 0x0d, 1, // br_if out when dst >= end
    0x20, 0, 0x20, 0, 0xfd, 0, 4, 0, 0x20, 1, 0xfd, 0, 4, 0, 0xfd, opcode, 1, 0xfd, 0x0b, 4, 0, // dst = dst op src
    0x20, 0, 0x41, 16, 0x6a, 0x21, 0, 0x20, 1, 0x41, 16, 0x6a, 0x21, 1, // dst += 16, src += 16
    0x0c, 0, 0x0b, 0x0b, 0x0b,
  ];
  const bodies = [loop(0xe4), loop(0xe6)]; // f32x4.add, f32x4.mul
  // biome-ignore format: one line per section
  return new Uint8Array([
    0, 0x61, 0x73, 0x6d, 1, 0, 0, 0,
    ...section(1, [1, 0x60, 3, 0x7f, 0x7f, 0x7f, 0]), // type: (i32, i32, i32) -> ()
    ...section(2, [1, ...str('env'), ...str('memory'), 2, 0, 2]), // import memory, 2 pages
    ...section(3, [2, 0, 0]),
    ...section(7, [2, ...str('add'), 0, 0, ...str('mul'), 0, 1]),
    ...section(10, [2, ...bodies.flatMap((b) => [...leb(b.length), ...b])]),
  ]);
}

function leb(n: number): number[] {
  const out: number[] = [];
  do {
    let b = n & 0x7f;
    n >>>= 7;
    if (n) b |= 0x80;
    out.push(b);
  } while (n);
  return out;
}

/** True where f32 sums and products run through the SIMD kernel. */
export function simdReductions(): boolean {
  return simdKernel() !== null;
}

/** The kernel, or null where WebAssembly SIMD128 is missing (the JS loops run). */
function simdKernel(): SimdKernel | null {
  if (kernel !== undefined) return kernel;
  try {
    const memory = new WebAssembly.Memory({ initial: 2, maximum: 2 });
    const ex = new WebAssembly.Instance(new WebAssembly.Module(simdModule()), { env: { memory } }).exports;
    kernel = {
      add: ex.add as SimdKernel['add'],
      mul: ex.mul as SimdKernel['mul'],
      acc: new Float32Array(memory.buffer, 0, SIMD_BLOCK),
      src: new Float32Array(memory.buffer, SIMD_BLOCK * 4, SIMD_BLOCK),
    };
  } catch {
    kernel = null;
  }
  return kernel;
}

function simdCombine(
  k: SimdKernel,
  acc: Float32Array,
  srcs: readonly Float32Array[],
  run: (dst: number, src: number, bytes: number) => void,
): void {
  for (let i = 0; i < acc.length; i += SIMD_BLOCK) {
    const m = Math.min(SIMD_BLOCK, acc.length - i);
    const a = acc.subarray(i, i + m);
    k.acc.set(a);
    for (const src of srcs) {
      k.src.set(src.subarray(i, i + m));
      run(0, SIMD_BLOCK * 4, Math.ceil(m / 4) * 16); // lanes past m read and write unused kernel memory
    }
    a.set(k.acc.subarray(0, m));
  }
}
