// Child process of resident-gemv.test.ts: GEMV through the plain-SIMD kernel (argument `plain`:
// gemmConfig.relaxed = false, the fallback where a runtime lacks relaxed SIMD) or the relaxed-SIMD
// multiply-add kernel (no argument) against float64; prints one JSON line.
import { decodeBf16, encodeBf16 } from '../../src/dtype.js';
import { randomUniform, relativeError } from '../../src/testing.js';
import { gemmConfig } from '../../src/cpu/gemm/config.js';
import { gemmInfo, setGemmThreads, weightProduct } from '../../src/cpu/gemm/index.js';

if (process.argv.includes('plain')) gemmConfig.relaxed = false;
setGemmThreads(2);
gemmConfig.threadMinWork = 0;
let worst = 0;
let seed = 100;
for (const [m, n, k] of [
  [1, 5, 9],
  [3, 130, 130],
  [4, 33, 1000],
  [2, 257, 17],
] as const) {
  const x = Float32Array.from(randomUniform(m * k, seed++));
  const wf = Float32Array.from(randomUniform(n * k, seed++));
  for (const w of [wf, encodeBf16(wf)]) {
    const exact = w instanceof Uint16Array ? decodeBf16(w) : w;
    const want = new Float64Array(m * n);
    for (let i = 0; i < m; i++)
      for (let j = 0; j < n; j++) {
        let s = 0;
        for (let p = 0; p < k; p++) s += x[i * k + p]! * exact[j * k + p]!;
        want[i * n + j] = s;
      }
    const y = new Float32Array(m * n);
    weightProduct({ m, n, k, x, w, y });
    worst = Math.max(worst, relativeError(y, want));
  }
}
// FP8 (E4M3 bytes, 128x128 block scales), GEMV and the widened GEMM above gemvMaxM rows.
const e4m3 = (b: number): number => {
  const e = (b >> 3) & 15,
    f = b & 7,
    v = e === 0 ? f * 2 ** -9 : (1 + f / 8) * 2 ** (e - 7);
  return b & 0x80 ? -v : v;
};
for (const [m, n, k] of [
  [1, 5, 9],
  [3, 131, 300],
  [6, 20, 257],
] as const) {
  const x = Float32Array.from(randomUniform(m * k, seed++));
  const w = Uint8Array.from(randomUniform(n * k, seed++, 0, 126), Math.floor);
  const sc = Float32Array.from(randomUniform(Math.ceil(n / 128) * Math.ceil(k / 128), seed++, 0.01, 0.1));
  const want = new Float64Array(m * n);
  for (let i = 0; i < m; i++)
    for (let j = 0; j < n; j++) {
      let s = 0;
      for (let p = 0; p < k; p++)
        s += x[i * k + p]! * e4m3(w[j * k + p]!) * sc[Math.floor(j / 128) * Math.ceil(k / 128) + Math.floor(p / 128)]!;
      want[i * n + j] = s;
    }
  const y = new Float32Array(m * n);
  weightProduct({ m, n, k, x, w, scales: sc, y });
  worst = Math.max(worst, relativeError(y, want));
}
console.log(JSON.stringify({ relaxed: gemmInfo().relaxedSimd, worst }));
process.exit(0);
