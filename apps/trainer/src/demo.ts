// `npm start`: trains the tiny preset on the built-in corpus for at most ~3 minutes on the CPU with a
// progress bar, samples from the model it trained, then serves that checkpoint with `dsv3-serve` (the
// OpenAI-compatible server of apps/server, started as a user would) and asks it one chat completion.
import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { runSample, runTrain } from './run.js';

const seconds = Number(process.env.DSV3_DEMO_SECONDS ?? 150);
const r = await runTrain({
  preset: 'tiny',
  timeLimit: seconds,
  ...(process.env.DSV3_DEMO_OUT && { out: process.env.DSV3_DEMO_OUT }),
});
const checkpoint = r.lastCheckpoint!;
const prompt = 'The jury said';
const text = await runSample({ checkpoint, prompt, maxNewTokens: 160, temperature: 0.7, seed: 0 });
process.stdout.write(
  `\ntrained ${r.steps} steps of the tiny preset (byte-level DeepSeek-V3 architecture: MLA, DeepSeekMoE, MTP) on the Brown corpus.\n` +
    `sample> ${prompt}${text}\n\n` +
    `run:        ${r.runDir}\nreport:     ${r.reportPath}\nmetrics:    ${r.metricsPath}\ncheckpoint: ${checkpoint}\n` +
    `sample more: npx tsx --conditions=@dsv3/source apps/trainer/src/cli.ts sample ${checkpoint} --prompt "It was" --max-new-tokens 200\n`,
);

// Serve what was just trained: the server prints one line when ready; we send it one chat request.
const serverCli = fileURLToPath(new URL('../../server/src/cli.ts', import.meta.url));
const serveArgs = ['--model', checkpoint, '--served-model-name', 'tiny', '--port', '0'];
const server = spawn(process.execPath, ['--import', 'tsx', '--conditions=@dsv3/source', serverCli, ...serveArgs], {
  stdio: ['ignore', 'pipe', 'inherit'],
});
const ready = await new Promise<string>((resolve, reject) => {
  const lines = createInterface({ input: server.stdout! });
  lines.on('line', (line) => {
    const url = /dsv3-serve ready: .* on (http:\/\/\S+)/.exec(line)?.[1];
    if (url) resolve(url);
  });
  server.on('exit', (code) => reject(new Error(`dsv3-serve exited with code ${code} before it was ready`)));
});
const body = {
  model: 'tiny',
  messages: [{ role: 'user', content: prompt }],
  max_tokens: 120,
  temperature: 0.7,
  seed: 0,
};
const res = await fetch(`${ready}/v1/chat/completions`, {
  method: 'POST',
  headers: { 'content-type': 'application/json' },
  body: JSON.stringify(body),
});
const reply = (await res.json()) as { choices?: { message: { content: string } }[]; error?: { message: string } };
if (!res.ok || !reply.choices)
  throw new Error(`dsv3-serve answered ${res.status}: ${reply.error?.message ?? 'no choices'}`);
process.stdout.write(
  `\nserved by dsv3-serve at ${ready} (OpenAI API; chat page at ${ready}/)\n` +
    `chat> ${prompt}\n${reply.choices[0]!.message.content}\n\n` +
    `serve it yourself: npx tsx --conditions=@dsv3/source apps/server/src/cli.ts ${serveArgs.slice(0, 4).join(' ')} --port 8000\n`,
);
server.kill('SIGTERM');
await new Promise((resolve) => server.on('exit', resolve));
