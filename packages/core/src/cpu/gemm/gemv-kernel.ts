// Small-M products against a resident Linear weight W [N, K] (row-major, as checkpoints store it):
//   y[m, n] = Σ_k x[m, k] · W[n, k]   for n in [n0, n1), m in [0, M)
// Decode is memory-bound, so the kernel streams W once, in address order, one weight row at a time:
// rows are contiguous, so [n0, n1) is a single sequential stream that the hardware prefetchers follow
// across rows (four rows side by side were four short streams, restarted every row). The x rows (in
// L1) are taken in groups of 4, 2 and 1, with 8 independent vector accumulators per group (the k loop
// unrolled), so neither the add latency nor a loop-carried chain limits the stream. The unrolled trip
// is cut into basic blocks of 8 weights (never-taken tests between them): TurboFan schedules all of a
// block's loads ahead of its arithmetic, and a whole trip's loads plus 8 accumulators spilled. FP8 adds each
// 128-deep block's scaled sum straight into y. All pointers/strides are bytes.
//
// bf16 trick: one v128 holds 8 weights; as i32 lanes, `<< 16` yields the even-indexed ones as f32 and
// `& 0xffff0000` the odd-indexed ones. So x is handed over de-interleaved per 8-block
// ([x0 x2 x4 x6 | x1 x3 x5 x7]); the K % 8 tail stays in natural order.
// FP8 (E4M3): a byte b on top of an i16 lane, (b:x >> 4, arithmetic) & 0x87f0 is the bf16 with E4M3's
// sign, exponent (in the low 4 bits of bf16's) and mantissa, i.e. the E4M3 value times 2^-120 exactly,
// subnormals and zero included. One 16-byte load serves 16 weights: the odd bytes are already on top
// of their i16 lanes (shift, mask), the even ones are moved there first (<< 8): 9 vector operations
// per 16 weights after the load, where two load8x8_s (a shuffle each) and their shifts and masks were
// 10. So x is staged per 16-block as [x0 x4 x8 x12 | x2 x6 x10 x14 | x1 x5 x9 x13 | x3 x7 x11 x15]; a
// lone 8-block at the end takes load8x8_s ((b << 4) & 0x87f0) and bf16's order, the rest natural. The 2^120 is folded into x when it is staged
// (x · 2^(120-e), with e chosen from max|x| so nothing overflows). The 128x128 block scales are folded
// into x too: at the first row of each 128-row block the kernel rescales the staged x rows, block by
// 128-deep block, into the thread's workspace (x · s[nb, kb] · 2^-t, with t chosen from the largest
// scale of the row block so nothing overflows), so a row is one dot product over the whole depth with
// no per-block epilogue, and 2^(e + t) is applied once per output. That rescale costs m·k multiplies
// per 128 weight rows (under 1% of the products).
import { NATIVE_IMPORTS } from './native-kernels.js';
import { F32, type FuncBuilder, I32, type ModuleBuilder, V128, whileLoop } from './wasm-emitter.js';

export type WeightKind = 'f32' | 'bf16' | 'fp8';
/** Task-table codes of the weight kinds (runTask dispatches on them). */
export const WEIGHT_CODE: Record<WeightKind, number> = { f32: 0, bf16: 1, fp8: 2 };
/** FP8 weights: E4M3 bytes with one f32 scale per FP8_BLOCK x FP8_BLOCK block (DeepSeek-V3's format). */
export const FP8_BLOCK = 128;
/** Vector accumulators per x-row group (8 of the 16 xmm registers V8 allocates on x64). */
const ACCS = 8;
/**
 * Weight rows streamed side by side (each x vector loaded then serves them all). One row, a single
 * sequential stream, measured fastest for every kind at m = 1 (f32/bf16 1.6-2.3x the old four-row
 * kernel from memory; FP8 2-3x its own four-row variant once block sums stopped holding registers);
 * the kernel keeps the general form so the choice stays a measurement away. Measured again with the
 * spill-free blocks (one loaded core, m = 1): two bf16 rows are 2.3x one row on L3-resident weights
 * (each x vector serves both) but 0.6x from memory, which is where decode's weights are.
 */
