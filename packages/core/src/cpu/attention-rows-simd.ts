// The training attention's row passes (training-attention-task.ts) as WebAssembly SIMD kernels, built
// into one module with vector-exp.ts's `exp`, instantiated over the GEMM engine's memory on every
// thread of its attention job. Each replaces a JavaScript row loop with the same f64 operations in the
// same order (f32 values widened exactly, f64x2 lanes, no fused multiply-add in WebAssembly, results
// rounded to nearest as a Float32Array store does), so the bits are the loop's:
//   softmaxRows      forward, query rows [i0, i1) of the scores P (keys 0..i per row i):
//                    m = max_j P·scale (for 0 < scale < ∞ as f64(max_j P)·scale, the same value:
//                    maxTimesScale); P = f32(P·scale − m); exp; z = Σ_j P in j's order (f64);
//                    P = f32(P · (1 / z)); P[i+1 .. fillTo) = 0; (m, z) stored as f64 for the lse.
//                    The maximum is order-free (max is exact; NaN and ±0 alike in Math.max and f64.max).
//   softmaxGradRows  backward: P = exp(f32(P·scale − lse)) rebuilt; P[i+1 .. S) = 0;
//                    dP = f32((P · (dP − rowDot)) · scale) over keys 0..i; dP[i+1 .. S) = 0.
//   rowDots          rowDot[i] = f32(Σ_j g·o) in j's order, two rows' chains in the two lanes.
//   rotateRows       a pair (a, o) of a row → (f32(a·c − o·s'), f32(o·c + a·s')), s' = ±s: computed as
//                    (a, o)·c + (o, a)·(−s', s'), the same exact products and one rounded sum each
//                    (x − y = x + (−y) exactly).
//   copyRows         rows of bytes between pitches (memory.copy).
// A row's exp runs over whole vectors, its masked lanes (i, 4·⌈(i+1)/4⌉) set to −Infinity first (e^−∞ =
// +0, which adds nothing to z), as the JavaScript passes did.
import { type FuncBuilder, F64, I32, ModuleBuilder, V128, whileLoop } from './gemm/wasm-emitter.js';
import { f64Const, load2, memOp, op, pairs, store2, zeroTail } from './simd-rows-emit.js';
import { addExpFunction, emitExpConstants, emitExpF32x4, type ExpConstants } from './vector-exp.js';
import { addLatentRows } from './latent-rows-simd.js';
import { addCombineRows } from './combine-rows-simd.js';
import { addGatedKernels } from './gated-simd.js';
import { addGatherRows } from './gather-rows-simd.js';
import { addOptimizerRows } from './optimizer-rows-simd.js';
import { addArithRows } from './arith-simd.js';
import { addRmsnormRows } from './rmsnorm-simd.js';
import { addScatterAddRows } from './scatter-rows-simd.js';
import { addCombineBackwardRows } from './combine-backward-simd.js';

/** row[len .. to) = value (f32 stores; a few floats). */
function fillTail(f: FuncBuilder, row: number, len: number, to: number, j: number, value: number): void {
  f.get(len).i32(2).shl().set(j);
  whileLoop(
    f,
    () => f.get(j).get(to).i32(2).shl().ltU(),
    () => {
      f.get(row).get(j).add().f32c(value).f32Store();
      f.get(j).i32(4).add().set(j);
    },
  );
}

/**
 * p = f32(p·scale − shift) over the row's `len` floats (sc, sh: f64x2 locals), the lanes up to the
 * vector boundary set to −∞, then e^p in place over those vectors.
 */
