// One task of the latent-attention job (latent-attention.ts): rows [r0, r0 + rows) of one query block
// against the block's visible keys, in key tiles of 512 with an online softmax accumulating in float64.
// Each tile's two score products and P·V run on the SIMD GEMM (`gemm` export, this thread's workspace);
// masking and the softmax are JS. It runs on the calling thread and on the GEMM workers, whose source
// embeds it with toString(): self-contained, no imports, no module-level constants, no nested functions.
//
// Task fields (Int32 words f[1..17], addresses in bytes):
//   1 rows  2 H  3 C  4 R  5 limBase (the block's first position's last visible key)  6 r0 (the first
//   row's index in its block: row i sees keys j <= limBase + floor((r0 + i) / H))  7 kEnd (keys the
//   block sees)  8 qc [rows, C]  9 qr [rows, R] (queries)  10 kv [kEnd, C]
//   11 kr [kEnd, R]  12 out [rows, C]  13 s1  14 s2 (scores, [rows padded to 4, ld])  15 p [rows, n]
//   16 o [rows padded to 4, C padded to 8]  17 f64: acc [rows, C], then m [rows], then l [rows]
//   18 the softmax scale (one f64), by which the task first scales its query rows in place

/** Kernel exports the task calls (a subset of the GEMM module's). */
interface GemmExport {
  gemm(...args: number[]): void;
}

export function latentAttentionTask(ex: GemmExport, mem: WebAssembly.Memory, words: Int32Array, ws: number): void {
  // The fields read unsigned: addresses past 2 GiB are negative as Int32 words (a view cannot start there).
  const f = new Uint32Array(words.buffer, words.byteOffset, words.length);
  const rows = f[1] as number,
    H = f[2] as number,
    C = f[3] as number,
    R = f[4] as number;
  const limBase = f[5] as number,
    r0 = f[6] as number,
    kEnd = f[7] as number;
  const qc = f[8] as number,
    qr = f[9] as number,
    kv = f[10] as number,
    kr = f[11] as number;
  // Views of this task's regions only: element access through a view of the whole memory (gigabytes
  // once the weights are resident) measured several times slower.
  const buf = mem.buffer;
  const ldMax = ((Math.min(512, kEnd) + 7) >> 3) << 3; // the widest tile's row pitch
  const rowsPad = ((rows + 3) >> 2) << 2; // C regions hold whole 4-row micro-tiles
  const ldo = ((C + 7) >> 3) << 3; // o's row pitch: whole 8-wide micro-tiles
  const s1 = new Float32Array(buf, f[13] as number, rowsPad * ldMax);
  const s2 = new Float32Array(buf, f[14] as number, rowsPad * ldMax);
  const p = new Float32Array(buf, f[15] as number, rows * ldMax);
  const o = new Float32Array(buf, f[16] as number, rowsPad * ldo);
  const acc = new Float64Array(buf, f[17] as number, rows * C);
  const m = new Float64Array(buf, (f[17] as number) + rows * C * 8, rows);
  const l = new Float64Array(buf, (f[17] as number) + (rows * C + rows) * 8, rows);
  // q · scale rounded to f32, in place (each value rounded once, as a scaled copy would be)
  const scale = new Float64Array(buf, f[18] as number, 1)[0] as number;
  const qcv = new Float32Array(buf, qc, rows * C),
    qrv = new Float32Array(buf, qr, rows * R);
  for (let i = 0; i < rows * C; i++) qcv[i] = (qcv[i] as number) * scale;
  for (let i = 0; i < rows * R; i++) qrv[i] = (qrv[i] as number) * scale;
  m.fill(-Infinity);
  l.fill(0);
  acc.fill(0);
  for (let k0 = 0; k0 < kEnd; k0 += 512) {
    const n = Math.min(512, kEnd - k0);
    const ld = ((n + 7) >> 3) << 3;
    // scores: qc · kvᵀ and qr · krᵀ over this tile's keys
    ex.gemm(0, rows, 0, n, C, qc, C * 4, 4, kv + k0 * C * 4, 4, C * 4, s1.byteOffset, ld * 4, ws);
    ex.gemm(0, rows, 0, n, R, qr, R * 4, 4, kr + k0 * R * 4, 4, R * 4, s2.byteOffset, ld * 4, ws);
    for (let r = 0; r < rows; r++) {
      const lim = limBase + Math.floor((r0 + r) / H) - k0; // keys t <= lim are visible
      const so = r * ld;
      const po = r * n;
      let mt = -Infinity;
      const vis = Math.min(n, lim + 1);
      for (let t = 0; t < vis; t++) {
        const v = (s1[so + t] as number) + (s2[so + t] as number);
        if (v > mt) mt = v;
      }
      if (vis <= 0) {
        p.fill(0, po, po + n);
        continue;
      }
      const mo = m[r] as number;
      const mn = mo > mt ? mo : mt;
      if (mo !== -Infinity && mo !== mn) {
        const alpha = Math.exp(mo - mn);
        l[r] = (l[r] as number) * alpha;
        const ao = r * C;
        for (let c = 0; c < C; c++) acc[ao + c] = (acc[ao + c] as number) * alpha;
      }
      let sum = 0;
      for (let t = 0; t < vis; t++) {
        const e = Math.exp((s1[so + t] as number) + (s2[so + t] as number) - mn);
        p[po + t] = e;
        sum += e;
      }
      p.fill(0, po + vis, po + n);
      l[r] = (l[r] as number) + sum;
      m[r] = mn;
    }
    // acc += P · V, V = the tile's latent rows
    ex.gemm(0, rows, 0, C, n, p.byteOffset, n * 4, 4, kv + k0 * C * 4, C * 4, 4, o.byteOffset, ldo * 4, ws);
    for (let r = 0; r < rows; r++) {
      const ao = r * C,
        oo = r * ldo;
      for (let c = 0; c < C; c++) acc[ao + c] = (acc[ao + c] as number) + (o[oo + c] as number);
    }
  }
  const out = new Float32Array(buf, f[12] as number, rows * C);
  for (let r = 0; r < rows; r++) {
    const inv = 1 / (l[r] as number);
    for (let c = 0; c < C; c++) out[r * C + c] = (acc[r * C + c] as number) * inv;
  }
}
