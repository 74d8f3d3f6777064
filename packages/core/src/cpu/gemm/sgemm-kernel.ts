// Generates the SIMD128 GEMM module (Goto/BLIS structure):
//   gemm  : jc (NC cols) > pc (KC depth, pack B~) > ic (MC rows, pack A~) > macro
//   macro : jr (NR-wide B~ micro-panel, stays in L1) > ir (MR-tall A~ micro-panel) > micro-kernel
//   micro : MR x NR tile held in MR*NR/4 f32x4 accumulators; per k step: NR/4 vector loads of B~,
//           MR broadcast loads of A~, f32x4.mul + f32x4.add (no FMA in baseline SIMD128).
// All pointers and strides are in bytes. C's row pitch must hold whole NR-column tiles (the caller
// pads it to NR); rows need no padding (a last partial row panel stores only its rows); packing
// zero-fills ragged panels, so edge tiles need no special case in the hot loop.
// Kept in one file (past ~500 lines) on purpose: the emitter's loop nest reads top to bottom as the
// kernel it emits, and splitting it would separate each loop from the registers it allocates.
import { genGemv } from './gemv-kernel.js';
import { NATIVE_IMPORTS } from './native-kernels.js';
import { genWeightGemm } from './weight-gemm-kernel.js';
import {
  addConst,
  addLocal,
  type FuncBuilder,
  I32,
  minRemaining,
  ModuleBuilder,
  V128,
  whileLoop,
} from './wasm-emitter.js';
import { setV8Flags } from '../v8-flags.js';

export interface KernelConfig {
  mr: number; // micro-tile rows (any >= 1)
  nr: number; // micro-tile cols (multiple of 4)
  kc: number; // depth block
  mc: number; // row block (multiple of mr)
  nc: number; // col block (multiple of nr)
}

// 4x8: one k step needs 8 accumulators + 2 B vectors + 4 A broadcasts + 1 product = 15 xmm
// registers, exactly what V8 allocates on x64 (checked with --print-wasm-code); larger tiles spill.
// This kernel runs at the measured 128-bit mul+add peak of one core (~45 GFLOP/s here); KC from
// 256 to 1024 and MC/NC made no measurable difference (compute-bound), so the blocks are modest.
export const DEFAULT_KERNEL: KernelConfig = { mr: 4, nr: 8, kc: 256, mc: 128, nc: 2048 };

/** Bytes of per-thread scratch: packed A block followed by packed B block. */
export function workspaceBytes(cfg: KernelConfig): number {
  return (cfg.mc * cfg.kc + cfg.kc * cfg.nc) * 4;
}

/**
 * pack(src, rs, cs, count, kc, dst): element (r, p) lives at src + r*rs + p*cs; writes
 * ceil(count/R) panels, each kc rows of R floats (dst[panel][p][r]), zero-filling rows >= count.
 */
