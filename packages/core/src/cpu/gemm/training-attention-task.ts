// One task of the training-attention job (training-attention.ts): causal softmax attention of one
// (batch, head) pair, forward or backward, on f32 operands staged in the GEMM engine's memory. The
// products run on the SIMD GEMM (`gemm` export, this thread's workspace); the gathers, rotations,
// softmax row passes, exps, row dots, dS pass and scatters on attention-rows-simd.ts's module
// instantiated over the same memory; only the lse's log is JS.
// The same arithmetic as attention-kernels.ts's f32 path, row by row, so the values are its bits (see
// training-attention.ts for the causal skips). It runs on the calling thread and on the GEMM workers,
// whose source embeds it with toString(): self-contained, no imports, no module-level constants, no
// nested functions.
//
// Task fields (Int32 words): 1 direction (0 forward, 1 backward)  2 b (batch row within the chunk)  3 h
// 4 the job header's byte address  5 the per-thread scratch table: per thread 2 words [its workspace, its
// scratch (byte address)], the task using the entry of the workspace it is given (a thread runs one task
// at a time, and a task leaves nothing in its scratch)  6, 7 its query rows [r0, r1)  8 the table's entries.
// Header (Int32 words, byte offsets for addresses): 0 S  1 H  2 dq  3 dv  4 kn (the per-head part of
// a key row; the rest, dq - kn, is one row shared by every head of a batch row)  5 kc (the GEMM's depth
// block)  6 rows per query block  7..12 the task scratch's regions (offsets from its start): k (gathered
// when there is a shared part), P, dP, out1 (o, or dq), dk, dv  13 qr: q's rotary columns (its last qr;
// 0: none)  14 1 when their pairs are interleaved (2i, 2i+1), else (i, i + qr/2)  15 floats between
// batch rows of the angles (0: shared)  16 lse [chunk B, H, S]  17 cos  18 sin ([rows, S, qr/2])
// 19 the chunk's first batch row  60 the task scratch's q region (rotated q)  61 its stats region ((m, z)
// of a query block's rows, f64)  62 its rowDot region (S floats, backward)  63 1 when the keys' shared part is
// rotated like q's rotary columns as it is gathered (its operand holds it unrotated)  66 the scratch region
// of the keys packed once (kᵀ as the GEMM's B~ panels)  67 that of the values: gathered at pitch dv
// (forward), vᵀ packed once (backward).
// Words 20..59: one operand per 4 words, in the order q, k, k shared, v, o, dO, dq, dk, dk shared, dv:
// byte address of batch row 0, floats between batch rows, between positions, between heads (address 0:
// absent). The softmax scale is the f64 at byte 256 of the header (words 64, 65).

/** Kernel exports the task calls. */
interface GemmExport {
  gemm(...args: number[]): void;
  gemmPacked(...args: number[]): void;
  packBAll(...args: number[]): void;
}
/** attention-rows-simd.ts's module over the same memory (addresses and pitches in bytes). */
interface RowExport {
  softmaxRows(p: number, ld: number, i0: number, i1: number, fillTo: number, scaleAt: number, stats: number): void;
  softmaxGradRows(
    p: number,
    dp: number,
    ld: number,
    i0: number,
    i1: number,
    S: number,
    scaleAt: number,
    lseAt: number,
    dotAt: number,
  ): void;
  copyRows(dst: number, dstPitch: number, src: number, srcPitch: number, rows: number, bytes: number): void;
  rowDots(g: number, gPitch: number, o: number, oPitch: number, rows: number, n: number, dst: number): void;
  rotateRows(
    src: number,
    srcPitch: number,
    dst: number,
    dstPitch: number,
    rows: number,
    cos: number,
    sin: number,
    half: number,
    interleave: number,
    negate: number,
  ): void;
}

