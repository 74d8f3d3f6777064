// Each package's test run gets a temporary directory of its own as TMPDIR (so os.tmpdir() in the tests,
// their workers and the processes they start), removed when the run ends: what a test leaves there never
// meets a later run, which on a shared machine may be another checkout's.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export default function setup(): () => void {
  const previous = process.env.TMPDIR;
  const dir = mkdtempSync(join(tmpdir(), 'dsv3-test-'));
  process.env.TMPDIR = dir;
  return () => {
    rmSync(dir, { recursive: true, force: true });
    if (previous === undefined) delete process.env.TMPDIR;
    else process.env.TMPDIR = previous;
  };
}
