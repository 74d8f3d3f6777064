// The tiled WGSL GEMM against the CPU: ragged shapes (not multiples of any tile), every transpose
// combination, batched with broadcasting, each tile configuration, f16 / bf16 inputs.
import { afterAll, describe, expect, it } from 'vitest';
import { cpu, type DType, type Tensor } from '../../src/index.js';
import { exec } from '../../src/ops/exec.js';
import {
  tiledGemm,
  TILE_LARGE,
  TILE_MEDIUM,
  TILE_SMALL_M,
  TILE_SOFTWARE,
  type TileConfig,
} from '../../src/webgpu/kernels/matmul.js';
import { selfTestVariants, sgmmCode } from '../../src/webgpu/kernels/matmul-subgroup.js';
import { acquireGpu, compareOp, cpuT, relErr, rnd, toGpu } from './gpu.js';

const gpu = await acquireGpu();
afterAll(() => gpu?.dispose());

const f = (shape: number[], seed: number, dtype: DType = 'f32'): Tensor =>
  cpuT(
    dtype,
    shape,
    rnd(
      shape.reduce((a, b) => a * b, 1),
      seed,
    ),
  );
const operands = (
  m: number,
  n: number,
  k: number,
  tA: boolean,
  tB: boolean,
  seed: number,
  batchA: number[] = [],
  batchB: number[] = [],
  dtype: DType = 'f32',
): [Tensor, Tensor] => [
  f([...batchA, ...(tA ? [k, m] : [m, k])], seed, dtype),
  f([...batchB, ...(tB ? [n, k] : [k, n])], seed + 1, dtype),
];

/** Calls of `name` in `code`: the template text (if any) and the top-level arguments. */
function replaceCalls(code: string, name: string, make: (args: string[]) => string): string {
  let out = '';
  let at = 0;
  for (;;) {
    const i = code.indexOf(name, at);
    if (i < 0) return out + code.slice(at);
    out += code.slice(at, i);
    let j = i + name.length;
    if (code[j] === '<') {
      let depth = 0;
      for (; j < code.length; j++) {
        if (code[j] === '<') depth++;
        else if (code[j] === '>' && --depth === 0) break;
      }
      j++;
    }
    // j at '('
    const args: string[] = [];
    let depth = 0;
    let start = j + 1;
    for (j = j + 1; j < code.length; j++) {
      const ch = code[j];
      if (ch === '(') depth++;
      else if (ch === ')') {
        if (depth === 0) break;
        depth--;
      } else if (ch === ',' && depth === 0) {
        args.push(code.slice(start, j).trim());
        start = j + 1;
      }
    }
    args.push(code.slice(start, j).trim());
    out += make(args);
    at = j + 1;
  }
}

/**
 * The subgroup-matrix GEMM with its matrix types and builtins replaced by scalar stand-ins (the
 * index arithmetic and the argument types are kept), so the rest of the shader can be compiled on
 * adapters without cooperative matrices.
 */
function stubSubgroupMatrix(code: string): string {
  let c = code
    .replace('enable chromium_experimental_subgroup_matrix;\n', '')
    .replace(/diagnostic\(off, chromium_experimental\.subgroup_matrix_uniformity\);\n/, '');
  c = c.replace(/: subgroup_matrix_result<[^>]*>;/g, ': f32;');
  const at = (ptr: string, off: string, stride: string, flag?: string): string =>
    `${ptr.replace('&', '')}[(${off}) + (${stride}) * ${flag ? `select(0u, 0u, ${flag})` : '0u'}]`;
  c = replaceCalls(c, 'subgroupMatrixLoad', (a) =>
    a.length === 4 ? at(a[0]!, a[1]!, a[3]!, a[2]) : at(a[0]!, a[1]!, a[2]!),
  );
  c = replaceCalls(c, 'subgroupMatrixMultiplyAccumulate', (a) => `(f32(${a[0]}) * f32(${a[1]}) + ${a[2]})`);
  c = replaceCalls(c, 'subgroupMatrixStore', (a) =>
    a.length === 5 ? `${at(a[0]!, a[1]!, a[4]!, a[3])} = ${a[2]}` : `${at(a[0]!, a[1]!, a[3]!)} = ${a[2]}`,
  );
  return c;
}