function shiftExp(
  f: FuncBuilder,
  v: { row: number; len: number; j: number; end: number; sc: number; sh: number },
  x: [number, number, number, number],
  k: ExpConstants,
): void {
  const { row, len, j, end, sc, sh } = v;
  pairs(f, len, j, end, (wide) => {
    f.get(row).get(j).add();
    f.get(row).get(j).add();
    load2(f, wide).get(sc);
    f.simd(op.f64x2Mul).get(sh);
    f.simd(op.f64x2Sub);
    store2(f, wide);
  });
  // vectors over keys [0, len): n4 = ⌈len / 4⌉, masked lanes −∞
  f.get(len).i32(3).add().i32(2).shrU().i32(2).shl().set(end);
  fillTail(f, row, len, end, j, Number.NEGATIVE_INFINITY);
  const [xv, n, r, p] = x;
  f.i32(0).set(j);
  whileLoop(
    f,
    () => f.get(j).get(end).i32(2).shl().ltU(),
    () => {
      // vector-exp.ts's exp(ptr, n, scale 1, shift 0) without its argument's x·1 + 0: the same value but
      // for −0 → +0, whose exps are both 1
      f.get(row).get(j).add().v128Load().set(xv);
      emitExpF32x4(f, xv, n, r, p, k);
      f.get(row).get(j).add().get(p).v128Store();
      f.get(j).i32(16).add().set(j);
    },
  );
}

/**
 * mf = f64(max_j P[j]) · scale over the row's `len` floats: f32x4.pmax (one instruction; wasm's max is a
 * NaN- and ±0-exact sequence) over whole vectors, f32.max over the lanes and the rest. For 0 < scale < ∞
 * the softmax gets the bits of the f64 products' maximum (the f64x2 pass): rounding to nearest is monotone,
 * so the largest product is the largest P's; where pmax differs from max it changes no output — it may
 * skip a NaN (the row's z, P and lse are NaN all the same) or give −0 for +0 (x − m then differs only in
 * a zero's sign, e^±0 = 1, and lse = m + log z with z >= 1 is +0 either way). mx: a v128 scratch local.
 */
function maxTimesScale(
  f: FuncBuilder,
  v: { row: number; len: number; j: number; end: number; mx: number; mf: number; sc: number },
): void {
  const { row, len, j, end, mx, mf, sc } = v;
  f.f32c(Number.NEGATIVE_INFINITY).f32x4Splat().set(mx);
  f.i32(0).set(j);
  f.get(len).i32(-4).and().i32(2).shl().set(end);
  whileLoop(
    f,
    () => f.get(j).get(end).ltU(),
    () => {
      f.get(mx).get(row).get(j).add().v128Load();
      f.simd(0xeb).set(mx); // f32x4.pmax
      f.get(j).i32(16).add().set(j);
    },
  );
  f.get(mx).f32x4ExtractLane(0).get(mx).f32x4ExtractLane(1).op(0x97); // f32.max
  f.get(mx).f32x4ExtractLane(2).op(0x97);
  f.get(mx).f32x4ExtractLane(3).op(0x97);
  f.op(op.f64Promote).set(mf);
  f.get(len).i32(2).shl().set(end);
  whileLoop(
    f,
    () => f.get(j).get(end).ltU(),
    () => {
      f.get(mf).get(row).get(j).add().f32Load().op(op.f64Promote).op(op.f64Max).set(mf);
      f.get(j).i32(4).add().set(j);
    },
  );
  f.get(mf).get(sc).simd(op.f64x2Extract, 0).op(op.f64Mul).set(mf);
}

/** z += the four f32 lanes of v (a v128 local) in lane order, each widened to f64 (z an f64 local). */
function addLanes(f: FuncBuilder, z: number, v: number): void {
  for (let lane = 0; lane < 4; lane++) f.get(z).get(v).f32x4ExtractLane(lane).op(op.f64Promote).op(op.f64Add).set(z);
}

/**
 * The exps' sums z of rows a and b = a + ld (whole vectors: their masked lanes are +0, which adds nothing)
 * in each row's key order, the two rows' chains side by side in an f64x2's lanes: a row's chain of
 * dependent adds is what bounds its sum, two of them run in the time of one. Row a has `va` bytes of
 * vectors, row b those and at most one more (`vb` bytes); za, zb: f64 locals.
 */
