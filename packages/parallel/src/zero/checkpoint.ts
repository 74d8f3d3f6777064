// Sharded optimizer checkpoints: each data-parallel rank writes its own block (atomically, temp file
// + rename) as zero1-rank-R-of-N.safetensors; resuming needs the same data-parallel size.
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { loadSafetensors, readSafetensors, saveSafetensors } from '@dsv3/core';
import type { ZeroShardState } from './zero1.js';

export const zeroShardFile = (rank: number, size: number): string => `zero1-rank-${rank}-of-${size}.safetensors`;

export async function saveZeroShard(dir: string, s: ZeroShardState): Promise<string> {
  const path = join(dir, zeroShardFile(s.rank, s.size));
  await saveSafetensors(path, s.tensors, { step: String(s.step), rank: String(s.rank), size: String(s.size) });
  return path;
}

export function loadZeroShard(dir: string, rank: number, size: number): ZeroShardState {
  const path = join(dir, zeroShardFile(rank, size));
  if (!existsSync(path))
    throw new Error(`ZeRO-1: ${path} is missing; resume with the data-parallel size the checkpoint was written with`);
  const step = readStep(path);
  return { step, rank, size, tensors: loadSafetensors(path) };
}

function readStep(path: string): number {
  const f = readSafetensors(path);
  try {
    const step = Number(f.metadata.step);
    if (!Number.isInteger(step) || step < 0) throw new Error(`ZeRO-1: ${path} has no optimizer step in its metadata`);
    return step;
  } finally {
    f.close();
  }
}