describe.skipIf(!gpu)('webgpu matmul vs cpu', () => {
  const be = gpu!;

  it('ragged shapes, all transpose combinations', async () => {
    let seed = 1;
    for (const [m, n, k] of [
      [1, 1, 1],
      [17, 33, 65],
      [64, 48, 40],
      [5, 3, 200],
      [130, 9, 31],
    ]) {
      for (const transA of [false, true]) {
        for (const transB of [false, true])
          await compareOp(be, 'matmul', operands(m!, n!, k!, transA, transB, (seed += 2)), { transA, transB });
      }
    }
  });

  it('larger products: 127x129x131 and 256x512x384', async () => {
    await compareOp(be, 'matmul', operands(127, 129, 131, false, false, 50), { transA: false, transB: false });
    await compareOp(be, 'matmul', operands(127, 129, 131, true, true, 52), { transA: true, transB: true });
    await compareOp(be, 'matmul', operands(256, 512, 384, false, true, 54), { transA: false, transB: true });
  });

  it('batched with broadcasting', async () => {
    await compareOp(be, 'matmul', operands(5, 9, 7, false, false, 60, [2, 1], [3]), { transA: false, transB: false });
    await compareOp(be, 'matmul', operands(12, 20, 16, true, false, 62, [3], [2, 1]), { transA: true, transB: false });
    await compareOp(be, 'matmul', operands(8, 8, 8, false, true, 64, [4], []), { transA: false, transB: true });
    await compareOp(be, 'matmul', operands(3, 4, 5, false, false, 66, [2, 1, 3], [1, 4, 1]), {
      transA: false,
      transB: false,
    });
  });

  it('K = 0 gives zeros; empty outputs', async () => {
    await compareOp(be, 'matmul', [f([3, 0], 70), f([0, 4], 71)], { transA: false, transB: false }, { exact: true });
    await compareOp(be, 'matmul', [f([0, 5], 72), f([5, 4], 73)], { transA: false, transB: false }, { exact: true });
  });

  it('f16 and bf16 operands (f32 accumulation)', async () => {
    for (const dtype of ['f16', 'bf16'] as DType[]) {
      await compareOp(be, 'matmul', operands(33, 40, 72, false, false, 80, [], [], dtype), {
        transA: false,
        transB: false,
      });
      await compareOp(be, 'matmul', operands(20, 17, 9, true, true, 82, [2], [2], dtype), {
        transA: true,
        transB: true,
      });
    }
  });

  it('weight-only bf16: f32 activations against a bf16 weight, f32 result', async () => {
    let seed = 84;
    for (const [m, n, k, transB] of [
      [33, 40, 72, true],
      [7, 129, 65, true],
      [20, 17, 9, false],
    ] as const) {
      const a = f([m, k], seed++);
      const w = cpuT('bf16', transB ? [n, k] : [k, n], rnd(n * k, seed++));
      await compareOp(be, 'matmul', [a, w], { transA: false, transB });
    }
  });

  it('every tile configuration and load path agrees with the cpu', async () => {
    const tiles: TileConfig[] = [TILE_LARGE, TILE_MEDIUM, TILE_SMALL_M, TILE_SOFTWARE];
    let seed = 90;
    for (const tile of tiles) {
      // aligned (vec4 loads/stores) and ragged (scalar) shapes
      for (const [m, n, k] of [
        [136, 132, 36],
        [67, 45, 23],
      ]) {
        for (const [transA, transB] of [
          [false, false],
          [true, true],
        ] as const) {
          const [a, b] = operands(m!, n!, k!, transA, transB, (seed += 2));
          const want = exec('matmul', [a, b], { transA, transB }, cpu)[0]!.dataSync();
          const r = tiledGemm(be, {
            a: be.input(toGpu(a, be)),
            b: be.input(toGpu(b, be)),
            aType: 'f32',
            bType: 'f32',
            aShape: a.shape,
            bShape: b.shape,
            transA,
            transB,
            tile,
          });
          const got = (await be.read(r.out, 'f32', m! * n!)) as Float32Array;
          expect(
            relErr(got, want),
            `tile ${JSON.stringify(tile)} ${m}x${n}x${k} tA=${transA} tB=${transB}`,
          ).toBeLessThanOrEqual(1e-5);
        }
      }
    }
  });

  it.skipIf(!gpu?.features.shaderF16 || !gpu?.features.subgroups)(
    'the subgroup-matrix kernel builds here with its matrix builtins stubbed out',
    async () => {
      // The real kernel needs chromium-experimental-subgroup-matrix (not on lavapipe); this checks
      // everything around the matrix ops: f16 tile staging, vectorised loads, index arithmetic,
      // barriers and the bounds-checked epilogue, for every variant and both builtin spellings.
      const be = gpu!;
      for (const legacy of [false, true]) {
        for (const config of [
          { componentType: 'f16', resultComponentType: 'f32', M: 16, N: 16, K: 16 },
          { componentType: 'f16', resultComponentType: 'f32', M: 8, N: 8, K: 8 },
        ]) {
          for (const v of selfTestVariants(config, legacy, be.adapterInfo.subgroupMaxSize ?? 32)) {
            const code = sgmmCode(v);
            expect(code).toContain('subgroupMatrixMultiplyAccumulate(');
            expect(/_major>\(&[AB]s/.test(code)).toBe(!legacy);
            const r = await be.pipelines.tryBuild(stubSubgroupMatrix(code), 'uwrr', 'sgmm-stub');
            expect(r.error, JSON.stringify(v)).toBe('');
          }
        }
      }
    },
  );
});