function genPack(mb: ModuleBuilder, name: string, R: number): number {
  const [f, idx] = mb.func(name, [I32, I32, I32, I32, I32, I32]);
  const [src, rs, cs, count, kc, dst] = [0, 1, 2, 3, 4, 5];
  const r0 = f.local(I32);
  const p = f.local(I32);
  const s = f.locals(I32, 4);
  const d = f.local(I32);
  const r = f.local(I32);
  const valid = f.local(I32);
  const v = f.locals(V128, 4);
  const t = f.locals(V128, 4);
  const rowBytes = R * 4;
  const s0 = s[0] as number;

  const scalarPanel = (): void => {
    // valid = min(R, count - r0)
    minRemaining(f, valid, R, count, r0);
    f.i32(0).set(r);
    whileLoop(
      f,
      () => f.get(r).i32(R).ltU(),
      () => {
        f.get(dst).get(r).i32(4).mul().add().set(d);
        f.i32(0).set(p);
        f.get(r).get(valid).ltU().if_();
        f.get(src).get(r0).get(r).add().get(rs).mul().add().set(s0);
        whileLoop(
          f,
          () => f.get(p).get(kc).ltU(),
          () => {
            f.get(d).get(s0).f32Load().f32Store();
            addLocal(f, s0, cs);
            addConst(f, d, rowBytes);
            addConst(f, p, 1);
          },
        );
        f.else_();
        whileLoop(
          f,
          () => f.get(p).get(kc).ltU(),
          () => {
            f.get(d).f32c(0).f32Store();
            addConst(f, d, rowBytes);
            addConst(f, p, 1);
          },
        );
        f.end();
        addConst(f, r, 1);
      },
    );
  };

  // Rows contiguous along p: 4x4 transposes via shuffles (A row-major, or B transposed).
  const transposePanel = (): void => {
    for (let g = 0; g < R / 4; g++) {
      f.get(src)
        .get(r0)
        .i32(4 * g)
        .add()
        .get(rs)
        .mul()
        .add()
        .set(s0);
      for (let i = 1; i < 4; i++)
        f.get(s[i - 1] as number)
          .get(rs)
          .add()
          .set(s[i] as number);
      f.get(dst)
        .i32(16 * g)
        .add()
        .set(d);
      f.i32(0).set(p);
      whileLoop(
        f,
        () => f.get(p).i32(4).add().get(kc).leU(),
        () => {
          for (let i = 0; i < 4; i++)
            f.get(s[i] as number)
              .v128Load()
              .set(v[i] as number);
          const [v0, v1, v2, v3] = v as [number, number, number, number];
          const [t0, t1, t2, t3] = t as [number, number, number, number];
          f.get(v0).get(v1).shuffle32(0, 4, 1, 5).set(t0);
          f.get(v2).get(v3).shuffle32(0, 4, 1, 5).set(t1);
          f.get(v0).get(v1).shuffle32(2, 6, 3, 7).set(t2);
          f.get(v2).get(v3).shuffle32(2, 6, 3, 7).set(t3);
          f.get(d).get(t0).get(t1).shuffle32(0, 1, 4, 5).v128Store(0);
          f.get(d).get(t0).get(t1).shuffle32(2, 3, 6, 7).v128Store(rowBytes);
          f.get(d)
            .get(t2)
            .get(t3)
            .shuffle32(0, 1, 4, 5)
            .v128Store(2 * rowBytes);
          f.get(d)
            .get(t2)
            .get(t3)
            .shuffle32(2, 3, 6, 7)
            .v128Store(3 * rowBytes);
          for (let i = 0; i < 4; i++) addConst(f, s[i] as number, 16);
          addConst(f, d, 4 * rowBytes);
          addConst(f, p, 4);
        },
      );
      whileLoop(
        f,
        () => f.get(p).get(kc).ltU(),
        () => {
          for (let i = 0; i < 4; i++)
            f.get(d)
              .get(s[i] as number)
              .f32Load()
              .f32Store(4 * i);
          for (let i = 0; i < 4; i++) addConst(f, s[i] as number, 4);
          addConst(f, d, rowBytes);
          addConst(f, p, 1);
        },
      );
    }
  };

  // Panel rows contiguous in memory (A transposed, or B row-major): plain vector copies.
  const copyPanel = (): void => {
    f.get(src).get(r0).i32(4).mul().add().set(s0);
    f.get(dst).set(d);
    f.i32(0).set(p);
    whileLoop(
      f,
      () => f.get(p).get(kc).ltU(),
      () => {
        for (let i = 0; i < R / 4; i++)
          f.get(d)
            .get(s0)
            .v128Load(16 * i)
            .v128Store(16 * i);
        addLocal(f, s0, cs);
        addConst(f, d, rowBytes);
        addConst(f, p, 1);
      },
    );
  };

  f.i32(0).set(r0);
  whileLoop(
    f,
    () => f.get(r0).get(count).ltU(),
    () => {
      if (R % 4 === 0) {
        f.get(count).get(r0).sub().i32(R).geU().if_();
        f.get(cs).i32(4).eq().if_();
        transposePanel();
        f.else_();
        f.get(rs).i32(4).eq().if_();
        copyPanel();
        f.else_();
        scalarPanel();
        f.end().end();
        f.else_();
        scalarPanel();
        f.end();
      } else {
        scalarPanel();
      }
      f.get(dst).get(kc).i32(rowBytes).mul().add().set(dst);
      addConst(f, r0, R);
    },
  );
  return idx;
}

