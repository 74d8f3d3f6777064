// Shared cases of the device-sampler tests (CPU and WebGPU): logits rows and per-row settings.
import { Rng, tensor, type Backend, type Tensor } from '@dsv3/core';
import type { RowSampling } from '../src/index.js';

/** B rows of V logits, N(0, scale²) each, seeded. */
export function logitRows(B: number, V: number, seed: number, scale = 2): Float32Array {
  const rng = new Rng(seed);
  const out = new Float32Array(B * V);
  for (let i = 0; i < out.length; i++) out[i] = rng.normal() * scale;
  return out;
}

export const asLogits = (a: Float32Array, B: number, V: number, backend?: Backend): Tensor =>
  tensor(a, { shape: [B, V], dtype: 'f32', backend });

/** Settings exercising every branch: greedy, plain temperature, top-k, top-p, both, k ≥ V, p = 1. */
export const SETTINGS: RowSampling[] = [
  { temperature: 0 },
  { temperature: 1 },
  { temperature: 0.7, topK: 5 },
  { temperature: 1.3, topP: 0.8 },
  { temperature: 0.9, topK: 8, topP: 0.6 },
  { temperature: 2, topK: 100000 },
  { temperature: 0.5, topP: 1 },
  { temperature: 1, topK: 1 },
];