function pairSums(
  f: FuncBuilder,
  v: { a: number; ld: number; va: number; vb: number; j: number; za: number; zb: number },
  t: [number, number, number],
): void {
  const { a, ld, va, vb, j, za, zb } = v;
  const [x, y, zz] = t;
  f.v128ConstI32(0, 0, 0, 0).set(zz);
  f.i32(0).set(j);
  whileLoop(
    f,
    () => f.get(j).get(va).ltU(),
    () => {
      f.get(a).get(j).add().v128Load().set(x);
      f.get(a).get(ld).add().get(j).add().v128Load().set(y);
      for (let lane = 0; lane < 4; lane++) {
        f.get(zz)
          .get(x)
          .get(y)
          .shuffle32(lane, 4 + lane, lane, 4 + lane)
          .simd(op.promoteLow);
        f.simd(op.f64x2Add).set(zz);
      }
      f.get(j).i32(16).add().set(j);
    },
  );
  f.get(zz).simd(op.f64x2Extract, 0).set(za);
  f.get(zz).simd(op.f64x2Extract, 1).set(zb);
  f.get(j).get(vb).ltU().if_();
  f.get(a).get(ld).add().get(j).add().v128Load().set(y);
  addLanes(f, zb, y);
  f.end();
}

/**
 * softmaxRows(p, ld, i0, i1, fillTo, scaleAt, stats): rows i of ld bytes from byte address p; the
 * softmax scale an f64 at scaleAt; (m, z) of row i as two f64 at stats + 16·(i − i0). Rows two at a
 * time: each row's maximum and exps, the two rows' sums together (pairSums), each row's normalization.
 */
function addSoftmaxRows(m: ModuleBuilder): void {
  const [f] = m.func('softmaxRows', [I32, I32, I32, I32, I32, I32, I32]);
  const [p, ld, i0, i1, fillTo, scaleAt, stats] = [0, 1, 2, 3, 4, 5, 6];
  const [i, e, r, row, len, j, end, st, vb] = f.locals(I32, 9) as [
    number,
    number,
    number,
    number,
    number,
    number,
    number,
    number,
    number,
  ];
  const [sc, mx, sh, inv] = f.locals(V128, 4) as [number, number, number, number];
  const x = f.locals(V128, 4) as [number, number, number, number];
  const [z, z2, mf] = f.locals(F64, 3) as [number, number, number];
  memOp(f.get(scaleAt), 0x0a, 3).set(sc); // v128.load64_splat
  const k = emitExpConstants(f);
  // 0 < scale < ∞: the maximum of the products is the product of the maximum (maxTimesScale)
  const positive = f.local(I32);
  f.get(sc).simd(op.f64x2Extract, 0);
  f64Const(f, 0).op(op.f64Gt);
  f.get(sc).simd(op.f64x2Extract, 0);
  f64Const(f, Number.POSITIVE_INFINITY).op(op.f64Lt);
  f.and().set(positive);
  /** row = p + r·ld, len = r + 1, st = stats + 16·(r − i0) */
  const rowAt = () => {
    f.get(p).get(r).get(ld).mul().add().set(row);
    f.get(r).i32(1).add().set(len);
    f.get(stats).get(r).get(i0).sub().i32(4).shl().add().set(st);
  };
  /** bytes of whole vectors over a row of `n` floats (the pushed i32) */
  const vectorBytes = () => f.i32(3).add().i32(-4).and().i32(2).shl();
  f.get(i0).set(i);
  whileLoop(
    f,
    () => f.get(i).get(i1).ltU(),
    () => {
      // rows [i, e): two, or the block's last one
      f.get(i).i32(2).add().get(i1).get(i).i32(2).add().get(i1).ltU().select().set(e);
      // each row: m = max over keys [0, len) of P·scale, then P = e^(f32(P·scale − m)) over whole vectors
      f.get(i).set(r);
      whileLoop(
        f,
        () => f.get(r).get(e).ltU(),
        () => {
          rowAt();
          f.get(positive).if_();
          maxTimesScale(f, { row, len, j, end, mx, mf, sc });
          f.else_();
          f64Const(f, Number.NEGATIVE_INFINITY);
          f.simd(op.f64x2Splat).set(mx);
          pairs(f, len, j, end, (wide) => {
            f.get(mx).get(row).get(j).add();
            load2(f, wide).get(sc);
            f.simd(op.f64x2Mul);
            f.simd(op.f64x2Max).set(mx);
          });
          f.get(mx).simd(op.f64x2Extract, 0);
          f.get(mx).simd(op.f64x2Extract, 1);
          f.op(op.f64Max).set(mf);
          f.end();
          f.get(st).get(mf).op(op.f64Store).code.u32(3).u32(0);
          f.get(mf);
          f.simd(op.f64x2Splat).set(sh);
          shiftExp(f, { row, len, j, end, sc, sh }, x, k);
          f.get(r).i32(1).add().set(r);
        },
      );
      // z of each row, Σ P in key order (f64)
      f.get(i).set(r);
      rowAt();
      f.get(len);
      vectorBytes().set(end);
      f.get(e).get(i).sub().i32(2).eq().if_();
      f.get(len).i32(1).add();
      vectorBytes().set(vb);
      pairSums(f, { a: row, ld, va: end, vb, j, za: z, zb: z2 }, [x[0], x[1], x[2]]);
      f.get(st).get(z2).op(op.f64Store).code.u32(3).u32(24);
      f.else_();
      f64Const(f, 0).set(z);
      f.i32(0).set(j);
      whileLoop(
        f,
        () => f.get(j).get(end).ltU(),
        () => {
          f.get(row).get(j).add().v128Load().set(x[0]);
          addLanes(f, z, x[0]);
          f.get(j).i32(16).add().set(j);
        },
      );
      f.end();
      f.get(st).get(z).op(op.f64Store).code.u32(3).u32(8);
      f.get(i).set(r);
      whileLoop(
        f,
        () => f.get(r).get(e).ltU(),
        () => {
          // P = f32(P · (1 / z)), keys past i zeroed up to fillTo
          rowAt();
          f.get(st).op(op.f64Load).code.u32(3).u32(8);
          f.set(z);
          f64Const(f, 1).get(z).op(op.f64Div);
          f.simd(op.f64x2Splat).set(inv);
          pairs(f, len, j, end, (wide) => {
            f.get(row).get(j).add();
            f.get(row).get(j).add();
            load2(f, wide).get(inv);
            f.simd(op.f64x2Mul);
            store2(f, wide);
          });
          zeroTail(f, row, len, fillTo);
          f.get(r).i32(1).add().set(r);
        },
      );
      f.get(e).set(i);
    },
  );
}

