// Small file helpers of the run directory.
import { renameSync, writeFileSync } from 'node:fs';

/** Writes `text` to a temporary sibling and renames it over `path` (readers never see half a file). */
export function writeTextAtomic(path: string, text: string): void {
  const tmp = `${path}.tmp-${process.pid}`;
  writeFileSync(tmp, text);
  renameSync(tmp, path);
}