/**
 * macro(mc, nc, kc, pa, pb, c, ldc, accumulate): C tile block (+)= A~ B~. Row panels of MR; when mc is
 * not a multiple of MR the last panel runs a tile of just its rows (A~ is still MR wide, zero-padded),
 * so no multiply-adds go to padding rows and C's rows past mc are not written. Every output element
 * gets the same operations in the same order whichever tile computes it, so the results are the same.
 */
function genMacro(mb: ModuleBuilder, cfg: KernelConfig): number {
  if (mb.imports.includes(NATIVE_IMPORTS.f32Macro)) return genNativeMacro(mb);
  const { mr: MR, nr: NR } = cfg;
  const NV = NR / 4;
  const [f, idx] = mb.func('macro', [I32, I32, I32, I32, I32, I32, I32, I32]);
  const [mc, nc, kc, pa, pb, c, ldc, accum] = [0, 1, 2, 3, 4, 5, 6, 7];
  const j = f.local(I32);
  const i = f.local(I32);
  const pbj = f.local(I32);
  const cj = f.local(I32);
  const pai = f.local(I32);
  const cij = f.local(I32);
  const ka = f.local(I32);
  const kb = f.local(I32);
  const kaEnd = f.local(I32);
  const kaLast = f.local(I32);
  const cr = f.local(I32);
  const acc = Array.from({ length: MR }, () => f.locals(V128, NV));
  const b = f.locals(V128, NV);
  const av = f.local(V128);
  const accAt = (r: number, v: number): number => (acc[r] as number[])[v] as number;

  /** One k step of a tile of `rows` rows (A~ panels stay MR wide). */
  const step = (u: number, rows: number): void => {
    for (let v = 0; v < NV; v++)
      f.get(kb)
        .v128Load((u * NR + 4 * v) * 4)
        .set(b[v] as number);
    for (let r = 0; r < rows; r++) {
      f.get(ka)
        .load32Splat((u * MR + r) * 4)
        .set(av);
      for (let v = 0; v < NV; v++) {
        f.get(accAt(r, v))
          .get(av)
          .get(b[v] as number)
          .f32x4Mul()
          .f32x4Add()
          .set(accAt(r, v));
      }
    }
  };

  /** The rows x NR tile at A~ panel pai and C at cij: acc = Σ_k A~ B~, then C (+)= acc. */
  const tile = (rows: number): void => {
    for (let r = 0; r < rows; r++) for (let v = 0; v < NV; v++) f.v128Zero().set(accAt(r, v));
    f.get(pai).set(ka);
    f.get(pbj).set(kb);
    // k loop, two steps per trip with the exit test between them (kc >= 1). The branch in the
    // middle also stops TurboFan from hoisting the second step's loads above the first step's
    // arithmetic, which would need more than the 15 xmm registers it allocates (spills).
    f.get(ka)
      .get(kc)
      .i32(MR * 4)
      .mul()
      .add()
      .set(kaEnd);
    f.get(kaEnd)
      .i32(MR * 4)
      .sub()
      .set(kaLast);
    f.block().loop();
    step(0, rows);
    f.get(ka).get(kaLast).eq().brIf(1);
    step(1, rows);
    addConst(f, ka, 2 * MR * 4);
    addConst(f, kb, 2 * NR * 4);
    f.get(ka).get(kaEnd).ne().brIf(0);
    f.end().end();
    f.get(cij).set(cr);
    for (let r = 0; r < rows; r++) {
      f.get(accum).if_();
      for (let v = 0; v < NV; v++) {
        f.get(accAt(r, v))
          .get(cr)
          .v128Load(16 * v)
          .f32x4Add()
          .set(accAt(r, v));
      }
      f.end();
      for (let v = 0; v < NV; v++)
        f.get(cr)
          .get(accAt(r, v))
          .v128Store(16 * v);
      addLocal(f, cr, ldc);
    }
  };

  f.i32(0).set(j);
  f.get(pb).set(pbj);
  f.get(c).set(cj);
  whileLoop(
    f,
    () => f.get(j).get(nc).ltU(),
    () => {
      f.i32(0).set(i);
      f.get(pa).set(pai);
      f.get(cj).set(cij);
      whileLoop(
        f,
        () => f.get(i).i32(MR).add().get(mc).leU(),
        () => {
          tile(MR);
          addConst(f, i, MR);
          f.get(pai)
            .get(kc)
            .i32(MR * 4)
            .mul()
            .add()
            .set(pai);
          f.get(cij).get(ldc).i32(MR).mul().add().set(cij);
        },
      );
      // The last, partial row panel: a tile of mc - i rows.
      for (let rows = 1; rows < MR; rows++) {
        f.get(mc).get(i).sub().i32(rows).eq().if_();
        tile(rows);
        f.end();
      }
      addConst(f, j, NR);
      f.get(pbj)
        .get(kc)
        .i32(NR * 4)
        .mul()
        .add()
        .set(pbj);
      addConst(f, cj, NR * 4);
    },
  );
  return idx;
}

