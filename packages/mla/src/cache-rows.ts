// In-place row writes into a latent-cache pool, the only writes the cache makes: appending a step's
// new latents (rows of a tensor scattered to pool rows the host computed from the block tables) and
// copying a shared block before a write (copy-on-write). Both run on the pool's backend, so appends
// never read device data back. Kernels are registered for 'cpu' here and 'webgpu' in
// cache-rows-webgpu.ts; they write into their first input and return no outputs.
import { CpuStorage, type Backend, type KernelTensor } from '@dsv3/core';

/** inputs [pool [P, W], src [N, W], rows i32 [N]]: pool[rows[i]] = src[i] */
export const WRITE_ROWS_OP = 'mla.writeRows';
/** inputs [pool [P, W], from i32 [N], to i32 [N]]: pool[to[i]] = pool[from[i]] (the two sets are disjoint) */
export const COPY_ROWS_OP = 'mla.copyRows';

const hostArray = (op: string, t: KernelTensor): ArrayLike<number> & { [i: number]: number } => {
  if (!(t.storage instanceof CpuStorage)) throw new Error(`${op} on the cpu: a tensor lives on another backend`);
  return t.storage.data as unknown as ArrayLike<number> & { [i: number]: number };
};

/** Rows of `pool` ([..., W] viewed as [P, W]), checking every index before writing any row. */
function checkRows(op: string, pool: KernelTensor, rows: ArrayLike<number>): { P: number; W: number } {
  const W = pool.shape[pool.shape.length - 1]!;
  const P = pool.shape.reduce((a, x) => a * x, 1) / W;
  for (let i = 0; i < rows.length; i++) {
    const r = rows[i]!;
    if (!(Number.isInteger(r) && r >= 0 && r < P))
      throw new RangeError(`${op}: row index ${r} (entry ${i}) is outside the pool's ${P} rows`);
  }
  return { P, W };
}

export function writeRowsCpu(_b: Backend, inputs: KernelTensor[]): KernelTensor[] {
  const [pool, src, rows] = inputs as [KernelTensor, KernelTensor, KernelTensor];
  const dst = hostArray(WRITE_ROWS_OP, pool);
  const from = hostArray(WRITE_ROWS_OP, src);
  const idx = hostArray(WRITE_ROWS_OP, rows);
  const { W } = checkRows(WRITE_ROWS_OP, pool, idx);
  if (from.length !== idx.length * W)
    throw new RangeError(`${WRITE_ROWS_OP}: ${idx.length} row indices for ${from.length / W} source rows`);
  const typed = ArrayBuffer.isView(dst) && ArrayBuffer.isView(from) && dst.constructor === from.constructor;
  if (!typed) {
    for (let i = 0; i < idx.length; i++) for (let c = 0; c < W; c++) dst[idx[i]! * W + c] = from[i * W + c]!;
    return [];
  }
  // Runs of consecutive pool rows (a block's rows; a fresh prompt's blocks often follow each other) as
  // one copy each: a prefill's rows one by one made a view a row (1024 a layer at 512 tokens).
  for (let i = 0; i < idx.length; ) {
    let j = i + 1;
    while (j < idx.length && idx[j] === idx[j - 1]! + 1) j++;
    (dst as Float32Array).set((from as Float32Array).subarray(i * W, j * W), idx[i]! * W);
    i = j;
  }
  return [];
}

export function copyRowsCpu(_b: Backend, inputs: KernelTensor[]): KernelTensor[] {
  const [pool, fromT, toT] = inputs as [KernelTensor, KernelTensor, KernelTensor];
  const data = hostArray(COPY_ROWS_OP, pool) as unknown as Float32Array;
  const from = hostArray(COPY_ROWS_OP, fromT);
  const to = hostArray(COPY_ROWS_OP, toT);
  const { W } = checkRows(COPY_ROWS_OP, pool, from);
  checkRows(COPY_ROWS_OP, pool, to);
  for (let i = 0; i < from.length; i++) data.copyWithin(to[i]! * W, from[i]! * W, (from[i]! + 1) * W);
  return [];
}
