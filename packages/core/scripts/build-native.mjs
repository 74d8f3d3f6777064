#!/usr/bin/env node
// Builds the native kernels addon (build/Release/dsv3_kernels.node: native/*.cc, AVX-512 versions
// of the wasm engine's innermost loops) with node-gyp against this Node's headers. Run by the workspace's
// postinstall and core's pretest; never fails the install: without an x64 C++ toolchain the engine runs
// its wasm kernels, which give the same bits (src/cpu/gemm/native-kernels.ts).
import { execFileSync } from 'node:child_process';
import { existsSync, readdirSync, statSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const pkg = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const out = join(pkg, 'build', 'Release', 'dsv3_kernels.node');
const sources = [join(pkg, 'binding.gyp'), ...readdirSync(join(pkg, 'native')).map((f) => join(pkg, 'native', f))];
const quiet = process.argv.includes('--quiet');
const say = (text) => {
  if (!quiet) console.log(`[dsv3] ${text}`);
};

if (process.arch !== 'x64') {
  say(`native kernels: x64 only (this is ${process.arch}); the wasm kernels run`);
  process.exit(0);
}
if (existsSync(out) && sources.every((s) => statSync(out).mtimeMs > statSync(s).mtimeMs)) process.exit(0);

let gyp;
try {
  gyp = createRequire(import.meta.url).resolve('node-gyp/bin/node-gyp.js');
} catch {
  say('native kernels: node-gyp is not installed; the wasm kernels run');
  process.exit(0);
}
// Headers that ship with this Node (Debian's nodejs, the official tarballs) avoid a download.
const prefix = resolve(dirname(process.execPath), '..');
const nodedir = existsSync(join(prefix, 'include', 'node', 'node_api.h')) ? [`--nodedir=${prefix}`] : [];
say('building the native kernels with node-gyp');
try {
  execFileSync(process.execPath, [gyp, 'rebuild', ...nodedir, '--silent'], {
    cwd: pkg,
    stdio: quiet ? 'ignore' : 'inherit',
  });
} catch {
  console.log('[dsv3] native kernels: the build failed (a C++ compiler and make are needed); the wasm kernels run');
}
