// WGSL versions of the latent-cache row writes (cache-rows.ts): one thread per element written, rows
// located through the uploaded index list. Out-of-range indices were ruled out on the host, where the
// cache computed them from its block tables.
import {
  asWebGpu,
  bindingDecls,
  layoutKey,
  paramsDecl,
  type Backend,
  type BindingDecl,
  type KernelTensor,
  type WebGpuBackend,
} from '@dsv3/core';
import { COPY_ROWS_OP, WRITE_ROWS_OP } from './cache-rows.js';

const WG = 256;

const WRITE_BINDINGS: BindingDecl[] = [
  { name: 'pool', write: true, type: 'f32' },
  { name: 'src', type: 'f32' },
  { name: 'rows', type: 'i32' },
];
const COPY_BINDINGS: BindingDecl[] = [
  { name: 'pool', write: true, type: 'f32' },
  { name: 'src_rows', type: 'i32' },
  { name: 'dst_rows', type: 'i32' },
];

// params: 0 W (row width), 1 N (rows), 2 workgroups along x
const body = (assign: string): string => `
@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let W = P(0u);
  let i = (wid.y * P(2u) + wid.x) * ${WG}u + lid;
  if (i >= W * P(1u)) { return; }
  let r = i / W;
  let c = i % W;
  ${assign}
}`;

const WRITE_CODE = `${paramsDecl(3)}
${bindingDecls(WRITE_BINDINGS)}
${body('pool[u32(rows[r]) * W + c] = src[i];')}`;
const COPY_CODE = `${paramsDecl(3)}
${bindingDecls(COPY_BINDINGS)}
${body('pool[u32(dst_rows[r]) * W + c] = pool[u32(src_rows[r]) * W + c];')}`;

function grid(be: WebGpuBackend, elems: number): [number, number, number] {
  const groups = Math.ceil(elems / WG);
  const x = Math.min(groups, be.limits.maxComputeWorkgroupsPerDimension);
  return [x, Math.ceil(groups / x), 1];
}

function check(op: string, be: WebGpuBackend, pool: KernelTensor, rows: KernelTensor): number {
  if (pool.dtype !== 'f32') throw new TypeError(`${op} on webgpu needs an f32 pool, got ${pool.dtype}`);
  if (rows.dtype !== 'i32') throw new TypeError(`${op}: row indices must be i32, got ${rows.dtype}`);
  const bytes = pool.shape.reduce((a, x) => a * x, 1) * 4;
  if (bytes > be.bindingLimit)
    throw new RangeError(
      `${op} on webgpu: a pool layer of ${bytes} bytes exceeds the storage binding limit of ${be.bindingLimit} bytes (use fewer blocks per cache)`,
    );
  return pool.shape[pool.shape.length - 1]!;
}

export function writeRowsWebGpu(b: Backend, inputs: KernelTensor[]): KernelTensor[] {
  const be = asWebGpu(b, WRITE_ROWS_OP);
  const [pool, src, rows] = inputs as [KernelTensor, KernelTensor, KernelTensor];
  const W = check(WRITE_ROWS_OP, be, pool, rows);
  if (src.dtype !== 'f32') throw new TypeError(`${WRITE_ROWS_OP} on webgpu needs f32 rows, got ${src.dtype}`);
  const N = rows.shape[0]!;
  const g = grid(be, N * W);
  be.run(
    { label: 'mla_write_rows', code: WRITE_CODE, layout: layoutKey(WRITE_BINDINGS) },
    [be.bind(be.input(pool)), be.bind(be.input(src)), be.bind(be.input(rows))],
    [W, N, g[0]],
    g,
  );
  return [];
}

export function copyRowsWebGpu(b: Backend, inputs: KernelTensor[]): KernelTensor[] {
  const be = asWebGpu(b, COPY_ROWS_OP);
  const [pool, from, to] = inputs as [KernelTensor, KernelTensor, KernelTensor];
  const W = check(COPY_ROWS_OP, be, pool, from);
  const N = from.shape[0]!;
  const g = grid(be, N * W);
  be.run(
    { label: 'mla_copy_rows', code: COPY_CODE, layout: layoutKey(COPY_BINDINGS) },
    [be.bind(be.input(pool)), be.bind(be.input(from)), be.bind(be.input(to))],
    [W, N, g[0]],
    g,
  );
  return [];
}
