// A tiny WebAssembly binary emitter: just enough of the format (types, one imported memory, imported
// functions, functions, exports, MVP + SIMD128 opcodes) to generate the GEMM kernels at run time, so the
// package ships no opaque binary and needs no external assembler.

export const I32 = 0x7f;
export const F32 = 0x7d;
export const F64 = 0x7c;
export const V128 = 0x7b;
export type ValType = typeof I32 | typeof F32 | typeof F64 | typeof V128;

/** Growable byte sink with the LEB128 encodings the format uses. */
export class ByteWriter {
  readonly bytes: number[] = [];

  byte(b: number): this {
    this.bytes.push(b & 0xff);
    return this;
  }

  raw(bs: ArrayLike<number>): this {
    for (let i = 0; i < bs.length; i++) this.bytes.push((bs[i] as number) & 0xff);
    return this;
  }

  u32(v: number): this {
    let x = v >>> 0;
    do {
      let b = x & 0x7f;
      x >>>= 7;
      if (x !== 0) b |= 0x80;
      this.bytes.push(b);
    } while (x !== 0);
    return this;
  }

  s32(v: number): this {
    let x = v | 0;
    for (;;) {
      const b = x & 0x7f;
      x >>= 7;
      const done = (x === 0 && (b & 0x40) === 0) || (x === -1 && (b & 0x40) !== 0);
      this.bytes.push(done ? b : b | 0x80);
      if (done) return this;
    }
  }

  f32(v: number): this {
    const buf = new Uint8Array(new Float32Array([v]).buffer);
    return this.raw(buf);
  }

  name(s: string): this {
    const enc = new TextEncoder().encode(s);
    return this.u32(enc.length).raw(enc);
  }

  /** Length-prefixed nested content (sections, function bodies). */
  sized(w: ByteWriter): this {
    return this.u32(w.bytes.length).raw(w.bytes);
  }
}

/**
 * Function body builder. Locals are numbered params first, then declared locals, as in the
 * binary format. Instruction helpers are named after the wasm text format.
 */
export class FuncBuilder {
  readonly code = new ByteWriter();
  private readonly extra: ValType[] = [];

  constructor(
    readonly name: string,
    readonly params: readonly ValType[],
    readonly results: readonly ValType[],
  ) {}

  local(t: ValType): number {
    this.extra.push(t);
    return this.params.length + this.extra.length - 1;
  }

  locals(t: ValType, n: number): number[] {
    return Array.from({ length: n }, () => this.local(t));
  }

  /** Serialised body: local declarations (run-length grouped) + code + end. */
  body(): ByteWriter {
    const w = new ByteWriter();
    const groups: [number, ValType][] = [];
    for (const t of this.extra) {
      const last = groups[groups.length - 1];
      if (last && last[1] === t) last[0]++;
      else groups.push([1, t]);
    }
    w.u32(groups.length);
    for (const [n, t] of groups) w.u32(n).byte(t);
    w.raw(this.code.bytes).byte(0x0b);
    return w;
  }

  /** Emits a helper's code in place (keeps builder chains readable). */
  apply(emit: () => void): this {
    emit();
    return this;
  }

  op(...bs: number[]): this {
    this.code.raw(bs);
    return this;
  }

  // --- control ---
  block(): this {
    return this.op(0x02, 0x40);
  }
  loop(): this {
    return this.op(0x03, 0x40);
  }
  if_(): this {
    return this.op(0x04, 0x40);
  }
  else_(): this {
    return this.op(0x05);
  }
  end(): this {
    return this.op(0x0b);
  }
  br(depth: number): this {
    this.op(0x0c);
    this.code.u32(depth);
    return this;
  }
  brIf(depth: number): this {
    this.op(0x0d);
    this.code.u32(depth);
    return this;
  }
  /** memory.size: the memory's current size in 64 KiB pages. */
  memorySize(): this {
    return this.op(0x3f, 0x00);
  }
  call(fn: number): this {
    this.op(0x10);
    this.code.u32(fn);
    return this;
  }
  drop(): this {
    return this.op(0x1a);
  }
  select(): this {
    return this.op(0x1b);
  }

