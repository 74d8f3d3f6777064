// The f32 operands of a row-kernel job in one GEMM engine's memory: in place where they live there
// (kernel outputs, resident weights), the others copied into the engine's scratch block, an output
// copied back after the job — one copy per host operand, where staging through a kernel's private
// memory copied every operand in and the output out, resident ones included.
import { createdEngine, engineOwning } from './gemm/runtime.js';
import type { WasmGemm } from './gemm/wasm-engine.js';

/** The engine whose memory holds a, without creating one (none created: a is a host array). */
export function residentEngine(a: ArrayBufferView): WasmGemm | null {
  return createdEngine() ? engineOwning(a) : null;
}

/** `length` floats of `array` from float `offset`. */
export interface Span {
  array: Float32Array;
  offset: number;
  length: number;
}

export interface PlacedSpans {
  /** Each span's byte address in the engine's memory, in the order given. */
  at: number[];
  /** The scratch block's byte address (its first `head` bytes are the caller's). */
  block: number;
  /** Copies the first `floats` floats of each output that was given a scratch slot back to its array. */
  copyOut(floats: number): void;
}

const sameSpan = (p: Span, q: Span) => p.array === q.array && p.offset === q.offset && p.length === q.length;

/**
 * Places `inputs` and `outputs` for a job on engine e: in place where e owns the array; otherwise a slot
 * in e's scratch block past `head` bytes (16-byte aligned), an input copied in, an output that is the
 * same span as an input sharing its slot (o = a stays an in-place update). Null when the block cannot be
 * had. Spans must not partly overlap each other (the kernels' own rule).
 */
export function placeSpans(e: WasmGemm, inputs: Span[], outputs: Span[], head: number): PlacedSpans | null {
  const all = [...inputs, ...outputs];
  const slot: number[] = []; // scratch offset past head, or -1: in place, or the index of an earlier span
  const shared: number[] = [];
  let bytes = 0;
  all.forEach((s, i) => {
    shared[i] = all.findIndex((q, k) => k < i && sameSpan(q, s));
    if (e.arena.owns(s.array) || shared[i]! >= 0) slot[i] = -1;
    else {
      slot[i] = bytes;
      bytes += (s.length * 4 + 15) & ~15;
    }
  });
  const block = e.tryStage(head + bytes);
  if (block === null) return null;
  const heap = e.heap();
  const at: number[] = [];
  all.forEach((s, i) => {
    if (shared[i]! >= 0) at[i] = at[shared[i]!]!;
    else if (slot[i]! < 0) at[i] = s.array.byteOffset + 4 * s.offset;
    else at[i] = block + head + slot[i]!;
    if (i < inputs.length && slot[i]! >= 0) heap.set(s.array.subarray(s.offset, s.offset + s.length), at[i]! / 4);
  });
  return {
    at,
    block,
    copyOut(floats) {
      const h = e.heap();
      outputs.forEach((s, k) => {
        const i = inputs.length + k;
        const staged = slot[i]! >= 0 || (shared[i]! >= 0 && !e.arena.owns(s.array));
        if (staged) s.array.set(h.subarray(at[i]! / 4, at[i]! / 4 + floats), s.offset);
      });
    },
  };
}