/**
 * softmaxGradRows(p, dp, ld, i0, i1, S, scaleAt, lseAt, dotAt): rows i of P and dP (ld bytes each);
 * lse[i] and rowDot[i] as f32 at lseAt + 4i and dotAt + 4i.
 */
function addSoftmaxGradRows(m: ModuleBuilder): void {
  const [f] = m.func('softmaxGradRows', [I32, I32, I32, I32, I32, I32, I32, I32, I32]);
  const [p, dp, ld, i0, i1, S, scaleAt, lseAt, dotAt] = [0, 1, 2, 3, 4, 5, 6, 7, 8];
  const [i, row, drow, len, j, end] = f.locals(I32, 6) as [number, number, number, number, number, number];
  const [sc, sh, di] = f.locals(V128, 3) as [number, number, number];
  const x = f.locals(V128, 4) as [number, number, number, number];
  memOp(f.get(scaleAt), 0x0a, 3).set(sc);
  const k = emitExpConstants(f);
  f.get(i0).set(i);
  whileLoop(
    f,
    () => f.get(i).get(i1).ltU(),
    () => {
      f.get(i).get(ld).mul().set(row);
      f.get(dp).get(row).add().set(drow);
      f.get(p).get(row).add().set(row);
      f.get(i).i32(1).add().set(len);
      f.get(lseAt).get(i).i32(2).shl().add().f32Load().op(op.f64Promote);
      f.simd(op.f64x2Splat).set(sh);
      shiftExp(f, { row, len, j, end, sc, sh }, x, k);
      zeroTail(f, row, len, S);
      // dS = f32((P · (dP − rowDot)) · scale)
      f.get(dotAt).get(i).i32(2).shl().add().f32Load().op(op.f64Promote);
      f.simd(op.f64x2Splat).set(di);
      pairs(f, len, j, end, (wide) => {
        f.get(drow).get(j).add();
        f.get(row).get(j).add();
        load2(f, wide);
        f.get(drow).get(j).add();
        load2(f, wide).get(di);
        f.simd(op.f64x2Sub);
        f.simd(op.f64x2Mul).get(sc);
        f.simd(op.f64x2Mul);
        store2(f, wide);
      });
      zeroTail(f, drow, len, S);
      f.get(i).i32(1).add().set(i);
    },
  );
}