  // --- locals / constants ---
  get(i: number): this {
    this.op(0x20);
    this.code.u32(i);
    return this;
  }
  set(i: number): this {
    this.op(0x21);
    this.code.u32(i);
    return this;
  }
  tee(i: number): this {
    this.op(0x22);
    this.code.u32(i);
    return this;
  }
  i32(v: number): this {
    this.op(0x41);
    this.code.s32(v);
    return this;
  }
  f32c(v: number): this {
    this.op(0x43);
    this.code.f32(v);
    return this;
  }

  // --- i32 arithmetic / comparison ---
  add(): this {
    return this.op(0x6a);
  }
  sub(): this {
    return this.op(0x6b);
  }
  mul(): this {
    return this.op(0x6c);
  }
  divU(): this {
    return this.op(0x6e);
  }
  remU(): this {
    return this.op(0x70);
  }
  shl(): this {
    return this.op(0x74);
  }
  eqz(): this {
    return this.op(0x45);
  }
  eq(): this {
    return this.op(0x46);
  }
  ne(): this {
    return this.op(0x47);
  }
  gtS(): this {
    return this.op(0x4a);
  }
  ltU(): this {
    return this.op(0x49);
  }
  gtU(): this {
    return this.op(0x4b);
  }
  leU(): this {
    return this.op(0x4d);
  }
  geU(): this {
    return this.op(0x4f);
  }

  // --- memory (offset is a byte offset folded into the instruction) ---
  private memarg(align: number, offset: number): this {
    this.code.u32(align).u32(offset);
    return this;
  }
  i32Load(offset = 0): this {
    return this.op(0x28).memarg(2, offset);
  }
  f32Load(offset = 0): this {
    return this.op(0x2a).memarg(2, offset);
  }
  f32Store(offset = 0): this {
    return this.op(0x38).memarg(2, offset);
  }
  i32Load16U(offset = 0): this {
    return this.op(0x2f).memarg(1, offset);
  }
  i32Load8U(offset = 0): this {
    return this.op(0x2d).memarg(0, offset);
  }
  i32Load8S(offset = 0): this {
    return this.op(0x2c).memarg(0, offset);
  }
  i32Store(offset = 0): this {
    return this.op(0x36).memarg(2, offset);
  }
  i32Store16(offset = 0): this {
    return this.op(0x3b).memarg(1, offset);
  }

  // --- f32 scalar ---
  f32Add(): this {
    return this.op(0x92);
  }
  f32Mul(): this {
    return this.op(0x94);
  }
  f32ReinterpretI32(): this {
    return this.op(0xbe);
  }
  i32ReinterpretF32(): this {
    return this.op(0xbc);
  }
  f32Sub(): this {
    return this.op(0x93);
  }
  f32Div(): this {
    return this.op(0x95);
  }
  f32Abs(): this {
    return this.op(0x8b);
  }
  /** f32.max: NaN if either operand is NaN. */
  f32Max(): this {
    return this.op(0x97);
  }
  f32Eq(): this {
    return this.op(0x5b);
  }
  f32Gt(): this {
    return this.op(0x5e);
  }
  shrS(): this {
    return this.op(0x75);
  }
  ltS(): this {
    return this.op(0x48);
  }
  and(): this {
    return this.op(0x71);
  }
  or(): this {
    return this.op(0x72);
  }
  shrU(): this {
    return this.op(0x76);
  }
  f32ConvertI32U(): this {
    return this.op(0xb3);
  }

