import { setGemmThreads } from '@dsv3/core';
import { benchGeneration } from '../src/bench.js';
import { loadModel } from '../src/loader.js';
setGemmThreads(2);
const G = globalThis as any;
const model = loadModel('/work/ckpt/v3-mini', { weights: (process.env.DT ?? 'bf16') as 'bf16' });
for (let r = 0; r < 2; r++) { G.__old = r % 2 === 0; await benchGeneration(model, { prefill: 512, decode: 0 }); }
G.__T = { old: 0, new: 0 }; const R = 6; const tok: string[] = []; const pm: Record<string, number[]> = { old: [], new: [] };
for (let r = 0; r < R; r++) { G.__old = r % 2 === 0; const t = performance.now(); const g = await benchGeneration(model, { prefill: 512, decode: 2 }); pm[G.__old ? 'old' : 'new']!.push(performance.now() - t); tok.push(g.tokens.join(',')); }
console.log('combine ms per prefill: old', (G.__T.old / (R / 2)).toFixed(1), 'new', (G.__T.new / (R / 2)).toFixed(1), 'tokens identical:', new Set(tok).size === 1, 'gen ms old', pm.old!.map(Math.round).join('/'), 'new', pm.new!.map(Math.round).join('/'));