const ROWS: Record<WeightKind, number> = { f32: 1, bf16: 1, fp8: 1 };

/** Weight bytes per element. */
const elemBytes = (kind: WeightKind): number => (kind === 'f32' ? 4 : kind === 'bf16' ? 2 : 1);
/** Weights one v128 load yields (f32: 4, bf16: 8; fp8: 16, two halves of 8). */
const perLoad = (kind: WeightKind): number => (kind === 'f32' ? 4 : kind === 'bf16' ? 8 : 16);

/** Bytes of workspace gemv_fp8 needs past `xs` for m staged rows of depth k (a vector store may run 12 bytes over). */
export const fp8GemvWorkspace = (m: number, k: number): number => m * k * 4 + 16;

/**
 * gemv_<kind>(x, m, ldx, k, w, ldw, n0, n1, y, ldy[, s, lds, e, xs]). `fma` selects relaxed-SIMD
 * multiply-add. FP8 adds the block scales s (row stride lds bytes), the exponent e folded into x and
 * a workspace xs (fp8GemvWorkspace bytes) for the block-scaled x rows.
 */
export function genGemv(mb: ModuleBuilder, kind: WeightKind, fma: boolean): void {
  const native = kind === 'f32' ? null : NATIVE_GEMV[kind];
  if (native && mb.imports.includes(native)) return genNativeGemv(mb, kind, native.name, fma);
  const fp8 = kind === 'fp8';
  const [f] = mb.func(`gemv_${kind}`, Array<typeof I32>(fp8 ? 14 : 10).fill(I32));
  const [x, m, ldx, k, w, ldw, n0, n1, y, ldy, s, lds, e, xs] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13];
  const n = f.local(I32);
  const nb = f.local(I32); // first row of the current sub-block
  const mi = f.local(I32);
  const kOff = f.local(I32); // byte offset along the rows
  const kLen = f.local(I32); // end of the current span (bytes from the row start)
  const kb = f.local(I32); // fp8 rescale: current 128-deep block
  const kEnd = f.local(I32);
  const p = f.local(I32); // fp8 rescale: byte position along a row
  const sRow = f.local(I32);
  const big = f.local(I32); // fp8: largest |scale| bits of the row block, then t
  const blockScale = f.local(F32);
  const outScale = f.locals(F32, 2); // 2^e, 2^t
  const xp = f.locals(I32, 4);
  const wr = f.locals(I32, ROWS[kind]); // row starts
  const acc = f.locals(V128, ACCS);
  const tail = f.locals(F32, ACCS / 2);
  const raw = f.locals(V128, ROWS[kind]);
  const xv = f.locals(V128, 4);
  const sv = f.local(V128);
  const eb = elemBytes(kind);
  const halves = kind === 'f32' ? 1 : 2;
  const RMAX = ROWS[kind];

  /** Weight rows per sub-block for an x-row group of MB (accumulators: MB * R * per, per >= 2). */
  const rowsFor = (MB: number): number => Math.max(1, Math.min(RMAX, ACCS / (2 * MB)));

  /** Pushes weight row r's vector for half h (raw[r] holds the loaded or sign-extended bits). */
  const weight = (r: number, h: number): void => {
    f.get(raw[r]!);
    if (kind === 'f32') return;
    if (h === 0) f.i32(16).i32x4Shl();
    else f.v128ConstI32(-65536, -65536, -65536, -65536).v128And();
  };

  const madd = (a: number, j: number, push: () => void): void => {
    if (fma) {
      f.get(xv[j]!);
      push();
      f.get(acc[a]!).f32x4RelaxedMadd().set(acc[a]!);
    } else {
      f.get(acc[a]!).get(xv[j]!);
      push();
      f.f32x4Mul().f32x4Add().set(acc[a]!);
    }
  };

  /**
   * `loads` vector loads along each of R weight rows against MB x rows; 8-blocks of fp8 come from
   * halves of one 16-byte load (`eightOnly`: a lone 8-byte block). Accumulator of (x row j, weight
   * row r, step t): (j * R + r) * per + t % per.
   */
  const step = (
    MB: number,
    R: number,
    loads: number,
    eightOnly = false,
    t0 = 0,
    at = 0,
    onlyBlock = -1,
    onlyHalf = -1,
  ): void => {
    const per = ACCS / (MB * R);
    let t = t0;
    for (let i = at; i < at + loads; i++) {
      const blocks = kind === 'fp8' && !eightOnly ? 2 : 1;
      const wOff = i * 16;
      const elems = eightOnly ? 8 : perLoad(kind);
      for (let b = 0; b < blocks; b++) {
        if (onlyBlock >= 0 && b !== onlyBlock) continue;
        // (a sub-block of the second half uses the weight bits the first half's loaded)
        for (let r = 0; r < R && onlyHalf <= 0; r++) {
          f.get(wr[r]!).get(kOff).add();
          if (kind !== 'fp8') {
            f.v128Load(wOff).set(raw[r]!);
            continue;
          }
          if (eightOnly) f.load8x8S(wOff).i32(4).i16x8Shl();
          else {
            // 16 bytes as i16 lanes [odd byte : even byte]: block 0 moves the even bytes on top first
            f.v128Load(wOff);
            if (b === 0) f.i32(8).i16x8Shl();
            f.i32(4).i16x8ShrS();
          }
          f.v128ConstI32(0x87f087f0, 0x87f087f0, 0x87f087f0, 0x87f087f0).v128And().set(raw[r]!);
        }
        for (let h = 0; h < halves; h++) {
          if (onlyHalf >= 0 && h !== onlyHalf) continue;
          const xo = (i * elems + b * 8) * 4 + 16 * h;
          for (let j = 0; j < MB; j++)
            f.get(xp[j]!)
              .get(kOff)
              .i32(4 / eb)
              .mul()
              .add()
              .v128Load(xo)
              .set(xv[j]!);
          for (let r = 0; r < R; r++)
            for (let j = 0; j < MB; j++) madd((j * R + r) * per + (t % per), j, () => weight(r, h));
          t++;
        }
      }
    }
  };

  /** Scalar products of the elements left in [kOff, kLen) (natural order) into tail[j * R + r]. */
  const scalarTail = (MB: number, R: number): void => {
    whileLoop(
      f,
      () => f.get(kOff).get(kLen).ltU(),
      () => {
        for (let r = 0; r < R; r++)
          for (let j = 0; j < MB; j++) {
            f.get(tail[j * R + r]!)
              .get(xp[j]!)
              .get(kOff)
              .i32(4 / eb)
              .mul()
              .add()
              .f32Load();
            const at = (): FuncBuilder => f.get(wr[r]!).get(kOff).add();
            if (kind === 'f32') at().f32Load();
            else if (kind === 'bf16') at().i32Load16U().i32(16).shl().f32ReinterpretI32();
            else {
              // E4M3 byte -> its value times 2^-120, as the vector path decodes it.
              at().i32Load8U().i32(0x7f).and().i32(20).shl();
              at().i32Load8U().i32(0x80).and().i32(24).shl().or().f32ReinterpretI32();
            }
            f.f32Mul()
              .f32Add()
              .set(tail[j * R + r]!);
          }
        f.get(kOff).i32(eb).add().set(kOff);
      },
    );
  };

  /** Products over bytes [kOff, kLen) of the rows: unrolled loop, single loads, 8-block, scalar tail. */
  const span = (MB: number, R: number): void => {
    const per = ACCS / (MB * R);
    const unroll = Math.max(1, per / (kind === 'fp8' ? 4 : halves));
    for (const loads of unroll > 1 ? [unroll, 1] : [1]) {
      const bytes = loads * 16;
      // Sub-blocks of a trip (at most 4): 8 weights each for bf16 / fp8 (an fp8 load is two), split by
      // halves when several x rows need their own x vectors; f32 two loads for one x row, else one.
      const blocks = kind === 'fp8' ? 2 : 1;
      const split = kind !== 'f32' && MB * R > 1 ? halves : 1;
      const group = kind === 'f32' && MB * R === 1 ? Math.min(2, loads) : 1;
      const subs = (loads * blocks * split) / group;
      f.block().loop();
      f.get(kOff).i32(bytes).add().get(kLen).gtU().brIf(1);
      for (let q = 0; q < subs; q++) {
        // A test between sub-blocks ends the basic block: TurboFan places a block's loads ahead of
        // its arithmetic, so a whole unrolled trip in one block held all its loads at once and
        // spilled accumulators to the stack. The tests are never taken (kOff < kLen inside the
        // trip) and all differ, so the compiler folds none of them into the one before.
        if (q > 0) {
          f.get(kOff).get(kLen);
          [() => f.eq(), () => f.gtU(), () => f.geU()][q - 1]!();
          f.brIf(1);
        }
        const h = q % split,
          b = Math.floor(q / split) % blocks,
          i = Math.floor(q / (split * blocks));
        if (group === 1)
          step(MB, R, 1, false, (i * blocks + b) * halves + h, i, blocks > 1 ? b : -1, split > 1 ? h : -1);
        else step(MB, R, group, false, q * group * halves, q * group);
      }
      f.get(kOff).i32(bytes).add().set(kOff);
      f.br(0).end().end();
    }
    if (kind === 'fp8') {
      f.get(kOff).i32(8).add().get(kLen).leU().if_();
      step(MB, R, 1, true);
      f.get(kOff).i32(8).add().set(kOff);
      f.end();
    }
    scalarTail(MB, R);
  };

  const zero = (MB: number, R: number): void => {
    for (const a of acc) f.v128Zero().set(a);
    for (let i = 0; i < MB * R; i++) f.f32c(0).set(tail[i]!);
  };

  /** Horizontal sum of vector local v plus scalar local t (one f32 on the stack). */
  const hsum = (v: number, t: number): void => {
    f.get(v).f32x4ExtractLane(0).get(v).f32x4ExtractLane(1).f32Add();
    f.get(v).f32x4ExtractLane(2).get(v).f32x4ExtractLane(3).f32Add().f32Add();
    f.get(t).f32Add();
  };

  /** Sum of the accumulators of (j, r) into sv. */
  const accSum = (MB: number, R: number, j: number, r: number): void => {
    const per = ACCS / (MB * R);
    f.get(acc[(j * R + r) * per]!);
    for (let a = 1; a < per; a++) f.get(acc[(j * R + r) * per + a]!).f32x4Add();
    f.set(sv);
  };

  /** x rows mi .. mi + MB - 1 against weight rows nb .. nb + R - 1. */
  const group = (MB: number, R: number): void => {
    for (let j = 0; j < MB; j++)
      f.get(fp8 ? xs : x)
        .get(mi)
        .i32(j)
        .add()
        .get(ldx)
        .mul()
        .add()
        .set(xp[j]!);
    for (let r = 0; r < R; r++) f.get(w).get(nb).i32(r).add().get(ldw).mul().add().set(wr[r]!);
    const store = (j: number, r: number, value: () => void): void => {
      f.get(y).get(mi).i32(j).add().get(ldy).mul().add().get(nb).i32(r).add().i32(4).mul().add();
      value();
      f.f32Store();
    };
    f.i32(0).set(kOff);
    f.get(k).i32(eb).mul().set(kLen);
    zero(MB, R);
    span(MB, R);
    for (let r = 0; r < R; r++)
      for (let j = 0; j < MB; j++)
        store(j, r, () => {
          accSum(MB, R, j, r);
          hsum(sv, tail[j * R + r]!);
          if (fp8) f.get(outScale[0]!).f32Mul().get(outScale[1]!).f32Mul();
        });
  };

  /** 2^v as an f32 from an i32 exponent v on the stack (-126 <= v <= 127). */
  const pow2 = (): void => {
    f.i32(127).add().i32(23).shl().f32ReinterpretI32();
  };

  /**
   * FP8: the m staged x rows times the scales of row block n >> 7, into xs (same row stride): xs[i, p]
   * = x[i, p] · s[nb, p >> 7] · 2^-t with t = max(0, exponent(max |s|) - 2), so |xs| < 2^127 (|x| <
   * 2^124 by the choice of e); the outputs are multiplied back by 2^e · 2^t.
   */
  const rescale = (): void => {
    const kBlocks = (): FuncBuilder =>
      f
        .get(k)
        .i32(FP8_BLOCK - 1)
        .add()
        .i32(7)
        .shrU();
    f.get(s).get(n).i32(7).shrU().get(lds).mul().add().set(sRow);
    f.i32(0).set(big);
    f.i32(0).set(kb);
    whileLoop(
      f,
      () => f.get(kb).apply(kBlocks).ltU(),
      () => {
        // big = max(big, bits(s) & 0x7fffffff): integer order is magnitude order for finite floats
        f.get(sRow).get(kb).i32(4).mul().add().i32Load().i32(0x7fffffff).and().set(p);
        f.get(p).get(big).get(p).get(big).gtU().select().set(big);
        f.get(kb).i32(1).add().set(kb);
      },
    );
    // t = max(0, biased exponent - 129)
    f.get(big).i32(23).shrU().i32(129).sub().set(big);
    f.get(big).i32(0).get(big).i32(0).gtS().select().set(big);
    f.get(e).apply(pow2).set(outScale[0]!);
    f.get(big).apply(pow2).set(outScale[1]!);
    f.i32(0).set(mi);
    whileLoop(
      f,
      () => f.get(mi).get(m).ltU(),
      () => {
        f.get(mi).get(ldx).mul().set(kOff); // row start (bytes from x / xs)
        f.i32(0).set(kb);
        whileLoop(
          f,
          () => f.get(kb).apply(kBlocks).ltU(),
          () => {
            f.get(sRow).get(kb).i32(4).mul().add().f32Load();
            f.i32(0).get(big).sub().apply(pow2).f32Mul().set(blockScale);
            f.get(blockScale).f32x4Splat().set(sv);
            // p: byte offset of the block's first element in the row; kEnd: its end (<= k * 4)
            f.get(kb)
              .i32(FP8_BLOCK * 4)
              .mul()
              .set(p);
            f.get(p)
              .i32(FP8_BLOCK * 4)
              .add()
              .get(k)
              .i32(4)
              .mul()
              .get(p)
              .i32(FP8_BLOCK * 4)
              .add()
              .get(k)
              .i32(4)
              .mul()
              .ltU()
              .select()
              .set(kEnd);
            whileLoop(
              f,
              () => f.get(p).i32(16).add().get(kEnd).leU(),
              () => {
                f.get(xs).get(kOff).add().get(p).add();
                f.get(x).get(kOff).add().get(p).add().v128Load().get(sv).f32x4Mul().v128Store();
                f.get(p).i32(16).add().set(p);
              },
            );
            whileLoop(
              f,
              () => f.get(p).get(kEnd).ltU(),
              () => {
                f.get(xs).get(kOff).add().get(p).add();
                f.get(x).get(kOff).add().get(p).add().f32Load().get(blockScale).f32Mul().f32Store();
                f.get(p).i32(4).add().set(p);
              },
            );
            f.get(kb).i32(1).add().set(kb);
          },
        );
        f.get(mi).i32(1).add().set(mi);
      },
    );
  };

  /** Every x-row group (4, 2, 1 rows) against weight rows [n, n + rows), sub-blocks of R rows. */
  const rows = (count: number, single: boolean): void => {
    if (fp8) {
      // (ROWS.fp8 is 1, so a row block starts exactly at some n)
      f.get(n)
        .get(n0)
        .eq()
        .get(n)
        .i32(FP8_BLOCK - 1)
        .and()
        .eqz()
        .or()
        .if_();
      rescale();
      f.end();
    }
    f.i32(0).set(mi);
    for (const MB of [4, 2, 1]) {
      const R = single ? 1 : rowsFor(MB);
      whileLoop(
        f,
        () => f.get(mi).i32(MB).add().get(m).leU(),
        () => {
          for (let sb = 0; sb < count; sb += R) {
            f.get(n).i32(sb).add().set(nb);
            group(MB, R);
          }
          f.get(mi).i32(MB).add().set(mi);
        },
      );
    }
  };

  f.get(n0).set(n);
  whileLoop(
    f,
    () => f.get(n).i32(RMAX).add().get(n1).leU(),
    () => {
      rows(RMAX, false);
      f.get(n).i32(RMAX).add().set(n);
    },
  );
  whileLoop(
    f,
    () => f.get(n).get(n1).ltU(),
    () => {
      rows(1, true);
      f.get(n).i32(1).add().set(n);
    },
  );
}

