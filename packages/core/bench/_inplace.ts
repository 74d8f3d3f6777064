import { sgemm, sgemmMany, setGemmThreads } from '../src/cpu/gemm/index.js';
import { takeF32 } from '../src/cpu/pool.js';
import { isResidentOutput } from '../src/cpu/resident-outputs.js';
setGemmThreads(Number(process.argv[2] ?? 1));
const shapes: [number, number, number][] = [
  [1024, 320, 128],
  [1024, 128, 320],
  [320, 128, 1024],
  [1024, 192, 96],
];
const rnd = (a: Float32Array) => {
  for (let i = 0; i < a.length; i++) a[i] = Math.random() - 0.5;
  return a;
};
for (const [m, n, k] of shapes) {
  const ar = rnd(takeF32(m * k)),
    br = rnd(takeF32(k * n)),
    cr = takeF32(m * n);
  const gr = rnd(takeF32(m * n));
  const gh = gr.slice();
  const ah = ar.slice(),
    bh = br.slice(),
    ch = new Float32Array(m * n);
  if (!isResidentOutput(ar) || !isResidentOutput(cr)) throw new Error('not resident');
  const t = {
    host: [] as number[],
    res: [] as number[],
    resHostC: [] as number[],
    many: [] as number[],
    manyHost: [] as number[],
  };
  for (let r = 0; r < 60; r++) {
    let t0 = performance.now();
    sgemm({ m, n, k, a: ah, b: bh, c: ch });
    t.host.push(performance.now() - t0);
    t0 = performance.now();
    sgemm({ m, n, k, a: ar, b: br, c: cr });
    t.res.push(performance.now() - t0);
    t0 = performance.now();
    sgemm({ m, n, k, a: ar, b: br, c: ch });
    t.resHostC.push(performance.now() - t0);
    t0 = performance.now();
    sgemmMany([
      { m, n, k, a: ar, b: br, c: cr },
      { m: k, n, k: m, a: ar, transA: true, b: gr, c: takeF32(k * n) },
    ]);
    t.many.push(performance.now() - t0);
    t0 = performance.now();
    sgemmMany([
      { m, n, k, a: ah, b: bh, c: ch },
      { m: k, n, k: m, a: ah, transA: true, b: gh, c: new Float32Array(k * n) },
    ]);
    t.manyHost.push(performance.now() - t0);
  }
  const med = (x: number[]) => [...x].sort((p, q) => p - q)[x.length >> 1]!.toFixed(3);
  console.log(
    `${m}x${n}x${k}: host ${med(t.host)} resident ${med(t.res)} resident-A/B host-C ${med(t.resHostC)} | sgemmMany pair host ${med(t.manyHost)} resident ${med(t.many)} ms`,
  );
}
