// dsv3 vs llama.cpp on one checkpoint, in one session: rounds of interleaved runs (dsv3 f32, llama.cpp
// f32, dsv3 bf16, llama.cpp bf16, dsv3 fp8, llama.cpp q8_0 — its 8-bit weight type), then medians and
// the ratios dsv3 / llama.cpp at the same weight precision, printed after every round. llama.cpp runs
// through ../shared/scripts/peer-llamacpp.sh (node-llama-cpp's CPU build), which converts the checkpoint
// and times the first evaluation after load. Both engines warm up at load with the same number of prompt
// tokens (--warmup, 128 by default: dsv3-model bench's own --warmup, and bench/peer/llamacpp-warm.mjs for
// llama.cpp); --warmup 0 times both engines' cold first evaluation (llama.cpp's as the shared script does),
// and --warmup equal to --prefill times both at the prompt's length already warmed. dsv3 runs as built
// (packages/model/dist/cli.js, built first by turbo), as llama.cpp runs from node-llama-cpp's build.
// usage: tsx --conditions=@dsv3/source bench/vs-llamacpp.ts CKPT_DIR PEER_WORK_DIR [--rounds 3]
//        [--dtypes f32,bf16] [--prefill 512] [--decode 64] [--threads N] [--batch 4,16]
//        [--head-dtype fp8]   (dsv3's fp8 runs: the LM head quantized too; default bf16)
//        [--warmup 128]  (both engines' warm-up prompt tokens; 0: none)
//        [--prefill-activations i16,f32]  (dsv3's bf16 / fp8 runs once per listed mode, default i16 as the
//        product's default; rows "dsv3 bf16" for i16, "dsv3 bf16 f32-acts" for f32 activations)
//        [--checkpoints f32=DIR,fp8=DIR]  (the checkpoint dsv3's runs of a weight dtype load, default
//        CKPT_DIR: one storing that dtype loads without a conversion, as llama.cpp loads its GGUF of
//        it; llama.cpp always runs the GGUFs converted from CKPT_DIR)
//        [--no-map-weights]  (dsv3's runs read the weights into memory: dsv3-model bench
//        --no-map-weights; by default they map those stored as they are kept from the file, as
//        llama.cpp maps its GGUF)
//        [--page-cache reread|as-is]  (reread, the default: before each round every file the round loads
//        has its cached pages dropped (GNU dd iflag=nocache) and is read back once, so both engines map
//        the kind of pages a cold read leaves — 2 MiB folios where the filesystem makes them — and not
//        whatever a file's writer or an earlier reader left: a freshly written file stays in 4 KiB pages,
//        which map, and stream, as such; as-is leaves the page cache alone)
import { type ExecFileSyncOptionsWithStringEncoding, execFileSync } from 'node:child_process';
import { closeSync, copyFileSync, existsSync, openSync, readdirSync, readSync } from 'node:fs';
import { cpus } from 'node:os';
import { basename, dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const args = process.argv.slice(2);
const opt = (name: string, def: string): string => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 && args[i + 1] ? args[i + 1]! : def;
};
/** Options that take no value. */
const FLAGS = ['--no-map-weights'];
const [ckpt, peerDir] = args.filter(
  (a, i) => !a.startsWith('--') && !(args[i - 1]?.startsWith('--') && !FLAGS.includes(args[i - 1]!)),
);
if (!ckpt || !peerDir)
  throw new Error(
    'usage: vs-llamacpp.ts CKPT_DIR PEER_WORK_DIR [--rounds N] [--dtypes f32,bf16] [--prefill N] [--decode N] [--threads N] [--batch 4,16] [--head-dtype fp8] [--checkpoints f32=DIR,fp8=DIR] [--no-map-weights]',
  );
const rounds = Number(opt('rounds', '3'));
const dtypes = opt('dtypes', 'f32,bf16').split(',');
const prefill = opt('prefill', '512'),
  decode = opt('decode', '64');
const threads = opt('threads', String(cpus().length));
const batch = opt('batch', '');
const headDtype = opt('head-dtype', 'bf16');
const activations = opt('prefill-activations', 'i16').split(',');
for (const a of activations)
  if (a !== 'f32' && a !== 'i16') throw new Error(`--prefill-activations lists f32 / i16, got ${a}`);
/** dsv3's runs of a weight dtype: [row name, prefill activations] (f32 weights: f32 only). */
const dsv3Runs = (d: string): [string, string][] =>
  d === 'f32' ? [[`dsv3 ${d}`, 'f32']] : activations.map((a) => [a === 'i16' ? `dsv3 ${d}` : `dsv3 ${d} f32-acts`, a]);
