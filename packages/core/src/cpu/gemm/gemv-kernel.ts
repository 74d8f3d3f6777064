// Small-M products against a resident Linear weight W [N, K] (row-major, as checkpoints store it):
//   y[m, n] = Σ_k x[m, k] · W[n, k]   for n in [n0, n1), m in [0, M)
// Decode is memory-bound, so the kernel streams W once, in address order: one weight row at a time
// (rows are contiguous, so the whole range [n0, n1) is a single sequential stream, which the hardware
// prefetchers follow across rows; four rows side by side were four short streams, restarted every
// row and measured at half the bandwidth). The x rows (in L1) are taken against each weight row in
// groups of 4, 2 and 1, with 8 independent vector accumulators per group (the k loop unrolled), so
// neither the add latency nor a loop-carried chain limits the stream. All pointers/strides are bytes.
//
// bf16 trick: one v128 holds 8 weights; as i32 lanes, `<< 16` yields the even-indexed ones as f32 and
// `& 0xffff0000` the odd-indexed ones. So x is handed over de-interleaved per 8-block
// ([x0 x2 x4 x6 | x1 x3 x5 x7]); the K % 8 tail stays in natural order.
// FP8 (E4M3): 8 bytes sign-extend to i16 lanes; (b << 4) & 0x87f0 is the bf16 with E4M3's sign,
// exponent (in the low 4 bits of bf16's) and mantissa, i.e. the E4M3 value times 2^-120 exactly,
// subnormals and zero included. The 2^120 is folded into x when it is staged (x · 2^(120-e), with e
// chosen from max|x| so nothing overflows) and 2^e into each 128-deep block's scale, so the hot loop
// does no extra multiply.
import { F32, type FuncBuilder, I32, type ModuleBuilder, V128 } from './wasm-emitter.js';

export type WeightKind = 'f32' | 'bf16' | 'fp8';
/** Task-table codes of the weight kinds (runTask dispatches on them). */
export const WEIGHT_CODE: Record<WeightKind, number> = { f32: 0, bf16: 1, fp8: 2 };
/** FP8 weights: E4M3 bytes with one f32 scale per FP8_BLOCK x FP8_BLOCK block (DeepSeek-V3's format). */
export const FP8_BLOCK = 128;
/** Vector accumulators per x-row group (8 of the 16 xmm registers V8 allocates on x64). */
const ACCS = 8;

function whileLoop(f: FuncBuilder, cond: () => void, body: () => void): void {
  f.block().loop();
  cond();
  f.eqz().brIf(1);
  body();
  f.br(0).end().end();
}

/** Weight bytes per element. */
const elemBytes = (kind: WeightKind): number => (kind === 'f32' ? 4 : kind === 'bf16' ? 2 : 1);
/** Weights one v128 load yields (f32: 4, bf16: 8; fp8: 16, two halves of 8). */
const perLoad = (kind: WeightKind): number => (kind === 'f32' ? 4 : kind === 'bf16' ? 8 : 16);

/**
 * gemv_<kind>(x, m, ldx, k, w, ldw, n0, n1, y, ldy[, s, lds, e]). `fma` selects relaxed-SIMD
 * multiply-add. FP8 adds the block scales s (row stride lds bytes) and the exponent e folded into x.
 */