/** copyRows(dst, dstPitch, src, srcPitch, rows, bytes): `bytes` of each of `rows` rows (pitches in bytes). */
function addCopyRows(m: ModuleBuilder): void {
  const [f] = m.func('copyRows', [I32, I32, I32, I32, I32, I32]);
  const [dst, dstPitch, src, srcPitch, rows, bytes] = [0, 1, 2, 3, 4, 5];
  whileLoop(
    f,
    () => f.get(rows),
    () => {
      f.get(dst).get(src).get(bytes).op(0xfc, 0x0a, 0x00, 0x00); // memory.copy
      f.get(dst).get(dstPitch).add().set(dst);
      f.get(src).get(srcPitch).add().set(src);
      f.get(rows).i32(1).sub().set(rows);
    },
  );
}

/**
 * rowDots(g, gPitch, o, oPitch, rows, n, dst): dst[i] = f32(Σ_j g[i][j]·o[i][j]) for `rows` rows of n
 * floats (pitches in bytes); two rows at a time, a lone last row paired with itself.
 */
function addRowDots(m: ModuleBuilder): void {
  const [f] = m.func('rowDots', [I32, I32, I32, I32, I32, I32, I32]);
  const [g, gPitch, o, oPitch, rows, n, dst] = [0, 1, 2, 3, 4, 5, 6];
  const [i, j, g1, o1, rowBytes] = f.locals(I32, 5) as [number, number, number, number, number];
  const sum = f.local(V128);
  f.get(n).i32(2).shl().set(rowBytes);
  /** Pushes (row 0's, row 1's) float at byte j of the rows at base / base + pitch, widened. */
  const two = (base: number, second: number) => {
    f.get(second).get(j).add();
    f.get(base).get(j).add();
    memOp(f, 0x09, 2); // v128.load32_splat
    memOp(f, 0x56, 2).op(1); // v128.load32_lane 1
    f.simd(op.promoteLow);
  };
  f.i32(0).set(i);
  whileLoop(
    f,
    () => f.get(i).get(rows).ltU(),
    () => {
      // the second row: the next one, or this one again when it is the last
      f.get(g).get(gPitch).add().get(g).get(i).i32(1).add().get(rows).ltU().select().set(g1);
      f.get(o).get(oPitch).add().get(o).get(i).i32(1).add().get(rows).ltU().select().set(o1);
      f.v128ConstI32(0, 0, 0, 0).set(sum);
      f.i32(0).set(j);
      whileLoop(
        f,
        () => f.get(j).get(rowBytes).ltU(),
        () => {
          f.get(sum);
          two(g, g1);
          two(o, o1);
          f.simd(op.f64x2Mul);
          f.simd(op.f64x2Add).set(sum);
          f.get(j).i32(4).add().set(j);
        },
      );
      f.get(dst).get(sum);
      store2(f, false); // row i
      f.get(i).i32(1).add().get(rows).ltU().if_();
      f.get(dst).i32(4).add().get(sum);
      f.simd(op.demoteZero);
      memOp(f, 0x5a, 2).op(1); // v128.store32_lane 1: row i + 1
      f.end();
      f.get(g).get(gPitch).i32(1).shl().add().set(g);
      f.get(o).get(oPitch).i32(1).shl().add().set(o);
      f.get(dst).i32(8).add().set(dst);
      f.get(i).i32(2).add().set(i);
    },
  );
}

/**
 * rotateRows(src, srcPitch, dst, dstPitch, rows, cos, sin, half, interleave, negate): per row s, pairs i <
 * half at floats (2i, 2i + 1) when interleave, else (i, i + half), rotated by cos / sin [rows, half]
 * (sin negated when negate): rope-attention-kernels.ts's rotate.
 */
