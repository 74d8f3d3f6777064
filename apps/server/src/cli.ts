#!/usr/bin/env node
// dsv3-serve: serve a model directory over OpenAI's HTTP API. The entry settles the process for inference
// (core's inference-process.ts) before the program's modules load — their loading is what would grow V8's
// young generation — then runs the program (cli-program.ts).
import { prepareInferenceProcess } from '@dsv3/core';

prepareInferenceProcess();
void import('./cli-program.js');