/** The checkpoint dsv3's runs of weight dtype `d` load (--checkpoints), else CKPT_DIR. */
const checkpointFor = (() => {
  const dirs = new Map<string, string>();
  for (const entry of opt('checkpoints', '').split(',').filter(Boolean)) {
    const [d, dir] = entry.split('=');
    if (!d || !dir || !['f32', 'bf16', 'fp8'].includes(d) || !existsSync(join(dir, 'config.json')))
      throw new Error(`--checkpoints lists DTYPE=DIR (f32 / bf16 / fp8, a checkpoint directory), got ${entry}`);
    dirs.set(d, dir);
  }
  return (d: string): string => dirs.get(d) ?? ckpt!;
})();
const mapWeights = !args.includes('--no-map-weights');
const pageCache = opt('page-cache', 'reread');
if (pageCache !== 'reread' && pageCache !== 'as-is')
  throw new Error(`--page-cache takes reread or as-is, got ${pageCache}`);
const warmup = Number(opt('warmup', '128'));
if (!Number.isInteger(warmup) || warmup < 0)
  throw new Error(`--warmup must be an integer >= 0, got ${opt('warmup', '')}`);
const here = dirname(fileURLToPath(import.meta.url));
const repo = resolve(here, '../../..');
const peerScript = resolve(repo, '../shared/scripts/peer-llamacpp.sh');

type Row = Record<string, number>;
const lastJson = (out: string): Row =>
  JSON.parse(
    out
      .trim()
      .split('\n')
      .filter((l) => l.startsWith('{'))
      .at(-1)!,
  ) as Row;

/**
 * dsv3's runs use the built CLI, as an installed `dsv3-model` runs (under tsx its loader alone holds ~0.05
 * GiB more, counted in peak RSS); turbo builds it when the sources changed (cached otherwise).
 */
const builtCli = (() => {
  execFileSync('npx', ['turbo', 'run', 'build', '--filter=@dsv3/model...', '--output-logs=errors-only'], {
    cwd: repo,
    stdio: ['ignore', 'ignore', 'inherit'],
  });
  return join(repo, 'packages/model/dist/cli.js');
})();

function dsv3(dtype: string, acts: string, withBatch: boolean): Row {
  const extra = withBatch && batch ? ['--batch', batch] : [];
  const out = execFileSync(
    'node',
    [
      builtCli,
      'bench',
      checkpointFor(dtype),
      '--prefill',
      prefill,
      '--decode',
      decode,
      '--dtype',
      dtype,
      '--threads',
      threads,
      ...(dtype === 'fp8' ? ['--head-dtype', headDtype] : []),
      mapWeights ? '--map-weights' : '--no-map-weights',
      '--prefill-activations',
      acts,
      '--warmup',
      String(warmup),
      '--json',
      ...extra,
    ],
    { cwd: repo, encoding: 'utf8', maxBuffer: 1 << 26, stdio: ['ignore', 'pipe', 'inherit'] },
  );
  return lastJson(out);
}

/** llama.cpp's weight type for a dsv3 weight storage (FP8 has no GGUF counterpart; q8_0 is its 8-bit type). */
const peerType = (dtype: string): string => (dtype === 'fp8' ? 'q8_0' : dtype);

function llamacpp(dtype: string): Row {
  const env = { ...process.env, PREFILL: prefill, DECODE: decode, THREADS: threads };
  const io: ExecFileSyncOptionsWithStringEncoding = {
    encoding: 'utf8',
    env,
    maxBuffer: 1 << 26,
    stdio: ['ignore', 'pipe', 'inherit'],
  };
  const gguf = join(resolve(peerDir!), `${basename(resolve(ckpt!))}-${peerType(dtype)}.gguf`);
  // the shared script installs node-llama-cpp and converts the checkpoint the first time
  if (warmup === 0 || !existsSync(gguf)) {
    const row = lastJson(execFileSync('bash', [peerScript, ckpt!, peerDir!, peerType(dtype)], io));
    if (warmup === 0) return row;
  }
  const script = join(resolve(peerDir!), 'llamacpp-warm.mjs');
  copyFileSync(join(here, 'peer/llamacpp-warm.mjs'), script);
  const out = execFileSync('node', [script, gguf, prefill, decode], {
    ...io,
    cwd: resolve(peerDir!),
    env: { ...env, WARMUP: String(warmup) },
  });
  return lastJson(out);
}

/** The files a round loads: each dsv3 checkpoint's safetensors and each llama.cpp GGUF. */
function roundFiles(): string[] {
  const files = new Set<string>();
  for (const d of dtypes) {
    const dir = resolve(checkpointFor(d));
    for (const f of readdirSync(dir)) if (f.endsWith('.safetensors')) files.add(join(dir, f));
    const gguf = join(resolve(peerDir!), `${basename(resolve(ckpt!))}-${peerType(d)}.gguf`);
    if (existsSync(gguf)) files.add(gguf);
  }
  return [...files];
}

