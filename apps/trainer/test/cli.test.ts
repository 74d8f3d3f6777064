// The CLI end to end, in process: bit-exact resume, and one clear error per kind of bad input.
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { listCheckpoints, readMetrics, WALL_CLOCK_FIELDS } from '@dsv3/train';
import { main } from '../src/cli.js';
import { resolveConfig } from '../src/run.js';

const MICRO = join(__dirname, 'fixtures', 'micro.json');
const tmp = (p: string) => mkdtempSync(join(tmpdir(), `dsv3-trainer-${p}-`));

/** Runs the CLI in process; returns its exit code and what it wrote to stderr. */
async function cli(...argv: string[]): Promise<{ code: number; err: string; out: string }> {
  let err = '';
  let out = '';
  const e = vi.spyOn(process.stderr, 'write').mockImplementation((s: string | Uint8Array) => {
    err += String(s);
    return true;
  });
  const o = vi.spyOn(process.stdout, 'write').mockImplementation((s: string | Uint8Array) => {
    out += String(s);
    return true;
  });
  try {
    return { code: await main(argv), err, out };
  } finally {
    e.mockRestore();
    o.mockRestore();
  }
}

afterEach(() => vi.restoreAllMocks());

const stripClock = (path: string) =>
  readMetrics(path).map((r) => {
    const c: Record<string, unknown> = { ...r };
    for (const f of WALL_CLOCK_FIELDS) delete c[f];
    return c;
  });

describe('dsv3-train resume', () => {
  it('N steps straight equal N/2 + --resume + N/2: metrics and final weights bit-identical', async () => {
    const a = join(tmp('straight'), 'run');
    const b = join(tmp('resumed'), 'run');
    expect((await cli('--config', MICRO, '--steps', '4', '--out', a, '--no-progress')).code).toBe(0);
    expect((await cli('--config', MICRO, '--steps', '2', '--out', b, '--no-progress')).code).toBe(0);
    const r = await cli('--resume', b, '--steps', '4', '--no-progress');
    expect(r.err).toMatch(/resumed from .*step-000002/);
    expect(r.code).toBe(0);
    const ma = stripClock(join(a, 'metrics.jsonl'));
    expect(ma.filter((m) => m.kind === 'train')).toHaveLength(4);
    expect(stripClock(join(b, 'metrics.jsonl'))).toEqual(ma);
    const last = (dir: string) => listCheckpoints(dir).at(-1)!.dir;
    for (const f of ['model.safetensors', 'optimizer.safetensors']) {
      expect(readFileSync(join(last(b), f)).equals(readFileSync(join(last(a), f))), f).toBe(true);
    }
    // keep-last-K = 2: step 2 and step 4
    expect(listCheckpoints(a).map((c) => c.step)).toEqual([2, 4]);
  }, 300_000);
});

describe('dsv3-train parallel flags', () => {
  it('--fb-overlap on|off sets parallel.overlapForwardBackward over the config; anything else is refused', async () => {
    const overlap = (a: Parameters<typeof resolveConfig>[0]) => resolveConfig(a)!.parallel.overlapForwardBackward;
    expect(overlap({ config: MICRO })).toBe(true);
    expect(overlap({ config: MICRO, fbOverlap: 'off' })).toBe(false);
    const dir = tmp('fboff');
    const f = join(dir, 'c.json');
    const micro = JSON.parse(readFileSync(MICRO, 'utf8'));
    writeFileSync(f, JSON.stringify({ ...micro, parallel: { ...micro.parallel, overlapForwardBackward: false } }));
    expect(overlap({ config: f })).toBe(false);
    expect(overlap({ config: f, fbOverlap: 'on' })).toBe(true);
    const r = await cli('--config', MICRO, '--fb-overlap', 'maybe', '--out', join(dir, 'o'));
    expect(r.code).not.toBe(0);
    expect(r.err).toMatch(/--fb-overlap.*maybe.*on, off/s);
  });
});

describe('dsv3-train bad input', () => {
  it('an invalid config lists its problems', async () => {
    const dir = tmp('badcfg');
    const f = join(dir, 'c.json');
    writeFileSync(f, JSON.stringify({ ...JSON.parse(readFileSync(MICRO, 'utf8')), precision: 'int4', stepz: 3 }));
    const r = await cli('--config', f, '--out', join(dir, 'o'));
    expect(r.code).toBe(1);
    expect(r.err).toMatch(/invalid training config \(.*c\.json\):\n {2}.*precision/);
    expect(r.err).toMatch(/stepz/);
    writeFileSync(f, '{ not json');
    expect((await cli('--config', f)).err).toMatch(/cannot read the config .*c\.json/);
  });

  it('missing or empty data', async () => {
    const dir = tmp('nodata');
    expect((await cli('--config', MICRO, '--data', join(dir, 'missing.txt'), '--out', join(dir, 'o1'))).err).toMatch(
      /data path .*missing\.txt does not exist/,
    );
    mkdirSync(join(dir, 'empty'));
    expect((await cli('--config', MICRO, '--data', join(dir, 'empty'), '--out', join(dir, 'o2'))).err).toMatch(
      /holds no non-empty files/,
    );
    writeFileSync(join(dir, 'blank.jsonl'), '\n\n');
    expect((await cli('--config', MICRO, '--data', join(dir, 'blank.jsonl'), '--out', join(dir, 'o3'))).err).toMatch(
      /no complete sequence of 32 tokens/,
    );
  });

  it('an unwritable output directory', async () => {
    const dir = tmp('unwritable');
    writeFileSync(join(dir, 'file'), 'x');
    const r = await cli('--config', MICRO, '--out', join(dir, 'file', 'run'));
    expect(r.code).toBe(1);
    expect(r.err).toMatch(/output directory .*file\/run is not writable/);
  });

  it('an existing run is never overwritten, and a resume from another model is refused', async () => {
    const dir = join(tmp('exists'), 'run');
    expect((await cli('--config', MICRO, '--steps', '2', '--out', dir, '--no-progress')).code).toBe(0);
    const before = readFileSync(join(dir, 'metrics.jsonl'));
    const again = await cli('--config', MICRO, '--steps', '2', '--out', dir);
    expect(again.code).toBe(1);
    expect(again.err).toMatch(/already holds a training run .*pass --resume/);
    expect(readFileSync(join(dir, 'metrics.jsonl')).equals(before)).toBe(true);
    const other = await cli('--preset', 'tiny', '--resume', dir);
    expect(other.code).toBe(1);
    expect(other.err).toMatch(
      /the checkpoint is a different model than the config asks for \(.*hidden_size: 128 vs 32/,
    );
    expect((await cli('--resume', join(dir, 'nothing-here'))).err).toMatch(
      /--resume .*nothing-here: no such directory/,
    );
    expect(existsSync(join(dir, 'checkpoints', 'step-000002'))).toBe(true);
  }, 120_000);
});
