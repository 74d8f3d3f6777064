// The first maximum of an f32 row — the greedy sampler's whole cost at DeepSeek-V3's vocabulary (129,280
// logits: ~0.13–0.24 ms a decode step in a JavaScript loop, docs/benchmarks-sessions.md, thirty-first
// session) — with WebAssembly SIMD128 over a small memory of its own. Sixteen running maxima (four vectors,
// so no one compare-and-select chain bounds the loop), each the first maximum of the positions ≡ its lane
// (mod 16): a strict greater-than replaces it, so NaN never wins and a tie keeps the earlier position. The
// row's answer is the largest of them, the lowest position among equal ones — exactly the scalar loop's
// `if (v > best)` from −∞ (−1 when no value is above −∞).
import { I32, type ModuleBuilder, V128, whileLoop } from './gemm/wasm-emitter.js';
import { moduleOf, privateSimdModule } from './private-simd-module.js';

/** Floats staged per trip through the module's memory. */
const CHUNK = 1 << 16;
/** The 16 running maxima (f32) then their positions (i32), after the staged floats. */
const LANES_AT = CHUNK * 4;
const PAGES = Math.ceil((LANES_AT + 128) / 65536);
const SETS = 4;

const OP = { i32x4Splat: 0x11, f32x4Splat: 0x13, f32x4Gt: 0x44, bitselect: 0x52, i32x4Add: 0xae };

/**
 * laneMaxima(n): over the n floats at address 0 (n a multiple of 16), the first maximum of each position
 * class mod 16 and its position (−1 where none is above −∞), stored at LANES_AT.
 */
function addLaneMaxima(m: ModuleBuilder): void {
  const [f] = m.func('laneMaxima', [I32]);
  const n = 0;
  const [p, end] = f.locals(I32, 2) as [number, number];
  const best = f.locals(V128, SETS),
    at = f.locals(V128, SETS),
    idx = f.locals(V128, SETS);
  const [v, gt, sixteen] = f.locals(V128, 3) as [number, number, number];
  for (let s = 0; s < SETS; s++) {
    f.f32c(Number.NEGATIVE_INFINITY).simd(OP.f32x4Splat).set(best[s]!);
    f.i32(-1).simd(OP.i32x4Splat).set(at[s]!);
    // positions 4s .. 4s + 3, as v128.const
    f.simd(0x0c);
    f.code.raw(new Uint8Array(Int32Array.of(4 * s, 4 * s + 1, 4 * s + 2, 4 * s + 3).buffer));
    f.set(idx[s]!);
  }
  f.i32(16).simd(OP.i32x4Splat).set(sixteen);
  f.i32(0).set(p);
  f.get(n).i32(2).shl().set(end);
  whileLoop(
    f,
    () => f.get(p).get(end).ltU(),
    () => {
      for (let s = 0; s < SETS; s++) {
        f.get(p)
          .v128Load(16 * s)
          .set(v);
        f.get(v).get(best[s]!).simd(OP.f32x4Gt).set(gt);
        f.get(v).get(best[s]!).get(gt).simd(OP.bitselect).set(best[s]!);
        f.get(idx[s]!).get(at[s]!).get(gt).simd(OP.bitselect).set(at[s]!);
        f.get(idx[s]!).get(sixteen).simd(OP.i32x4Add).set(idx[s]!);
      }
      f.get(p).i32(64).add().set(p);
    },
  );
  for (let s = 0; s < SETS; s++) {
    f.i32(LANES_AT + 16 * s)
      .get(best[s]!)
      .v128Store();
    f.i32(LANES_AT + 64 + 16 * s)
      .get(at[s]!)
      .v128Store();
  }
}

let kernel: { laneMaxima: (n: number) => void; f32: Float32Array; i32: Int32Array } | null | undefined;

function getKernel() {
  if (kernel !== undefined) return kernel;
  const mod = privateSimdModule(moduleOf(addLaneMaxima, PAGES), PAGES);
  kernel = mod && {
    laneMaxima: mod.exports.laneMaxima as (n: number) => void,
    f32: new Float32Array(mod.memory.buffer),
    i32: new Int32Array(mod.memory.buffer),
  };
  return kernel;
}

/**
 * The position (from `start`) of the first maximum of values[start, start + n) — NaN never wins, −1 when no
 * value is above −∞. Without SIMD128 the plain loop (which also takes each chunk's last n mod 16) runs it all.
 */
export function firstMaxIndexF32(values: Float32Array, start: number, n: number): number {
  const k = getKernel();
  let best = Number.NEGATIVE_INFINITY;
  let at = -1;
  for (let c0 = 0; c0 < n; c0 += CHUNK) {
    const len = Math.min(CHUNK, n - c0);
    const whole = k ? len & ~15 : 0;
    if (k && whole > 0) {
      k.f32.set(values.subarray(start + c0, start + c0 + whole), 0);
      k.laneMaxima(whole);
      // lanes hold disjoint position classes: the largest, the lowest position among ties; a chunk's
      // maxima replace the running one only when strictly greater (it holds an earlier position)
      let cBest = Number.NEGATIVE_INFINITY,
        cAt = -1;
      for (let l = 0; l < 16; l++) {
        const b = k.f32[LANES_AT / 4 + l]!,
          i = k.i32[LANES_AT / 4 + 16 + l]!;
        if (i >= 0 && (b > cBest || (b === cBest && i < cAt))) {
          cBest = b;
          cAt = i;
        }
      }
      if (cAt >= 0 && cBest > best) {
        best = cBest;
        at = c0 + cAt;
      }
    }
    for (let i = whole; i < len; i++) {
      const v = values[start + c0 + i]!;
      if (v > best) {
        best = v;
        at = c0 + i;
      }
    }
  }
  return at;
}