/** The native kernels of the weight kinds that have one (native/gemv.cc: f32 measured slower native). */
const NATIVE_GEMV = {
  bf16: NATIVE_IMPORTS.gemvBf16,
  fp8: NATIVE_IMPORTS.gemvFp8,
} as const;

/**
 * gemv_<kind> as a call to the native kernel (the same accumulators at AVX-512 width, so the same
 * bits), passing whether the wasm kernel would fuse its multiply-adds and the memory's size in pages.
 */
function genNativeGemv(mb: ModuleBuilder, kind: WeightKind, name: string, fma: boolean): void {
  const params = kind === 'fp8' ? 14 : 10;
  const [f] = mb.func(`gemv_${kind}`, Array<typeof I32>(params).fill(I32));
  for (let i = 0; i < params; i++) f.get(i);
  f.i32(fma ? 1 : 0)
    .memorySize()
    .call(mb.importIndex(name));
}

/**
 * The exponent e for FP8 staging: x is staged times 2^(120 - e), the smallest e >= 0 that keeps
 * max|x| · 2^(120 - e) below 2^124 (NaN / Inf: e = 120, x unchanged, so they propagate).
 */
export function fp8StageExponent(src: Float32Array, off: number, m: number, k: number, ldx = k): number {
  let mx = 0;
  for (let r = 0, at = off; r < m; r++, at += ldx)
    for (let i = at; i < at + k; i++) {
      const a = Math.abs(src[i]!);
      if (!(a <= mx)) mx = a; // NaN lands here too
    }
  if (!Number.isFinite(mx)) return 120;
  return mx === 0 ? 0 : Math.min(120, Math.max(0, Math.ceil(Math.log2(mx)) - 3));
}

