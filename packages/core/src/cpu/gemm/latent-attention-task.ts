// One task of the latent-attention job (latent-attention.ts): rows [r0, r0 + rows) of one query block
// against the block's visible keys, in key tiles of 512 with an online softmax accumulating in float64.
// Each tile's two score products and P·V run on the SIMD GEMM (`gemm` export, this thread's workspace);
// the query scaling, masking, softmax step, accumulation and final division on latent-rows-simd.ts's
// kernels (the attention rows module over the same memory), which compute what this task's JavaScript
// loops did, bit for bit. It runs on the calling thread and on the GEMM workers, whose source embeds it
// with toString(): self-contained, no imports, no module-level constants, no nested functions.
//
// Task fields (Int32 words f[1..18], addresses in bytes):
//   1 rows  2 H  3 C  4 R  5 limBase (the block's first position's last visible key)  6 r0 (the first
//   row's index in its block: row i sees keys j <= limBase + floor((r0 + i) / H))  7 kEnd (keys the
//   block sees)  8 qc [rows, C]  9 qr [rows, R] (queries, read only: where the caller's lie, or staged)
//   10 kv [kEnd, C]  11 kr [kEnd, R]  12 out [rows, C]  13 the per-thread space table: per thread 6
//   words [its workspace, s1, s2 (scores, [rows padded to 4, ld]), p [rows, n], o [rows padded to 4, C
//   padded to 8], f64: acc [rows, C], then m [rows], then l [rows]; then (f32) the scaled queries [rows, C]
//   and [rows, R]], the task using the entry of the workspace it is given  14 its entries  15 0, or a key
//   piece's own state (latent-attention.ts: f64 acc [rows, C], m [rows], l [rows]), where the task
//   accumulates instead of in its thread's space and which it leaves unnormalized for the caller to
//   merge (out unused)  18 the softmax scale (one f64), by which the task first scales its query rows
//   into that space

/** Kernel exports the task calls (a subset of the GEMM module's). */
interface GemmExport {
  gemm(...args: number[]): void;
}

/** latent-rows-simd.ts's kernels (addresses in bytes). */
interface RowExport {
  scaleRows(src: number, dst: number, n: number, scaleAt: number): void;
  latentSoftmaxRows(
    s1: number,
    s2: number,
    p: number,
    ld: number,
    n: number,
    rows: number,
    lim0: number,
    r0: number,
    H: number,
    m: number,
    l: number,
    acc: number,
    C: number,
  ): void;
  addRows(acc: number, o: number, rows: number, C: number, ldo: number): void;
  finishRows(out: number, acc: number, l: number, rows: number, C: number): void;
}

export function latentAttentionTask(
  ex: GemmExport,
  xp: RowExport,
  mem: WebAssembly.Memory,
  words: Int32Array,
  ws: number,
): void {
  // The fields read unsigned: addresses past 2 GiB are negative as Int32 words (a view cannot start there).
  const f = new Uint32Array(words.buffer, words.byteOffset, words.length);
  const rows = f[1] as number,
    H = f[2] as number,
    C = f[3] as number,
    R = f[4] as number;
  const limBase = f[5] as number,
    r0 = f[6] as number,
    kEnd = f[7] as number;
  // this thread's space: the table entry whose first word is its workspace
  // (mem.buffer: the workers' control view may predate a growth of the memory)
  const table = new Uint32Array(mem.buffer, f[13] as number, (f[14] as number) * 6);
  let e = 0;
  while (e < table.length && table[e] !== ws) e += 6;
  if (e >= table.length) throw new Error('latent attention: no task space for this thread');
  // the scaled queries follow the thread's acc, m and l, whether or not a key piece accumulates elsewhere
  const own = table[e + 5] as number,
    piece = f[15] as number,
    accAt = piece !== 0 ? piece : own,
    mAt = accAt + rows * C * 8,
    lAt = mAt + rows * 8;
  // (64-byte aligned; Math.ceil, not shifts: addresses past 2 GiB stay positive)
  const qc = Math.ceil((own + rows * C * 8 + rows * 16) / 64) * 64,
    qr = qc + Math.ceil((rows * C * 4) / 64) * 64,
    kv = f[10] as number,
    kr = f[11] as number;
  const s1 = table[e + 1] as number,
    s2 = table[e + 2] as number,
    p = table[e + 3] as number,
    o = table[e + 4] as number;
  const ldo = ((C + 7) >> 3) << 3; // o's row pitch: whole 8-wide micro-tiles
  // q · scale rounded to f32 (each value rounded once), beside acc: the queries stay as they are
  xp.scaleRows(f[8] as number, qc, rows * C, f[18] as number);
  xp.scaleRows(f[9] as number, qr, rows * R, f[18] as number);
  const buf = mem.buffer;
  new Float64Array(buf, accAt, rows * C).fill(0);
  new Float64Array(buf, mAt, rows).fill(-Infinity);
  new Float64Array(buf, lAt, rows).fill(0);
  for (let k0 = 0; k0 < kEnd; k0 += 512) {
    const n = Math.min(512, kEnd - k0);
    const ld = ((n + 7) >> 3) << 3;
    // scores: qc · kvᵀ and qr · krᵀ over this tile's keys
    ex.gemm(0, rows, 0, n, C, qc, C * 4, 4, kv + k0 * C * 4, 4, C * 4, s1, ld * 4, ws);
    ex.gemm(0, rows, 0, n, R, qr, R * 4, 4, kr + k0 * R * 4, 4, R * 4, s2, ld * 4, ws);
    // mask, online softmax step (m, l, acc rescaled), P
    xp.latentSoftmaxRows(s1, s2, p, ld, n, rows, limBase - k0, r0, H, mAt, lAt, accAt, C);
    // acc += P · V, V = the tile's latent rows
    ex.gemm(0, rows, 0, C, n, p, n * 4, 4, kv + k0 * C * 4, C * 4, 4, o, ldo * 4, ws);
    xp.addRows(accAt, o, rows, C, ldo);
  }
  if (piece === 0) xp.finishRows(f[12] as number, accAt, lAt, rows, C);
}
