// The latent attention's row passes (gemm/latent-attention-task.ts) as WebAssembly SIMD kernels in
// attention-rows-simd.ts's module. They replace the task's JavaScript loops with the same f64
// operations in the same order (f32 values widened exactly, f64x2 lanes, no fused multiply-add in
// WebAssembly, f32 results rounded to nearest as a Float32Array store does, Math.exp's bits from
// vector-exp-f64.ts), so the task's outputs keep their bits:
//   scaleRows          dst = f32(src · scale) over n floats (dst may be src).
//   latentSoftmaxRows  one key tile's online-softmax step, row by row (below).
//   addRows            acc += o: f64 rows [rows, C] plus f32 rows of pitch ldo.
//   finishRows         out = f32(acc · (1 / l)) per row.
import { F64, type FuncBuilder, I32, type ModuleBuilder, V128, whileLoop } from './gemm/wasm-emitter.js';
import { f64Const, load2, memOp, op, pairs, store2, zeroTail } from './simd-rows-emit.js';
import { emitExpF64x2 } from './vector-exp-f64.js';

const i32LtS = 0x48;
const i32LeS = 0x4c;
const f64Load = (f: FuncBuilder) => {
  f.op(op.f64Load).code.u32(3).u32(0);
  return f;
};
const f64Store = (f: FuncBuilder) => {
  f.op(op.f64Store).code.u32(3).u32(0);
  return f;
};

/**
 * scaleRows(src, dst, n, scaleAt): n floats at byte address src times the f64 at scaleAt, rounded to
 * f32, written at dst (the same address: in place).
 */
function addScaleRows(m: ModuleBuilder): void {
  const [f] = m.func('scaleRows', [I32, I32, I32, I32]);
  const [src, dst, n, scaleAt] = [0, 1, 2, 3];
  const [j, end] = f.locals(I32, 2) as [number, number];
  const sc = f.local(V128);
  memOp(f.get(scaleAt), 0x0a, 3).set(sc); // v128.load64_splat
  pairs(f, n, j, end, (wide) => {
    f.get(dst).get(j).add();
    f.get(src).get(j).add();
    load2(f, wide).get(sc).simd(op.f64x2Mul);
    store2(f, wide);
  });
}

/**
 * latentSoftmaxRows(s1, s2, p, ld, n, rows, lim0, r0, H, m, l, acc, C): for row r < rows, with scores
 * s1 + s2 (f32 rows of pitch ld floats, n keys), probabilities p (rows of n floats), running maximum m
 * and sum l (f64 per row) and accumulator acc (f64 rows of C), the keys t <= lim = lim0 +
 * floor((r0 + r) / H) visible (vis = min(n, lim + 1) of them):
 *   vis <= 0: p row = 0, nothing else.
 *   mt = max over visible t of s1 + s2 in f64, NaN skipped (the JS loop's `if (v > mt) mt = v`);
 *   mn = m > mt ? m : mt; if m != −∞ and m != mn: α = e^(m − mn), l ·= α, acc row ·= α;
 *   p[t] = f32(e^(s1 + s2 − mn)), z = Σ e in t's order (f64), p[vis .. n) = 0; l += z; m = mn.
 */
