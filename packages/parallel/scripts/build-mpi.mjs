#!/usr/bin/env node
// Builds the MPI addon (build/Release/dsv3_mpi.node) where the system has MPI (mpicc), with node-gyp
// against this Node's own headers. Run by `npm test` (pretest) and on first use of the mpi transport;
// npm does not run dependencies' install scripts without approval, so nothing relies on install.
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, statSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const pkg = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const out = join(pkg, 'build', 'Release', 'dsv3_mpi.node');
const src = join(pkg, 'native', 'mpi.cc');
const quiet = process.argv.includes('--quiet');

if (spawnSync('mpicc', ['-showme:version'], { stdio: 'ignore' }).status !== 0) {
  if (!quiet)
    console.log(
      '[dsv3] mpicc (OpenMPI) not found: the mpi transport is unavailable here; install openmpi-bin and libopenmpi-dev to build it',
    );
  process.exit(0);
}
if (
  existsSync(out) &&
  statSync(out).mtimeMs > statSync(src).mtimeMs &&
  statSync(out).mtimeMs > statSync(join(pkg, 'binding.gyp')).mtimeMs
)
  process.exit(0);

const gyp = createRequire(import.meta.url).resolve('node-gyp/bin/node-gyp.js');
// Headers that ship with this Node (Debian's nodejs, the official tarballs) avoid a download.
const prefix = resolve(dirname(process.execPath), '..');
const nodedir = existsSync(join(prefix, 'include', 'node', 'node_api.h')) ? [`--nodedir=${prefix}`] : [];
console.log(
  `[dsv3] building the MPI addon with node-gyp${nodedir.length ? ` (headers from ${prefix}/include/node)` : ''}`,
);
execFileSync(process.execPath, [gyp, 'rebuild', ...nodedir, '--silent'], { cwd: pkg, stdio: 'inherit' });
