// The groups of a parallel layout (Megatron's rank generator): dimensions listed leftmost-fastest,
// e.g. [['ep', 8], ['dp', 4], ['pp', 2]] puts ranks 0-7 in one EP group. Every rank creates every
// group in the same order and gets back the one it belongs to in each dimension.
import type { GroupOptions, ProcessGroup } from './group.js';

export type LayoutDims = readonly (readonly [name: string, size: number])[];

/** For each dimension, the partition of world ranks into that dimension's groups (in creation order). */
export function layoutPartitions(worldSize: number, dims: LayoutDims): Record<string, number[][]> {
  const total = dims.reduce((p, [, s]) => p * s, 1);
  for (const [name, s] of dims)
    if (!Number.isInteger(s) || s < 1) throw new RangeError(`layout: ${name} must be a positive integer, got ${s}`);
  if (new Set(dims.map(([n]) => n)).size !== dims.length)
    throw new RangeError(`layout: dimension names must be distinct, got ${dims.map(([n]) => n).join(', ')}`);
  if (total !== worldSize)
    throw new RangeError(
      `layout ${dims.map(([n, s]) => `${n}=${s}`).join(' x ')} covers ${total} ranks, but the world has ${worldSize}`,
    );
  const out: Record<string, number[][]> = {};
  let stride = 1;
  for (const [name, size] of dims) {
    const groups: number[][] = [];
    for (let base = 0; base < worldSize; base++) {
      if (Math.floor(base / stride) % size !== 0) continue; // one group per rank whose coordinate here is 0
      groups.push(Array.from({ length: size }, (_, k) => base + k * stride));
    }
    out[name] = groups;
    stride *= size;
  }
  return out;
}

/** Creates the groups of every dimension (on every rank, same order); returns this rank's group per dimension. */
export function layoutGroups(
  world: ProcessGroup,
  dims: LayoutDims,
  options: GroupOptions = {},
): Record<string, ProcessGroup> {
  const parts = layoutPartitions(world.size, dims);
  const mine: Record<string, ProcessGroup> = {};
  for (const [name] of dims) mine[name] = world.newGroups(parts[name]!, options)!;
  return mine;
}