/**
 * x rows [m, k] (row stride `ldx`) in the layout gemv_<kind> reads, written to `dst` (row stride `ld`
 * floats); FP8 multiplies by 2^(120 - e) (exact: a power of two, in range by the choice of e).
 */
export function stageX(
  kind: WeightKind,
  src: Float32Array,
  off: number,
  m: number,
  k: number,
  dst: Float32Array,
  at: number,
  ld: number,
  e = 120,
  ldx = k,
): void {
  if (kind === 'f32') {
    for (let i = 0; i < m; i++) dst.set(src.subarray(off + i * ldx, off + i * ldx + k), at + i * ld);
    return;
  }
  const mul = kind === 'fp8' ? 2 ** (120 - e) : 1;
  const kv = k - (k % 8);
  const k16 = kind === 'fp8' ? k - (k % 16) : 0;
  for (let i = 0; i < m; i++) {
    const s = off + i * ldx,
      d = at + i * ld;
    // FP8 16-blocks: position 8b + 4h + q holds element 4q + 2h + b (see the header)
    for (let j = 0; j < k16; j += 16)
      for (let b = 0; b < 2; b++)
        for (let h = 0; h < 2; h++)
          for (let q = 0; q < 4; q++) dst[d + j + 8 * b + 4 * h + q] = src[s + j + 4 * q + 2 * h + b]! * mul;
    for (let j = k16; j < kv; j += 8) {
      for (let q = 0; q < 4; q++) {
        dst[d + j + q] = src[s + j + 2 * q]! * mul;
        dst[d + j + 4 + q] = src[s + j + 2 * q + 1]! * mul;
      }
    }
    for (let j = kv; j < k; j++) dst[d + j] = src[s + j]! * mul;
  }
}