export function genGemv(mb: ModuleBuilder, kind: WeightKind, fma: boolean): void {
  const fp8 = kind === 'fp8';
  const [f] = mb.func(`gemv_${kind}`, Array<typeof I32>(fp8 ? 13 : 10).fill(I32));
  const [x, m, ldx, k, w, ldw, n0, n1, y, ldy, s, lds, e] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12];
  const n = f.local(I32);
  const mi = f.local(I32);
  const wRow = f.local(I32);
  const wp = f.local(I32);
  const wEnd = f.local(I32);
  const kb = f.local(I32); // fp8: start of the current 128-deep block (others: 0)
  const kEnd = f.local(I32); // end of the current block
  const sRow = f.local(I32);
  const xp = f.locals(I32, 4);
  const acc = f.locals(V128, ACCS);
  const tot = f.locals(V128, 4); // fp8: scaled sums of finished blocks
  const tail = f.locals(F32, 4);
  const ttot = f.locals(F32, 4);
  const wv = f.locals(V128, 2);
  const sv = f.local(V128);
  const eb = elemBytes(kind);
  const HIMASK = (): FuncBuilder => f.v128ConstI32(-65536, -65536, -65536, -65536);

  // acc[a] += x (loaded from xp[j] + off) * (the value `push` leaves)
  const madd = (a: number, j: number, off: number, push: () => void): void => {
    if (fma) {
      f.get(xp[j]!).v128Load(off);
      push();
      f.get(acc[a]!).f32x4RelaxedMadd().set(acc[a]!);
    } else {
      f.get(acc[a]!).get(xp[j]!).v128Load(off);
      push();
      f.f32x4Mul().f32x4Add().set(acc[a]!);
    }
  };

  /**
   * One vector step of `u` loads for rows j < MB: weights at wp + off*eb..., x at xp[j] + 4*off...
   * Accumulator of (row j, load i, half h): j * per + (i * halves + h) % per.
   */
  const step = (MB: number, loads: number): void => {
    const halves = kind === 'f32' ? 1 : 2;
    const per = ACCS / MB;
    let slot = 0;
    for (let i = 0; i < loads; i++) {
      const wOff = i * 16,
        el = i * perLoad(kind);
      if (kind === 'f32') {
        f.get(wp).v128Load(wOff).set(wv[0]!);
        for (let j = 0; j < MB; j++) madd(j * per + (slot % per), j, el * 4, () => f.get(wv[0]!));
        slot++;
        continue;
      }
      // bf16: one load = one 8-block; fp8: one load = two 8-blocks.
      const blocks = kind === 'bf16' ? 1 : 2;
      for (let b = 0; b < blocks; b++) {
        if (kind === 'bf16') f.get(wp).v128Load(wOff).set(wv[0]!);
        else {
          if (b === 0) f.get(wp).v128Load(wOff).set(wv[1]!);
          f.get(wv[1]!);
          if (b === 0) f.i16x8ExtendLowI8x16S();
          else f.i16x8ExtendHighI8x16S();
          f.i32(4).i16x8Shl().v128ConstI32(0x87f087f0, 0x87f087f0, 0x87f087f0, 0x87f087f0).v128And().set(wv[0]!);
        }
        const xo = (el + b * 8) * 4;
        for (let h = 0; h < halves; h++) {
          for (let j = 0; j < MB; j++)
            madd(j * per + (slot % per), j, xo + 16 * h, () => {
              f.get(wv[0]!);
              if (h === 0) f.i32(16).i32x4Shl();
              else HIMASK().v128And();
            });
          slot++;
        }
      }
    }
  };

  /** wp advances by `bytes`, every xp by 4 * elements. */
  const advance = (MB: number, elements: number): void => {
    f.get(wp)
      .i32(elements * eb)
      .add()
      .set(wp);
    for (let j = 0; j < MB; j++)
      f.get(xp[j]!)
        .i32(elements * 4)
        .add()
        .set(xp[j]!);
  };

  /** Scalar products of the elements left in [wp, wEnd) (natural order) into tail[j]. */
  const scalarTail = (MB: number): void => {
    whileLoop(
      f,
      () => f.get(wp).get(wEnd).ltU(),
      () => {
        for (let j = 0; j < MB; j++) {
          f.get(tail[j]!).get(xp[j]!).f32Load();
          if (kind === 'f32') f.get(wp).f32Load();
          else if (kind === 'bf16') f.get(wp).i32Load16U().i32(16).shl().f32ReinterpretI32();
          else {
            // E4M3 byte -> its value times 2^-120, as the vector path decodes it.
            const b = (): FuncBuilder => f.get(wp).i32Load8U();
            b().i32(0x7f).and().i32(20).shl();
            b().i32(0x80).and().i32(24).shl().or().f32ReinterpretI32();
          }
          f.f32Mul().f32Add().set(tail[j]!);
        }
        advance(MB, 1);
      },
    );
  };

  /** Products of rows j < MB over weights [wp, wEnd): unrolled loop, single-load loop, scalar tail. */
  const span = (MB: number): void => {
    const unroll = ACCS / MB / (kind === 'f32' ? 1 : 2);
    const pl = perLoad(kind);
    for (const loads of unroll > 1 ? [unroll, 1] : [1]) {
      const bytes = loads * pl * eb;
      whileLoop(
        f,
        () => f.get(wp).i32(bytes).add().get(wEnd).leU(),
        () => {
          step(MB, loads);
          advance(MB, loads * pl);
        },
      );
    }
    if (kind === 'fp8') {
      // An 8-block left over (the x layout is de-interleaved per 8): decode it through load8x8_s.
      f.get(wp).i32(8).add().get(wEnd).leU().if_();
      f.get(wp).load8x8S().i32(4).i16x8Shl().v128ConstI32(0x87f087f0, 0x87f087f0, 0x87f087f0, 0x87f087f0);
      f.v128And().set(wv[0]!);
      const per = ACCS / MB;
      for (let h = 0; h < 2; h++)
        for (let j = 0; j < MB; j++)
          madd(j * per + h, j, 16 * h, () => {
            f.get(wv[0]!);
            if (h === 0) f.i32(16).i32x4Shl();
            else HIMASK().v128And();
          });
      advance(MB, 8);
      f.end();
    }
    scalarTail(MB);
  };

  /** Horizontal sum of row j's accumulators (one f32 on the stack). */
  const rowSum = (MB: number, j: number): void => {
    const per = ACCS / MB;
    f.get(acc[j * per]!);
    for (let a = 1; a < per; a++) f.get(acc[j * per + a]!).f32x4Add();
    f.set(sv);
    f.get(sv).f32x4ExtractLane(0).get(sv).f32x4ExtractLane(1).f32Add();
    f.get(sv).f32x4ExtractLane(2).get(sv).f32x4ExtractLane(3).f32Add().f32Add();
    f.get(tail[j]!).f32Add();
  };

  const zero = (): void => {
    for (const a of acc) f.v128Zero().set(a);
    for (const t of tail) f.f32c(0).set(t);
  };

  /** Rows mi .. mi + MB - 1 of x against weight row n. */
  const group = (MB: number): void => {
    for (let j = 0; j < MB; j++) f.get(x).get(mi).i32(j).add().get(ldx).mul().add().set(xp[j]!);
    f.get(wRow).set(wp);
    if (!fp8) {
      f.get(wRow).get(k).i32(eb).mul().add().set(wEnd);
      zero();
      span(MB);
      for (let j = 0; j < MB; j++) {
        f.get(y).get(mi).i32(j).add().get(ldy).mul().add().get(n).i32(4).mul().add();
        rowSum(MB, j);
        f.f32Store();
      }
      return;
    }
    for (let j = 0; j < MB; j++) {
      f.v128Zero().set(tot[j]!);
      f.f32c(0).set(ttot[j]!);
    }
    f.i32(0).set(kb);
    whileLoop(
      f,
      () => f.get(kb).get(k).ltU(),
      () => {
        // kEnd = min(kb + 128, k)
        f.get(kb).i32(FP8_BLOCK).add().get(k).get(kb).i32(FP8_BLOCK).add().get(k).ltU().select().set(kEnd);
        f.get(wRow).get(kEnd).add().set(wEnd);
        zero();
        span(MB);
        // block scale · 2^e, splatted
        f.get(sRow).get(kb).i32(7).shrU().i32(4).mul().add().f32Load();
        f.get(e).i32(127).add().i32(23).shl().f32ReinterpretI32().f32Mul().f32x4Splat().set(sv);
        const per = ACCS / MB;
        for (let j = 0; j < MB; j++) {
          f.get(acc[j * per]!);
          for (let a = 1; a < per; a++) f.get(acc[j * per + a]!).f32x4Add();
          f.get(sv).f32x4Mul().get(tot[j]!).f32x4Add().set(tot[j]!);
          f.get(tail[j]!).get(sv).f32x4ExtractLane(0).f32Mul().get(ttot[j]!).f32Add().set(ttot[j]!);
        }
        f.get(kEnd).set(kb);
      },
    );
    for (let j = 0; j < MB; j++) {
      f.get(y).get(mi).i32(j).add().get(ldy).mul().add().get(n).i32(4).mul().add();
      f.get(tot[j]!).f32x4ExtractLane(0).get(tot[j]!).f32x4ExtractLane(1).f32Add();
      f.get(tot[j]!).f32x4ExtractLane(2).get(tot[j]!).f32x4ExtractLane(3).f32Add().f32Add();
      f.get(ttot[j]!).f32Add().f32Store();
    }
  };

  f.get(n0).set(n);
  whileLoop(
    f,
    () => f.get(n).get(n1).ltU(),
    () => {
      f.get(w).get(n).get(ldw).mul().add().set(wRow);
      if (fp8) f.get(s).get(n).i32(7).shrU().get(lds).mul().add().set(sRow);
      f.i32(0).set(mi);
      for (const MB of [4, 2, 1]) {
        whileLoop(
          f,
          () => f.get(mi).i32(MB).add().get(m).leU(),
          () => {
            group(MB);
            f.get(mi).i32(MB).add().set(mi);
          },
        );
      }
      f.get(n).i32(1).add().set(n);
    },
  );
}