/**
 * The macro-kernel as a call to the native one (native/f32-macro.cc: the same tiles' arithmetic at
 * AVX-512 width, so the same bits), passing the memory's current size in pages for its bounds checks.
 */
function genNativeMacro(mb: ModuleBuilder): number {
  const [f, idx] = mb.func('macro', Array<typeof I32>(8).fill(I32));
  for (let i = 0; i < 8; i++) f.get(i);
  f.memorySize().call(mb.importIndex(NATIVE_IMPORTS.f32Macro.name));
  return idx;
}

type Locals14 = [
  number,
  number,
  number,
  number,
  number,
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

/** The locals of a driver's Goto/BLIS loop nest (C[m0:m1, n0:n1] += A[m0:m1, :] · B~ over depth blocks). */
export interface BlockedLoopLocals {
  m0: number;
  m1: number;
  n0: number;
  n1: number;
  k: number;
  /** A at a, element (i, p) at a + i*rsA + p*csA (bytes). */
  a: number;
  rsA: number;
  csA: number;
  c: number;
  ldc: number;
  ws: number;
}

/**
 * Emits the drivers' loop nest: for each NC column block jc and KC depth block pc, `packB` packs B~
 * into ws's B area (it gets the locals jc, pc, nc, kc and wsB), then for each MC row block A~ is packed
 * into ws and the macro-kernel adds the block's product into C (overwriting it on the first depth block).
 */
export function emitBlockedLoops(
  f: FuncBuilder,
  cfg: KernelConfig,
  l: BlockedLoopLocals,
  packA: number,
  macro: number,
  packB: (b: { jc: number; pc: number; nc: number; kc: number; wsB: number }) => void,
): void {
  const { m0, m1, n0, n1, k, a, rsA, csA, c, ldc, ws } = l;
  const jc = f.local(I32);
  const pc = f.local(I32);
  const ic = f.local(I32);
  const nc = f.local(I32);
  const kc = f.local(I32);
  const mc = f.local(I32);
  const wsB = f.local(I32);
  f.get(ws)
    .i32(cfg.mc * cfg.kc * 4)
    .add()
    .set(wsB);
  f.get(n0).set(jc);
  whileLoop(
    f,
    () => f.get(jc).get(n1).ltU(),
    () => {
      minRemaining(f, nc, cfg.nc, n1, jc);
      f.i32(0).set(pc);
      whileLoop(
        f,
        () => f.get(pc).get(k).ltU(),
        () => {
          minRemaining(f, kc, cfg.kc, k, pc);
          packB({ jc, pc, nc, kc, wsB });
          f.get(m0).set(ic);
          whileLoop(
            f,
            () => f.get(ic).get(m1).ltU(),
            () => {
              minRemaining(f, mc, cfg.mc, m1, ic);
              f.get(a).get(ic).get(rsA).mul().add().get(pc).get(csA).mul().add();
              f.get(rsA).get(csA).get(mc).get(kc).get(ws).call(packA);
              f.get(mc).get(nc).get(kc).get(ws).get(wsB);
              f.get(c).get(ic).get(ldc).mul().add().get(jc).i32(4).mul().add();
              f.get(ldc).get(pc).i32(0).ne().call(macro);
              addConst(f, ic, cfg.mc);
            },
          );
          addConst(f, pc, cfg.kc);
        },
      );
      addConst(f, jc, cfg.nc);
    },
  );
}

/**
 * gemm(m0, m1, n0, n1, k, a, rsA, csA, b, rsB, csB, c, ldc, ws): C[m0:m1, n0:n1] = A[m0:m1, :] B[:, n0:n1],
 * packing B~ blocks itself into ws (single-threaded path).
 */
function genDriver(mb: ModuleBuilder, cfg: KernelConfig, packA: number, packB: number, macro: number): void {
  const [f] = mb.func('gemm', Array<typeof I32>(14).fill(I32));
  const [m0, m1, n0, n1, k, a, rsA, csA, b, rsB, csB, c, ldc, ws] = Array.from({ length: 14 }, (_, x) => x) as Locals14;
  emitBlockedLoops(f, cfg, { m0, m1, n0, n1, k, a, rsA, csA, c, ldc, ws }, packA, macro, ({ jc, pc, nc, kc, wsB }) => {
    // B~: r = column (stride csB), p = depth (stride rsB).
    f.get(b).get(pc).get(rsB).mul().add().get(jc).get(csB).mul().add();
    f.get(csB).get(rsB).get(nc).get(kc).get(wsB).call(packB);
  });
}

// Threaded path: B is packed once for the whole product (in parallel, by column ranges) into a
// "pre-packed" layout: depth block pc (kc deep) starts at pb + pc*ldp (ldp = padded n * 4 bytes)
// and holds NR-wide panels, the one for column j at + j*kc*4. Row-stripe tasks then share it.

/** packBAll(b, rsB, csB, k, n0, n1, pb, ldp): pre-packs columns [n0, n1) (n0 a multiple of NR). */
function genPackAll(mb: ModuleBuilder, cfg: KernelConfig, packB: number): void {
  const [f] = mb.func('packBAll', Array<typeof I32>(8).fill(I32));
  const [b, rsB, csB, k, n0, n1, pb, ldp] = [0, 1, 2, 3, 4, 5, 6, 7];
  const pc = f.local(I32);
  const kc = f.local(I32);
  f.i32(0).set(pc);
  whileLoop(
    f,
    () => f.get(pc).get(k).ltU(),
    () => {
      minRemaining(f, kc, cfg.kc, k, pc);
      f.get(b).get(pc).get(rsB).mul().add().get(n0).get(csB).mul().add();
      f.get(csB).get(rsB).get(n1).get(n0).sub().get(kc);
      f.get(pb).get(pc).get(ldp).mul().add().get(n0).get(kc).mul().i32(4).mul().add();
      f.call(packB);
      addConst(f, pc, cfg.kc);
    },
  );
}

/** gemmPacked(m0, m1, n0, n1, k, a, rsA, csA, pb, ldp, c, ldc, ws): like gemm, B pre-packed. */
function genPackedDriver(mb: ModuleBuilder, cfg: KernelConfig, packA: number, macro: number): void {
  const [f] = mb.func('gemmPacked', Array<typeof I32>(13).fill(I32));
  const [m0, m1, n0, n1, k, a, rsA, csA, pb, ldp, c, ldc, ws] = Array.from({ length: 13 }, (_, x) => x) as Locals14;
  const jc = f.local(I32);
  const pc = f.local(I32);
  const ic = f.local(I32);
  const nc = f.local(I32);
  const kc = f.local(I32);
  const mc = f.local(I32);
  f.get(n0).set(jc);
  whileLoop(
    f,
    () => f.get(jc).get(n1).ltU(),
    () => {
      minRemaining(f, nc, cfg.nc, n1, jc);
      f.i32(0).set(pc);
      whileLoop(
        f,
        () => f.get(pc).get(k).ltU(),
        () => {
          minRemaining(f, kc, cfg.kc, k, pc);
          f.get(m0).set(ic);
          whileLoop(
            f,
            () => f.get(ic).get(m1).ltU(),
            () => {
              minRemaining(f, mc, cfg.mc, m1, ic);
              f.get(a).get(ic).get(rsA).mul().add().get(pc).get(csA).mul().add();
              f.get(rsA).get(csA).get(mc).get(kc).get(ws).call(packA);
              f.get(mc).get(nc).get(kc).get(ws);
              f.get(pb).get(pc).get(ldp).mul().add().get(jc).get(kc).mul().i32(4).mul().add();
              f.get(c).get(ic).get(ldc).mul().add().get(jc).i32(4).mul().add();
              f.get(ldc).get(pc).i32(0).ne().call(macro);
              addConst(f, ic, cfg.mc);
            },
          );
          addConst(f, pc, cfg.kc);
        },
      );
      addConst(f, jc, cfg.nc);
    },
  );
}

/** Whether a kernel config has the packed layouts the native kernels read (4-row A~, 8-column B~ panels). */
export const takesNativeKernels = (cfg: KernelConfig): boolean => cfg.mr === 4 && cfg.nr === 8;

/**
 * Builds the module; `shared` selects a shared (threadable) imported memory, `relaxed` the
 * relaxed-SIMD multiply-add in the GEMV kernels, `native` the native kernels (native-kernels.ts's
 * NATIVE_IMPORTS) called in place of the wasm loops they replace (the default 4 x 8 tile's layouts only).
 */
export function buildSgemmModule(
  cfg: KernelConfig,
  shared: boolean,
  maximumPages: number,
  relaxed = false,
  native = false,
): Uint8Array<ArrayBuffer> {
  if (cfg.nr % 4 !== 0 || cfg.mc % cfg.mr !== 0 || cfg.nc % cfg.nr !== 0) throw new Error('bad kernel config');
  if (native && !takesNativeKernels(cfg)) throw new Error('native kernels: the 4 x 8 tile only');
  const imports = native ? Object.values(NATIVE_IMPORTS) : [];
  const mb = new ModuleBuilder({ module: 'env', name: 'memory', initialPages: 1, maximumPages, shared }, imports);
  const packA = genPack(mb, 'packA', cfg.mr);
  const packB = genPack(mb, 'packB', cfg.nr);
  const macro = genMacro(mb, cfg);
  genDriver(mb, cfg, packA, packB, macro);
  genPackAll(mb, cfg, packB);
  genPackedDriver(mb, cfg, packA, macro);
  genGemv(mb, 'f32', relaxed);
  genGemv(mb, 'bf16', relaxed);
  genGemv(mb, 'fp8', relaxed);
  genWeightGemm(mb, cfg, packA, macro);
  return mb.emit();
}

/** A module using one SIMD instruction: validates iff the engine supports SIMD128. */
export function simdProbe(): Uint8Array<ArrayBuffer> {
  const mb = new ModuleBuilder(null);
  const [f] = mb.func('probe', []);
  f.f32c(1).f32x4Splat().drop();
  return mb.emit();
}

/**
 * Behavioural probe for relaxed SIMD: a module whose function returns relaxed_madd(2, 3, 1)'s lane 0
 * must validate, instantiate and return 7.
 */
export function relaxedSimdWorks(): boolean {
  try {
    const mb = new ModuleBuilder(null);
    const [f] = mb.func('probe', [], [0x7d]);
    f.f32c(2).f32x4Splat().f32c(3).f32x4Splat().f32c(1).f32x4Splat().f32x4RelaxedMadd().f32x4ExtractLane(0);
    const bytes = mb.emit();
    if (!WebAssembly.validate(bytes)) return false;
    const inst = new WebAssembly.Instance(new WebAssembly.Module(bytes));
    return (inst.exports.probe as () => number)() === 7;
  } catch {
    return false;
  }
}

let relaxedEnabled: boolean | undefined;

/**
 * Relaxed SIMD where the runtime has it, switched on where it is only behind a flag: Node 20's V8
 * (11.3) implements the standardised relaxed-SIMD proposal but gates it behind
 * `--experimental-wasm-relaxed-simd` (on by default from V8 11.4), and a wasm feature flag set before
 * a module is compiled applies to it and to the worker threads that receive it. Its multiply-add cuts
 * the GEMV's instructions per weight by a third; the behavioural probe decides either way.
 */
export function enableRelaxedSimd(): boolean {
  if (relaxedEnabled !== undefined) return relaxedEnabled;
  relaxedEnabled = relaxedSimdWorks();
  if (relaxedEnabled || !setV8Flags('--experimental-wasm-relaxed-simd')) return relaxedEnabled;
  relaxedEnabled = relaxedSimdWorks();
  return relaxedEnabled;
}
