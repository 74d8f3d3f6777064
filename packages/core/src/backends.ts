// The default backend new tensors are created on (the CPU unless set otherwise).
import type { Backend } from './backend.js';
import { cpu } from './cpu/index.js';

let current: Backend = cpu;

export function defaultBackend(): Backend {
  return current;
}

export function setDefaultBackend(backend: Backend): void {
  current = backend;
}
