#!/usr/bin/env node
// dsv3-serve: serve a model directory over OpenAI's HTTP API. The entry loads the program's modules (their
// loading grows V8's young generation to 4 MiB semi-spaces), then holds it there (core's
// young-generation.ts), makes V8 optimize hot functions sooner (core's tier-up.ts: the warm-up then
// compiles the decode path) and runs the program (cli-program.ts).
import { holdYoungGeneration, tierUpSooner } from '@dsv3/core';

void import('./cli-program.js').then(({ runProgram }) => {
  holdYoungGeneration();
  tierUpSooner();
  runProgram();
});