/** Drops each file's cached pages and reads it back once (--page-cache reread). */
function rereadPageCache(files: readonly string[]): void {
  const buf = Buffer.allocUnsafe(8 << 20);
  for (const f of files) {
    try {
      execFileSync('dd', [`if=${f}`, 'iflag=nocache', 'count=0', 'status=none'], {
        stdio: ['ignore', 'ignore', 'pipe'],
      });
    } catch (e) {
      throw new Error(
        `--page-cache reread drops a file's cached pages with GNU dd (iflag=nocache, count=0), which failed on ${f}: ${(e as Error).message.trim()}; pass --page-cache as-is to leave the page cache alone`,
      );
    }
    const fd = openSync(f, 'r');
    try {
      while (readSync(fd, buf, 0, buf.length, null) > 0);
    } finally {
      closeSync(fd);
    }
  }
}

const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
};

const runs: Record<string, Row[]> = {};
const med = (k: string, f: string): number =>
  median((runs[k] ?? []).map((x) => x[f]!).filter((v) => typeof v === 'number'));

function summary(done: number): void {
  console.log(
    `\nmedians of ${done} interleaved round(s), prefill ${prefill}, decode ${decode}, ${threads} threads, page cache ${pageCache === 'reread' ? 'dropped and read back before each round' : 'as found'}`,
  );
  console.log(
    'engine          prefill tok/s  decode tok/s  load s  warm-up s  peak RSS GiB  RSS / weights  copy-BW fraction',
  );
  for (const k of Object.keys(runs)) {
    const rss = med(k, 'peak_rss_bytes');
    console.log(
      `${k.padEnd(16)}${med(k, 'prefill_tok_s').toFixed(1).padStart(13)}${med(k, 'decode_tok_s').toFixed(2).padStart(14)}${(med(k, 'load_s') || NaN).toFixed(1).padStart(8)}${(med(k, 'warmup_s') || NaN).toFixed(1).padStart(11)}${(rss / 2 ** 30 || NaN).toFixed(2).padStart(14)}${(rss / med(k, 'weight_bytes') || NaN).toFixed(2).padStart(15)}${(med(k, 'bandwidth_fraction') || NaN).toFixed(2).padStart(18)}`,
    );
  }
  console.log(
    '(weights: dsv3 the parameters it holds, in their storage dtypes, MTP included; llama.cpp the GGUF file)',
  );
  for (const k of Object.keys(runs)) {
    const wait = med(k, 'prefill_cpu_wait_ms');
    if (!Number.isNaN(wait))
      console.log(
        `${k}: prefill threads ${med(k, 'prefill_cpu_ms').toFixed(0)} ms on a CPU, ${wait.toFixed(0)} ms waiting for one (medians; a wait is other processes' load)`,
      );
  }
  console.log('ratios dsv3 / llama.cpp (same weight precision; fp8 against q8_0)');
  for (const d of dtypes) {
    const peer = `llama.cpp ${peerType(d)}`;
    for (const [name] of dsv3Runs(d)) {
      const p = med(name, 'prefill_tok_s') / med(peer, 'prefill_tok_s');
      const q = med(name, 'decode_tok_s') / med(peer, 'decode_tok_s');
      const l = med(peer, 'load_s') / med(name, 'load_s');
      console.log(
        `${name.slice(5).padEnd(9)} prefill ${p.toFixed(2)}x  decode ${q.toFixed(2)}x  load speed ${l.toFixed(2)}x (llama.cpp's load time / dsv3's)`,
      );
    }
  }
  for (const d of ['bf16', 'fp8']) {
    if (runs[`dsv3 ${d}`] && runs['llama.cpp bf16'])
      console.log(
        `dsv3 ${d} decode / llama.cpp bf16 decode: ${(med(`dsv3 ${d}`, 'decode_tok_s') / med('llama.cpp bf16', 'decode_tok_s')).toFixed(2)}x`,
      );
  }
  const batched = runs[`dsv3 ${dtypes[0]}`]?.[0]?.batched as unknown as
    | { batch: number; decode_tok_s: number }[]
    | undefined;
  for (const b of batched ?? [])
    console.log(`dsv3 ${dtypes[0]} batched decode, ${b.batch} sequences: ${b.decode_tok_s.toFixed(1)} tok/s`);
}

for (let r = 0; r < rounds; r++) {
  if (pageCache === 'reread') rereadPageCache(roundFiles());
  for (const d of dtypes) {
    // llama.cpp's rows named by its weight type (q8_0 beside dsv3's fp8)
    for (const [name, fn] of [
      ...dsv3Runs(d).map(([n, a], i) => [n, () => dsv3(d, a, r === 0 && d === dtypes[0] && i === 0)] as const),
      [`llama.cpp ${peerType(d)}`, () => llamacpp(d)] as const,
    ]) {
      const row = fn();
      (runs[name] ??= []).push(row);
      console.log(`round ${r + 1} ${name}: ${JSON.stringify(row)}`);
    }
  }
  summary(r + 1);
}