function addLatentSoftmaxRows(mb: ModuleBuilder): void {
  const [f] = mb.func('latentSoftmaxRows', [I32, I32, I32, I32, I32, I32, I32, I32, I32, I32, I32, I32, I32]);
  const [s1, s2, p, ld, n, rows, lim0, r0, H, m, l, acc, C] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12];
  const [r, vis, j, end, a, b, pr, ar] = f.locals(I32, 8) as [
    number,
    number,
    number,
    number,
    number,
    number,
    number,
    number,
  ];
  const [v, mx, shift, e] = f.locals(V128, 4) as [number, number, number, number];
  const t = f.locals(V128, 7);
  const [mt, mo, mn, z] = f.locals(F64, 4) as [number, number, number, number];
  /** v = f64(s1) + f64(s2) at byte j of the row (a: s1's row, b: s2's). */
  const scores = (wide: boolean) => {
    f.get(a).get(j).add();
    load2(f, wide);
    f.get(b).get(j).add();
    load2(f, wide).simd(op.f64x2Add).set(v);
  };
  f.i32(0).set(r);
  whileLoop(
    f,
    () => f.get(r).get(rows).ltU(),
    () => {
      f.get(s1).get(r).get(ld).mul().i32(2).shl().add().set(a);
      f.get(s2).get(r).get(ld).mul().i32(2).shl().add().set(b);
      f.get(p).get(r).get(n).mul().i32(2).shl().add().set(pr);
      // vis = min(n, lim + 1), signed
      f.get(lim0).get(r0).get(r).add().get(H).divU().add().i32(1).add().set(vis);
      f.get(vis).get(n).get(vis).get(n).op(i32LtS).select().set(vis);
      f.get(vis).i32(0).op(i32LeS).if_();
      f.get(pr).i32(0).get(n).i32(2).shl().op(0xfc, 0x0b, 0x00); // memory.fill
      f.else_();
      // mt: per lane v > mx ? v : mx (NaN never wins), then the two lanes likewise
      f64Const(f, Number.NEGATIVE_INFINITY).simd(op.f64x2Splat).set(mx);
      pairs(f, vis, j, end, (wide) => {
        scores(wide);
        f.get(v).get(mx).get(v).get(mx).simd(op.f64x2Gt).simd(op.bitselect).set(mx);
      });
      f.get(mx).simd(op.f64x2Extract, 1).get(mx).simd(op.f64x2Extract, 0);
      f.get(mx).simd(op.f64x2Extract, 1).get(mx).simd(op.f64x2Extract, 0).op(op.f64Gt).select().set(mt);
      // mn; rescale l and the accumulator row when the maximum moved
      f.get(m).get(r).i32(3).shl().add().set(ar);
      f64Load(f.get(ar)).set(mo);
      f.get(mo).get(mt).get(mo).get(mt).op(op.f64Gt).select().set(mn);
      f.get(mo)
        .apply(() => f64Const(f, Number.NEGATIVE_INFINITY))
        .op(op.f64Ne);
      f.get(mo).get(mn).op(op.f64Ne).and().if_();
      f.get(mo).get(mn).op(op.f64Sub).simd(op.f64x2Splat).set(v);
      emitExpF64x2(f, v, t, e);
      f.get(l).get(r).i32(3).shl().add();
      f64Load(f.get(l).get(r).i32(3).shl().add());
      f.get(e).simd(op.f64x2Extract, 0).op(op.f64Mul);
      f64Store(f);
      f.get(acc).get(r).get(C).mul().i32(3).shl().add().set(ar);
      f.get(ar).get(C).i32(3).shl().add().set(end);
      whileLoop(
        f,
        () => f.get(ar).get(end).ltU(),
        () => {
          f.get(ar);
          f64Load(f.get(ar)).get(e).simd(op.f64x2Extract, 0).op(op.f64Mul);
          f64Store(f);
          f.get(ar).i32(8).add().set(ar);
        },
      );
      f.end();
      // p = f32(e^(s1 + s2 − mn)), z = Σ e in order
      f.get(mn).simd(op.f64x2Splat).set(shift);
      f64Const(f, 0).set(z);
      pairs(f, vis, j, end, (wide) => {
        scores(wide);
        f.get(v).get(shift).simd(op.f64x2Sub).set(v);
        emitExpF64x2(f, v, t, e);
        f.get(pr).get(j).add().get(e);
        store2(f, wide);
        f.get(z).get(e).simd(op.f64x2Extract, 0).op(op.f64Add).set(z);
        if (wide) f.get(z).get(e).simd(op.f64x2Extract, 1).op(op.f64Add).set(z);
      });
      zeroTail(f, pr, vis, n);
      // l += z; m = mn
      f.get(l).get(r).i32(3).shl().add();
      f64Load(f.get(l).get(r).i32(3).shl().add());
      f.get(z).op(op.f64Add);
      f64Store(f);
      f64Store(f.get(m).get(r).i32(3).shl().add().get(mn));
      f.end();
      f.get(r).i32(1).add().set(r);
    },
  );
}

/** addRows(acc, o, rows, C, ldo): acc[r·C + c] += f64(o[r·ldo + c]) (acc f64, o f32; addresses in bytes). */
function addAddRows(mb: ModuleBuilder): void {
  const [f] = mb.func('addRows', [I32, I32, I32, I32, I32]);
  const [acc, o, rows, C, ldo] = [0, 1, 2, 3, 4];
  const [r, j, end, ar, or] = f.locals(I32, 5) as [number, number, number, number, number];
  f.i32(0).set(r);
  whileLoop(
    f,
    () => f.get(r).get(rows).ltU(),
    () => {
      f.get(acc).get(r).get(C).mul().i32(3).shl().add().set(ar);
      f.get(o).get(r).get(ldo).mul().i32(2).shl().add().set(or);
      pairs(f, C, j, end, (wide) => {
        // acc's byte offset is twice o's
        f.get(ar).get(j).i32(1).shl().add();
        f.get(ar).get(j).i32(1).shl().add();
        if (wide) f.v128Load();
        else f64Load(f).simd(op.f64x2Splat);
        f.get(or).get(j).add();
        load2(f, wide).simd(op.f64x2Add);
        if (wide) f.v128Store();
        else f64Store(f.simd(op.f64x2Extract, 0));
      });
      f.get(r).i32(1).add().set(r);
    },
  );
}

/** finishRows(out, acc, l, rows, C): out[r·C + c] = f32(acc[r·C + c] · (1 / l[r])) (out f32, acc and l f64). */
function addFinishRows(mb: ModuleBuilder): void {
  const [f] = mb.func('finishRows', [I32, I32, I32, I32, I32]);
  const [out, acc, l, rows, C] = [0, 1, 2, 3, 4];
  const [r, j, end, ar, or] = f.locals(I32, 5) as [number, number, number, number, number];
  const inv = f.local(V128);
  f.i32(0).set(r);
  whileLoop(
    f,
    () => f.get(r).get(rows).ltU(),
    () => {
      f64Const(f, 1);
      f64Load(f.get(l).get(r).i32(3).shl().add()).op(op.f64Div).simd(op.f64x2Splat).set(inv);
      f.get(acc).get(r).get(C).mul().i32(3).shl().add().set(ar);
      f.get(out).get(r).get(C).mul().i32(2).shl().add().set(or);
      pairs(f, C, j, end, (wide) => {
        f.get(or).get(j).add();
        f.get(ar).get(j).i32(1).shl().add();
        if (wide) f.v128Load();
        else f64Load(f).simd(op.f64x2Splat);
        f.get(inv).simd(op.f64x2Mul);
        store2(f, wide);
      });
      f.get(r).i32(1).add().set(r);
    },
  );
}

/** Adds scaleRows, latentSoftmaxRows, addRows and finishRows to the attention rows module. */
export function addLatentRows(m: ModuleBuilder): void {
  addScaleRows(m);
  addLatentSoftmaxRows(m);
  addAddRows(m);
  addFinishRows(m);
}
