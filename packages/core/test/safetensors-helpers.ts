// Shared helpers of the safetensors tests: fixture and temp paths, seeded random storage, byte views.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll } from 'vitest';
import type { DType, StorageArray } from '../src/dtype';
import { allocStorageArray } from '../src/dtype';
import { Rng } from '../src/rng';

export const FIX = fileURLToPath(new URL('./fixtures/', import.meta.url));

/** A temp directory for the calling test file (made before its tests, removed after) and fresh paths in it. */
export function tempPaths(): { tmpRoot: () => string; tmpFile: (name?: string) => string; tmpDir: () => string } {
  let tmp = '';
  let counter = 0;
  beforeAll(() => {
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'dsv3-st-'));
  });
  afterAll(() => {
    fs.rmSync(tmp, { recursive: true, force: true });
  });
  return {
    tmpRoot: () => tmp,
    tmpFile: (name = 'x.safetensors') => path.join(tmp, `${counter++}-${name}`),
    tmpDir: () => {
      const d = path.join(tmp, `d${counter++}`);
      fs.mkdirSync(d);
      return d;
    },
  };
}

/** Seeded uniform samples in [0, 1) (core's Rng). */
export function rng(seed: number): () => number {
  const r = new Rng(seed);
  return () => r.uniform();
}

/** Random non-zero storage of a core dtype. */
export function randomStorage(dtype: DType, n: number, r: () => number): StorageArray {
  const a = allocStorageArray(dtype, n);
  for (let i = 0; i < n; i++) {
    switch (dtype) {
      case 'f32':
      case 'f64':
        a[i] = (r() - 0.5) * 1e3 || 1.5;
        break;
      case 'f16':
      case 'bf16':
        a[i] = 1 + Math.floor(r() * 0xfffe);
        break;
      case 'i32':
        a[i] = (Math.floor(r() * 0xfffffffe) + 1) | 0;
        break;
      case 'u32':
        a[i] = Math.floor(r() * 0xfffffffe) + 1;
        break;
      case 'bool':
        a[i] = i % 3 === 1 ? 0 : 1;
        break;
      default:
        a[i] = 1 + Math.floor(r() * 254);
    }
  }
  return a;
}

export const bytesOf = (a: ArrayBufferView) => new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
export const hex = (b: Uint8Array) => Buffer.from(b).toString('hex');
