// prepareInferenceProcess and capNativeArenas, each in a child process (they change process-wide state):
// capped, threads started afterwards take no malloc arena of their own (glibc maps each arena as a 64 MiB
// region, its unused tail PROT_NONE); uncapped — the control — they do. Linux with glibc and the addon
// built only (elsewhere capNativeArenas returns false, checked too).
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { capNativeArenas } from '../src/cpu/gemm/native-kernels.js';

const root = join(import.meta.dirname, '..');
const report = process.report?.getReport() as { header?: { glibcVersionRuntime?: string } } | undefined;
const glibc = process.platform === 'linux' && !!report?.header?.glibcVersionRuntime;
const addonBuilt = existsSync(join(root, 'build/Release/dsv3_kernels.node'));

/**
 * In a child Node process: runs `prepare` (module source) first, then counts the malloc arenas before and
 * after four worker threads that malloc (ArrayBuffers' backing stores) and free.
 */
function arenasAroundWorkers(prepare: string): { before: number; after: number; out: string } {
  const script = `
${prepare}
import { readFileSync } from 'node:fs';
import { Worker } from 'node:worker_threads';
const arenas = () => {
  const maps = readFileSync('/proc/self/maps', 'utf8').trim().split('\\n').map((l) => {
    const [range, perms, , , inode] = l.split(/\\s+/);
    const [lo, hi] = range.split('-').map((h) => BigInt('0x' + h));
    return { lo, hi, perms, anon: inode === '0' };
  });
  let n = 0;
  for (let i = 0; i + 1 < maps.length; i++) {
    const a = maps[i], b = maps[i + 1];
    if (a.anon && b.anon && a.perms === 'rw-p' && b.perms === '---p' && a.hi === b.lo && a.lo % (64n << 20n) === 0n && b.hi - a.lo === 64n << 20n) n++;
  }
  return n;
};
const before = arenas();
const work = 'import { parentPort } from "node:worker_threads"; const keep = []; for (let i = 0; i < 20000; i++) { keep.push(new ArrayBuffer(2048)); if (keep.length > 500) keep.length = 0; } parentPort.postMessage(0);';
await Promise.all(Array.from({ length: 4 }, () => new Promise((done, fail) => {
  const w = new Worker(work, { eval: true, execArgv: ['--input-type=module'] });
  w.once('message', () => { w.terminate().then(done); });
  w.once('error', fail);
})));
console.log(JSON.stringify({ before, after: arenas() }));
`;
  // plain Node, as a CLI starts (a tsx child has started more threads, and glibc stops reading the cap
  // once it has made its eighth arena)
  const out = execFileSync(process.execPath, ['--input-type=module', '-e', script], { cwd: root, encoding: 'utf8' });
  const line = out.trim().split('\n').at(-1)!;
  return { ...JSON.parse(line), out };
}

describe('capNativeArenas', () => {
  it.runIf(glibc && addonBuilt)('threads started after the cap take no arena of their own; uncapped, they do', () => {
    const control = arenasAroundWorkers('');
    expect(control.after, `uncapped: ${control.out}`).toBeGreaterThan(control.before);
    const capped = arenasAroundWorkers(
      `import { createRequire } from 'node:module';\nif (!createRequire(import.meta.url)('./build/Release/dsv3_kernels.node').capArenas(1)) throw new Error('not capped');`,
    );
    expect(capped.after, `capped: ${capped.out}`).toBeLessThanOrEqual(capped.before);
  });

  it.runIf(glibc && addonBuilt)('a count below 1: a RangeError naming it', () => {
    expect(() => capNativeArenas(0)).toThrow(/n must be an integer >= 1/);
  });

  it.runIf(!(glibc && addonBuilt))('without glibc or the addon: false, nothing done', () => {
    expect(capNativeArenas(1)).toBe(false);
  });
});

describe('prepareInferenceProcess', () => {
  it.runIf(glibc && addonBuilt)('holds the young generation and caps the arenas', () => {
    const out = execFileSync(
      process.execPath,
      [
        '--import',
        'tsx',
        '--conditions=@dsv3/source',
        '--input-type=module',
        '-e',
        "import { prepareInferenceProcess } from './src/cpu/index.ts'; console.log(JSON.stringify(prepareInferenceProcess()));",
      ],
      { cwd: root, encoding: 'utf8' },
    );
    expect(JSON.parse(out.trim().split('\n').at(-1)!)).toEqual({ youngGenerationHeld: true, arenasCapped: true });
  });
});