export function trainingAttentionTask(
  ex: GemmExport,
  xp: RowExport,
  mem: WebAssembly.Memory,
  words: Int32Array,
  ws: number,
): void {
  const buf = mem.buffer;
  // The fields and header read unsigned: addresses past 2 GiB are negative as Int32 words.
  const f = new Uint32Array(words.buffer, words.byteOffset, words.length);
  const back = f[1] === 1,
    b = f[2] as number,
    h = f[3] as number,
    hdr = f[4] as number;
  // this thread's scratch: the table entry whose first word is its workspace
  const table = new Uint32Array(buf, f[5] as number, 2 * (f[8] as number));
  let entry = 0;
  while (entry < table.length && table[entry] !== ws) entry += 2;
  if (entry >= table.length) throw new Error('training attention: no scratch for this thread');
  const at = table[entry + 1] as number;
  const w = new Uint32Array(buf, hdr, 68);
  const S = w[0] as number,
    H = w[1] as number,
    dq = w[2] as number,
    dv = w[3] as number,
    kn = w[4] as number,
    kc = w[5] as number,
    R = w[6] as number;
  const dr = dq - kn;
  // the query rows [r0, r1) this task computes (a forward task may take part of a pair's rows: rows
  // depend only on the keys up to their own, which it gathers; a backward task takes all S)
  const r0 = f[6] as number,
    r1 = f[7] as number;
  const ld = ((S + 7) >> 3) << 3; // score rows: whole 8-wide micro-tiles, room for a row's exp padding
  const ldq = ((dq + 7) >> 3) << 3,
    ldv = ((dv + 7) >> 3) << 3;
  const ks = at + (w[7] as number),
    ps = at + (w[8] as number),
    dps = at + (w[9] as number),
    o1 = at + (w[10] as number),
    o2 = at + (w[11] as number),
    o3 = at + (w[12] as number);
  // Operand i's row 0 of this pair (byte address) and its row pitch (floats): the products read q, v,
  // dO (and k without a shared part) where they are staged, at their pitch.
  let qAt = (w[20] as number) + ((w[21] as number) * b + (w[23] as number) * h) * 4,
    qPitch = w[22] as number;
  const vAt = (w[32] as number) + ((w[33] as number) * b + (w[35] as number) * h) * 4,
    vPitch = w[34] as number;
  let kAt = (w[24] as number) + ((w[25] as number) * b + (w[27] as number) * h) * 4,
    kPitch = w[26] as number;
  // Views (lse, the softmax's stats) of the few floats the task reads itself only: element access
  // through a view of the whole memory (gigabytes once weights are resident) measured several times slower.
  const scaleAt = hdr + 256;
  const lseAt = (w[16] as number) + (b * H + h) * S * 4;
  const lse = new Float32Array(buf, lseAt, S);
  // q's last qr columns rotated by (cos, sin) of each position on the way into scratch (rope-attention-
  // kernels.ts's rotate, sign +1); their gradient is rotated back on the way out (sign −1)
  const qr = w[13] as number,
    half = qr >> 1,
    kq = dq - qr;
  const interleave = w[14] as number;
  const csAt = (b + (w[19] as number)) * (w[15] as number) * 4; // this batch row's angles
  const cosAt = (w[17] as number) + csAt,
    sinAt = (w[18] as number) + csAt;
  if (dr > 0) {
    // k [S, kn | shared dr] gathered (rows up to r1): its per-head part and the batch row's shared row
    // side by side, the shared row rotated on the way when word 63 says so (by q's angles, as q's are)
    const sharedAt = (w[28] as number) + (w[29] as number) * b * 4,
      sharedPitch = (w[30] as number) * 4;
    xp.copyRows(ks, dq * 4, kAt, kPitch * 4, r1, kn * 4);
    if (w[63] === 1) xp.rotateRows(sharedAt, sharedPitch, ks + kn * 4, dq * 4, r1, cosAt, sinAt, half, interleave, 0);
    else xp.copyRows(ks + kn * 4, dq * 4, sharedAt, sharedPitch, r1, dr * 4);
    kAt = ks;
    kPitch = dq;
  }
  if (qr > 0) {
    const qs = at + (w[60] as number);
    const [from, to] = [qAt + r0 * qPitch * 4, qs + r0 * dq * 4];
    xp.copyRows(to, dq * 4, from, qPitch * 4, r1 - r0, kq * 4);
    xp.rotateRows(
      from + kq * 4,
      qPitch * 4,
      to + kq * 4,
      dq * 4,
      r1 - r0,
      cosAt + r0 * half * 4,
      sinAt + r0 * half * 4,
      half,
      interleave,
      0,
    );
    qAt = qs;
    qPitch = dq;
  }

  if (!back) {
    const stats = at + (w[61] as number);
    const st = new Float64Array(buf, stats, 2 * R);
    // kᵀ's panels for keys [0, r1) packed once (packBAll: the layout each block's gemm packs for itself;
    // a block's keys [0, i1) are a prefix of them, the columns of its last panel past i1 computed and
    // never read) instead of once per block; v's rows gathered at pitch dv (read at their own pitch, H
    // rows apart, every block's packing of them ran P · v ~12% slower)
    const kp = at + (w[66] as number),
      kpPitch = (((r1 + 7) >> 3) << 3) * 4;
    ex.packBAll(kAt, 4, kPitch * 4, dq, 0, r1, kp, kpPitch);
    const vs = at + (w[67] as number);
    xp.copyRows(vs, dv * 4, vAt, vPitch * 4, r1, dv * 4);
    for (let i0 = r0; i0 < r1; i0 += R) {
      const i1 = Math.min(r1, i0 + R);
      // scores of rows [i0, i1) against keys [0, i1): the keys past i1 are masked for all of them
      ex.gemmPacked(0, i1 - i0, 0, i1, dq, qAt + i0 * qPitch * 4, qPitch * 4, 4, kp, kpPitch, ps, ld * 4, ws);
      // the causal softmax of rows [i0, i1) in place, keys past i zeroed up to i1 (what P · v reads)
      xp.softmaxRows(ps - i0 * ld * 4, ld * 4, i0, i1, i1, scaleAt, stats);
      for (let i = i0; i < i1; i++)
        lse[i] = Math.fround(st[2 * (i - i0)] as number) + Math.log(st[2 * (i - i0) + 1] as number);
      // o = P · v over keys [0, i1)
      ex.gemm(0, i1 - i0, 0, dv, i1, ps, ld * 4, 4, vs, dv * 4, 4, o1 + i0 * ldv * 4, ldv * 4, ws);
    }
    // o's rows out to their place among the staged output's heads
    const [bs, ps_, hs] = [w[37] as number, w[38] as number, w[39] as number];
    xp.copyRows(
      (w[36] as number) + (b * bs + h * hs + r0 * ps_) * 4,
      ps_ * 4,
      o1 + r0 * ldv * 4,
      ldv * 4,
      r1 - r0,
      dv * 4,
    );
    return;
  }

  const gAt = (w[40] as number) + ((w[41] as number) * b + (w[43] as number) * h) * 4,
    gPitch = w[42] as number;
  const oAt = (w[36] as number) + ((w[37] as number) * b + (w[39] as number) * h) * 4,
    oPitch = w[38] as number;
  // rowDot[i] = rowsum(dO ∘ o), rounded to f32 as the reference kernel's scratch row does
  const dotAt = at + (w[62] as number);
  xp.rowDots(gAt, gPitch * 4, oAt, oPitch * 4, S, dv, dotAt);
  // kᵀ's and vᵀ's panels for keys [0, S) packed once (the forward's scheme: a block's keys [0, i1) are a
  // prefix of them) instead of once per query block for its scores and dP
  const kp = at + (w[66] as number),
    vp = at + (w[67] as number);
  ex.packBAll(kAt, 4, kPitch * 4, dq, 0, S, kp, ld * 4);
  ex.packBAll(vAt, 4, vPitch * 4, dv, 0, S, vp, ld * 4);
  for (let i0 = 0; i0 < S; i0 += R) {
    const i1 = Math.min(S, i0 + R);
    ex.gemmPacked(
      0,
      i1 - i0,
      0,
      i1,
      dq,
      qAt + i0 * qPitch * 4,
      qPitch * 4,
      4,
      kp,
      ld * 4,
      ps + i0 * ld * 4,
      ld * 4,
      ws,
    );
    // dP = dO · vᵀ over the same keys
    ex.gemmPacked(
      0,
      i1 - i0,
      0,
      i1,
      dv,
      gAt + i0 * gPitch * 4,
      gPitch * 4,
      4,
      vp,
      ld * 4,
      dps + i0 * ld * 4,
      ld * 4,
      ws,
    );
    // P rebuilt from the lse and dS = P ∘ (dP − rowDot) · scale (the softmax backward, the scale folded
    // in), rows zeroed past key i: the transposed products below read whole rows
    xp.softmaxGradRows(ps, dps, ld * 4, i0, i1, S, scaleAt, lseAt, dotAt);
    // dq = dS · k over keys [0, i1)
    ex.gemm(0, i1 - i0, 0, dq, i1, dps + i0 * ld * 4, ld * 4, 4, kAt, kPitch * 4, 4, o1 + i0 * ldq * 4, ldq * 4, ws);
  }
  // dv = Pᵀ · dO and dk = dSᵀ · q: key block [j0, j0 + kc) sums query rows from j0 (the rows above
  // are masked for all its keys), starting on a depth-block boundary as the whole product does
  for (let j0 = 0; j0 < S; j0 += kc) {
    const j1 = Math.min(S, j0 + kc);
    ex.gemm(
      0,
      j1 - j0,
      0,
      dv,
      S - j0,
      ps + (j0 * ld + j0) * 4,
      4,
      ld * 4,
      gAt + j0 * gPitch * 4,
      gPitch * 4,
      4,
      o3 + j0 * ldv * 4,
      ldv * 4,
      ws,
    );
    ex.gemm(
      0,
      j1 - j0,
      0,
      dq,
      S - j0,
      dps + (j0 * ld + j0) * 4,
      4,
      ld * 4,
      qAt + j0 * qPitch * 4,
      qPitch * 4,
      4,
      o2 + j0 * ldq * 4,
      ldq * 4,
      ws,
    );
  }
  // Scatters: dq, dk's per-head part, dk's shared part (this head's share), dv
  for (let t = 0; t < 4; t++) {
    const slot = 11 + t; // operands 6 (dq), 7 (dk), 8 (dk shared), 9 (dv), 4 words each from word 20
    const d = w[4 * slot] as number;
    if (t === 2 && dr === 0) continue;
    const bs = w[4 * slot + 1] as number,
      ps_ = w[4 * slot + 2] as number,
      hs = w[4 * slot + 3] as number;
    const width = t === 0 ? dq : t === 1 ? kn : t === 2 ? dr : dv;
    const pitch = t === 3 ? ldv : ldq;
    const col = t === 2 ? kn : 0;
    const src = (t === 0 ? o1 : t === 3 ? o3 : o2) + col * 4;
    const dst = d + (b * bs + h * hs) * 4;
    const copied = t === 0 ? kq : width; // dq's rotary columns are rotated back below
    xp.copyRows(dst, ps_ * 4, src, pitch * 4, S, copied * 4);
    if (t === 0 && qr > 0)
      xp.rotateRows(src + kq * 4, pitch * 4, dst + kq * 4, ps_ * 4, S, cosAt, sinAt, half, interleave, 1);
  }
}
