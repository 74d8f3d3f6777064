// `npm start`: trains the tiny preset on the built-in corpus for at most ~3 minutes on the CPU with a
// progress bar, then samples from the model it trained and prints where the run and its report are.
import { runSample, runTrain } from './run.js';

const seconds = Number(process.env.DSV3_DEMO_SECONDS ?? 150);
const r = await runTrain({ preset: 'tiny', timeLimit: seconds, ...(process.env.DSV3_DEMO_OUT && { out: process.env.DSV3_DEMO_OUT }) });
const prompt = 'The jury said';
const text = await runSample({ checkpoint: r.lastCheckpoint!, prompt, maxNewTokens: 160, temperature: 0.7, seed: 0 });
process.stdout.write(
  `\ntrained ${r.steps} steps of the tiny preset (byte-level DeepSeek-V3 architecture: MLA, DeepSeekMoE, MTP) on the Brown corpus.\n` +
    `sample> ${prompt}${text}\n\n` +
    `run:        ${r.runDir}\nreport:     ${r.reportPath}\nmetrics:    ${r.metricsPath}\ncheckpoint: ${r.lastCheckpoint}\n` +
    `sample more: npx tsx --conditions=@dsv3/source apps/trainer/src/cli.ts sample ${r.lastCheckpoint} --prompt "It was" --max-new-tokens 200\n`,
);