/**
 * The exponent e for FP8 staging: x is staged times 2^(120 - e), the smallest e >= 0 that keeps
 * max|x| · 2^(120 - e) below 2^124 (NaN / Inf: e = 120, x unchanged, so they propagate).
 */
export function fp8StageExponent(src: Float32Array, off: number, count: number): number {
  let mx = 0;
  for (let i = off; i < off + count; i++) {
    const a = Math.abs(src[i]!);
    if (!(a <= mx)) mx = a; // NaN lands here too
  }
  if (!Number.isFinite(mx)) return 120;
  return mx === 0 ? 0 : Math.min(120, Math.max(0, Math.ceil(Math.log2(mx)) - 3));
}

/**
 * x rows [m, k] (row stride k) in the layout gemv_<kind> reads, written to `dst` (row stride `ld`
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
): void {
  if (kind === 'f32') {
    for (let i = 0; i < m; i++) dst.set(src.subarray(off + i * k, off + (i + 1) * k), at + i * ld);
    return;
  }
  const mul = kind === 'fp8' ? 2 ** (120 - e) : 1;
  const kv = k - (k % 8);
  for (let i = 0; i < m; i++) {
    const s = off + i * k,
      d = at + i * ld;
    for (let j = 0; j < kv; j += 8) {
      for (let q = 0; q < 4; q++) {
        dst[d + j + q] = src[s + j + 2 * q]! * mul;
        dst[d + j + 4 + q] = src[s + j + 2 * q + 1]! * mul;
      }
    }
    for (let j = kv; j < k; j++) dst[d + j] = src[s + j]! * mul;
  }
}
