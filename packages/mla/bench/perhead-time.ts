// throwaway: absorbQueryCpu + absorbOutputCpu at V3-mini's prefill shape (512 rows, H 8, d_c 256, d_nope = d_v = 64), bf16 W
import { encodeBf16, setGemmThreads, tensor, cpu, Tensor, CpuStorage } from '@dsv3/core';
import { absorbedCpuWeights, absorbQueryCpu, absorbOutputCpu } from '../src/absorbed-cpu.js';
const thr = Number(process.argv[2] ?? 2), iters = Number(process.argv[3] ?? 30);
setGemmThreads(thr);
const H = 8, dn = 64, dv = 64, dc = 256, rows = 512;
const rnd = (n: number, s: number) => { const a = new Float32Array(n); let x = s; for (let i = 0; i < n; i++) { x = (x * 1103515245 + 12345) >>> 0; a[i] = x / 2 ** 32 - 0.5; } return a; };
const kvBv = rnd(H * (dn + dv) * dc, 1);
const bits = new Uint32Array(kvBv.buffer); for (let i = 0; i < bits.length; i++) bits[i] &= 0xffff0000; // bf16 values
const kvB = new Tensor(cpu, new CpuStorage(kvBv), [H * (dn + dv), dc], 'f32');
const a = absorbedCpuWeights(kvB, { H, dn, dv, dc }, null);
const q = new Tensor(cpu, new CpuStorage(rnd(rows * H * dn, 2)), [1, rows, H, dn], 'f32');
const o = new Tensor(cpu, new CpuStorage(rnd(rows * H * dc, 3)), [1, rows, H, dc], 'f32');
const d = { H, dn, dv, dc };
let chk = 0;
const times: number[] = [];
const c0 = process.cpuUsage();
for (let i = 0; i < iters; i++) {
  const t0 = performance.now();
  const y1 = absorbQueryCpu(q, a, d);
  const y2 = absorbOutputCpu(o, a, d);
  times.push(performance.now() - t0);
  chk += (y1.storage as CpuStorage).data[7]! + (y2.storage as CpuStorage).data[5]!;
}
const c = process.cpuUsage(c0);
const last = times.slice(5).sort((x, y) => x - y);
console.log(`threads ${thr}: median ${last[last.length >> 1]!.toFixed(2)} ms per query+output pair, process CPU ${((c.user + c.system) / 1000 / iters).toFixed(2)} ms/pair, chk ${chk}`);
process.exit(0);
