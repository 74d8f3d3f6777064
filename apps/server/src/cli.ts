#!/usr/bin/env node
// dsv3-serve: serve a model directory over OpenAI's HTTP API. The entry holds V8's young generation (core's
// young-generation.ts) before the program's modules load — their loading would grow it from 2 MiB to 8 —
// then runs the program (cli-program.ts).
import { holdYoungGeneration } from '@dsv3/core';

holdYoungGeneration();
void import('./cli-program.js');