  // --- SIMD128 (0xfd prefix, LEB opcode) ---
  /** Any SIMD128 instruction by opcode, with its immediate bytes (e.g. a lane index). */
  simd(o: number, ...imm: number[]): this {
    this.op(0xfd);
    this.code.u32(o);
    return this.op(...imm);
  }
  v128Load(offset = 0): this {
    return this.simd(0x00).memarg(4, offset);
  }
  v128Store(offset = 0): this {
    return this.simd(0x0b).memarg(4, offset);
  }
  load32Splat(offset = 0): this {
    return this.simd(0x09).memarg(2, offset);
  }
  /** v128.load8x8_s: 8 bytes, each sign-extended to an i16 lane. */
  load8x8S(offset = 0): this {
    return this.simd(0x01).memarg(3, offset);
  }
  /** v128.load16x4_u: 4 u16, each zero-extended to an i32 lane. */
  load16x4U(offset = 0): this {
    return this.simd(0x04).memarg(3, offset);
  }
  /** v128.load32_zero: 4 bytes into lane 0, the rest zero. */
  load32Zero(offset = 0): this {
    return this.simd(0x5c).memarg(2, offset);
  }
  i16x8Splat(): this {
    return this.simd(0x10);
  }
  v128Zero(): this {
    this.simd(0x0c);
    this.code.raw(new Uint8Array(16));
    return this;
  }
  /** i8x16.shuffle expressed on f32 lanes: lanes 0-3 pick from the first operand, 4-7 from the second. */
  shuffle32(l0: number, l1: number, l2: number, l3: number): this {
    this.simd(0x0d);
    for (const l of [l0, l1, l2, l3]) for (let b = 0; b < 4; b++) this.code.byte(l * 4 + b);
    return this;
  }
  /** i8x16.shuffle expressed on 16-bit lanes: lanes 0-7 pick from the first operand, 8-15 from the second. */
  shuffle16(...lanes: readonly number[]): this {
    if (lanes.length !== 8) throw new Error(`shuffle16: expected 8 lanes, got ${lanes.length}`);
    this.simd(0x0d);
    for (const l of lanes) for (let b = 0; b < 2; b++) this.code.byte(l * 2 + b);
    return this;
  }
  /** v128.const from four i32 lanes. */
  v128ConstI32(l0: number, l1: number, l2: number, l3: number): this {
    this.simd(0x0c);
    this.code.raw(new Uint8Array(new Int32Array([l0, l1, l2, l3]).buffer));
    return this;
  }
  f32x4Splat(): this {
    return this.simd(0x13);
  }
  f32x4ExtractLane(lane: number): this {
    this.simd(0x1f);
    this.code.byte(lane);
    return this;
  }
  v128And(): this {
    return this.simd(0x4e);
  }
  i32x4Shl(): this {
    return this.simd(0xab);
  }
  i32x4ShrS(): this {
    return this.simd(0xac);
  }
  i16x8ExtendLowI8x16S(): this {
    return this.simd(0x87);
  }
  i16x8ExtendHighI8x16S(): this {
    return this.simd(0x88);
  }
  i32x4ExtendLowI16x8U(): this {
    return this.simd(0xa9);
  }
  i32x4ExtendHighI16x8U(): this {
    return this.simd(0xaa);
  }
  i16x8Shl(): this {
    return this.simd(0x8b);
  }
  i16x8ShrS(): this {
    return this.simd(0x8c);
  }
  /** Relaxed SIMD: a * b + c, fused or not as the hardware does it. */
  f32x4RelaxedMadd(): this {
    return this.simd(0x105);
  }
  f32x4Add(): this {
    return this.simd(0xe4);
  }
  f32x4Max(): this {
    return this.simd(0xe9);
  }
  f32x4Abs(): this {
    return this.simd(0xe0);
  }
  f32x4Nearest(): this {
    return this.simd(0x6a);
  }
  /** i32x4.trunc_sat_f32x4_s: saturating conversion (NaN becomes 0). */
  i32x4TruncSatF32x4S(): this {
    return this.simd(0xf8);
  }
  f32x4ConvertI32x4S(): this {
    return this.simd(0xfa);
  }
  /** i16x8.narrow_i32x4_s: the two operands' i32 lanes saturated to i16, first operand's in lanes 0-3. */
  i16x8NarrowI32x4S(): this {
    return this.simd(0x85);
  }
  /** i32x4.dot_i16x8_s: lane i = a[2i]·b[2i] + a[2i+1]·b[2i+1] (pmaddwd on x64). */
  i32x4DotI16x8S(): this {
    return this.simd(0xba);
  }
  i32x4Add(): this {
    return this.simd(0xae);
  }
  i32x4MinS(): this {
    return this.simd(0xb6);
  }
  i32x4MaxS(): this {
    return this.simd(0xb8);
  }
  i32x4Splat(): this {
    return this.simd(0x11);
  }
  i32x4Sub(): this {
    return this.simd(0xb1);
  }
  i16x8MaxU(): this {
    return this.simd(0x99);
  }
  i32x4ExtractLane(lane: number): this {
    return this.simd(0x1b, lane);
  }
  i16x8ExtractLaneU(lane: number): this {
    return this.simd(0x19, lane);
  }
  /** v128.store32_lane: i32 lane `lane` of the vector to memory. */
  v128Store32Lane(lane: number, offset = 0): this {
    this.simd(0x5a).memarg(2, offset);
    this.code.byte(lane);
    return this;
  }
  f32x4Mul(): this {
    return this.simd(0xe6);
  }
}