function addRotateRows(m: ModuleBuilder): void {
  const [f] = m.func('rotateRows', [I32, I32, I32, I32, I32, I32, I32, I32, I32, I32]);
  const [src, srcPitch, dst, dstPitch, rows, cos, sin, half, interleave, negate] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9];
  const [i, a, other, step] = f.locals(I32, 4) as [number, number, number, number];
  const [signs, v] = f.locals(V128, 2) as [number, number];
  // (−s', s') = sin · (−1, 1), or · (1, −1) for s' = −sin: exact negations
  const bits = (x: number) => Array.from(new Int32Array(new Float64Array([x]).buffer));
  f.get(negate).if_();
  f.v128ConstI32(...([...bits(1), ...bits(-1)] as [number, number, number, number])).set(signs);
  f.else_();
  f.v128ConstI32(...([...bits(-1), ...bits(1)] as [number, number, number, number])).set(signs);
  f.end();
  // byte steps: to a pair's second float, from one pair to the next
  f.i32(4).get(half).i32(2).shl().get(interleave).select().set(other);
  f.i32(8).i32(4).get(interleave).select().set(step);
  whileLoop(
    f,
    () => f.get(rows),
    () => {
      f.i32(0).set(i);
      f.i32(0).set(a);
      whileLoop(
        f,
        () => f.get(i).get(half).ltU(),
        () => {
          // v = (a, o) widened
          f.get(src).get(a).add().get(other).add();
          f.get(src).get(a).add();
          memOp(f, 0x09, 2);
          memOp(f, 0x56, 2).op(1);
          f.simd(op.promoteLow).set(v);
          // v·c + (o, a)·(−s', s')
          f.get(v);
          f.get(cos).get(i).i32(2).shl().add();
          load2(f, false);
          f.simd(op.f64x2Mul);
          f.get(v).get(v).shuffle32(2, 3, 0, 1);
          f.get(sin).get(i).i32(2).shl().add();
          load2(f, false).get(signs);
          f.simd(op.f64x2Mul);
          f.simd(op.f64x2Mul);
          f.simd(op.f64x2Add);
          f.simd(op.demoteZero).set(v);
          f.get(dst).get(a).add().get(v);
          memOp(f, 0x5a, 2).op(0);
          f.get(dst).get(a).add().get(other).add().get(v);
          memOp(f, 0x5a, 2).op(1);
          f.get(a).get(step).add().set(a);
          f.get(i).i32(1).add().set(i);
        },
      );
      f.get(src).get(srcPitch).add().set(src);
      f.get(dst).get(dstPitch).add().set(dst);
      f.get(cos).get(half).i32(2).shl().add().set(cos);
      f.get(sin).get(half).i32(2).shl().add().set(sin);
      f.get(rows).i32(1).sub().set(rows);
    },
  );
}

/**
 * The GEMM engine's attention (row kernels) module: `exp` (vector-exp.ts), the row passes above, the
 * latent attention's (latent-rows-simd.ts), the gated passes (gated-simd.ts) and the MoE combine
 * (combine-rows-simd.ts), the optimizer step's (optimizer-rows-simd.ts), the elementwise + − × ÷ and
 * fills (arith-simd.ts) and RMSNorm's rows (rmsnorm-simd.ts), over
 * the engine's memory (shared when threaded, up to maximumPages).
 */
export function buildAttentionRowsModule(shared: boolean, maximumPages: number): Uint8Array<ArrayBuffer> {
  const m = new ModuleBuilder({ module: 'env', name: 'memory', initialPages: 1, maximumPages, shared });
  addExpFunction(m);
  addSoftmaxRows(m);
  addSoftmaxGradRows(m);
  addCopyRows(m);
  addRowDots(m);
  addRotateRows(m);
  addLatentRows(m);
  addGatedKernels(m);
  addCombineRows(m);
  addOptimizerRows(m);
  addGatherRows(m);
  addArithRows(m);
  addRmsnormRows(m);
  addScatterAddRows(m);
  addCombineBackwardRows(m);
  return m.emit();
}
