#!/usr/bin/env node
// dsv3-model: inspect a checkpoint, compute logits, or generate, on the CPU or WebGPU. The entry loads the
// program's modules (their loading grows V8's young generation to 4 MiB semi-spaces), then holds it there
// (core's young-generation.ts) and runs the program (cli-program.ts).
import { holdYoungGeneration } from '@dsv3/core';

void import('./cli-program.js').then(({ runProgram }) => {
  holdYoungGeneration();
  runProgram();
});