export interface MemoryImport {
  module: string;
  name: string;
  initialPages: number;
  maximumPages: number;
  shared: boolean;
}

/** A function the module imports (from `env`), taking `params` and returning nothing. */
export interface FunctionImport {
  name: string;
  params: readonly ValType[];
}

/**
 * Module with one imported memory, imported functions (declared up front: they take the first function
 * indices) and a list of functions (each exported under its name).
 */
export class ModuleBuilder {
  readonly funcs: FuncBuilder[] = [];

  constructor(
    readonly memory: MemoryImport | null,
    readonly imports: readonly FunctionImport[] = [],
  ) {}

  /** The function index (for `call`) of the import named `name`. */
  importIndex(name: string): number {
    const i = this.imports.findIndex((f) => f.name === name);
    if (i < 0) throw new Error(`wasm module: no imported function ${name}`);
    return i;
  }

  /** Adds a function; its index (for `call`) is returned. */
  func(name: string, params: readonly ValType[], results: readonly ValType[] = []): [FuncBuilder, number] {
    const f = new FuncBuilder(name, params, results);
    this.funcs.push(f);
    return [f, this.imports.length + this.funcs.length - 1];
  }

  emit(): Uint8Array<ArrayBuffer> {
    const out = new ByteWriter().raw([0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00]);
    const section = (id: number, w: ByteWriter): void => {
      out.byte(id).sized(w);
    };

    // Types: one per imported, then per defined function (duplicates are legal and keep this simple).
    const nImports = this.imports.length;
    const types = new ByteWriter().u32(nImports + this.funcs.length);
    for (const f of this.imports) types.byte(0x60).u32(f.params.length).raw(f.params).u32(0);
    for (const f of this.funcs) {
      types.byte(0x60).u32(f.params.length).raw(f.params).u32(f.results.length).raw(f.results);
    }
    section(1, types);

    if (this.memory || nImports > 0) {
      const imp = new ByteWriter().u32(nImports + (this.memory ? 1 : 0));
      this.imports.forEach((f, i) => imp.name('env').name(f.name).byte(0x00).u32(i));
      if (this.memory) {
        const m = this.memory;
        imp.name(m.module).name(m.name).byte(0x02);
        imp
          .byte(m.shared ? 0x03 : 0x01)
          .u32(m.initialPages)
          .u32(m.maximumPages);
      }
      section(2, imp);
    }

    const fsec = new ByteWriter().u32(this.funcs.length);
    this.funcs.forEach((_, i) => fsec.u32(nImports + i));
    section(3, fsec);

    const exp = new ByteWriter().u32(this.funcs.length);
    this.funcs.forEach((f, i) =>
      exp
        .name(f.name)
        .byte(0x00)
        .u32(nImports + i),
    );
    section(7, exp);

    const code = new ByteWriter().u32(this.funcs.length);
    for (const f of this.funcs) code.sized(f.body());
    section(10, code);

    return new Uint8Array(out.bytes);
  }
}

// Structured control flow and local arithmetic shared by the kernel generators.

/** `while (cond) { body }` where cond leaves an i32 on the stack. */
export function whileLoop(f: FuncBuilder, cond: () => void, body: () => void): void {
  f.block().loop();
  cond();
  f.eqz().brIf(1);
  body();
  f.br(0).end().end();
}

/** local dst = min(limit, end - pos), unsigned; end and pos are locals, limit a constant. */
export function minRemaining(f: FuncBuilder, dst: number, limit: number, end: number, pos: number): void {
  f.i32(limit).get(end).get(pos).sub().i32(limit).get(end).get(pos).sub().ltU().select().set(dst);
}

/** local l += constant v. */
export function addConst(f: FuncBuilder, l: number, v: number): void {
  f.get(l).i32(v).add().set(l);
}

/** local l += local v. */
export function addLocal(f: FuncBuilder, l: number, v: number): void {
  f.get(l).get(v).add().set(l);
}
