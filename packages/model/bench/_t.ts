import { setGemmThreads } from '@dsv3/core';
import { benchGeneration } from '../src/bench.js';
import { loadModel } from '../src/loader.js';
setGemmThreads(Number(process.env.TH ?? 2));
const model = loadModel('/work/ckpt/v3-mini', { weights: (process.env.DT ?? 'bf16') as 'bf16' });
const P = Number(process.env.P ?? 512);
for (let r = 0; r < 2; r++) await benchGeneration(model, { prefill: P, decode: 0 });
const R = Number(process.env.R ?? 3); const ms: number[] = []; const c0 = process.cpuUsage(); let tokens = '';
for (let r = 0; r < R; r++) { const g = await benchGeneration(model, { prefill: P, decode: 4 }); ms.push(P / g.prefillTokS * 1000); tokens = g.tokens.join(' '); }
const c = process.cpuUsage(c0);
ms.sort((a, b) => a - b);
console.log(`${process.env.TAG ?? ''} prefill ${P} ms median ${ms[R >> 1]!.toFixed(0)} min ${ms[0]!.toFixed(0)} (${(P / ms[R >> 1]! * 1000).toFixed(0)} tok/s) cpu/round ${((c.user + c.system) / 1000 / R).toFixed(0)} tokens ${tokens}`);
