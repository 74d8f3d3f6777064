// Module / Parameter: a tree of named parameters with state dicts, as in PyTorch.
import type { Backend } from '../backend.js';
import type { DType } from '../dtype.js';
import { fmt } from '../shape.js';
import { moveGrad } from '../autograd.js';
import type { Tensor } from '../tensor.js';

/** A trainable leaf tensor. Replacing `.value` (e.g. loading weights) keeps the parameter's identity. */
export class Parameter {
  constructor(public value: Tensor) {
    value.requireGrad(true);
  }
  get grad(): Tensor | null {
    return this.value.grad;
  }
  set grad(g: Tensor | null) {
    this.value.grad = g;
  }
  get shape(): readonly number[] {
    return this.value.shape;
  }
  /** Sets new values (same shape and dtype) without recording autograd history. */
  assign(t: Tensor): void {
    if (t.shape.length !== this.value.shape.length || t.shape.some((d, i) => d !== this.value.shape[i])) {
      throw new Error(`cannot assign ${fmt(t.shape)} to a parameter of shape ${fmt(this.value.shape)}`);
    }
    if (t.dtype !== this.value.dtype)
      throw new TypeError(`cannot assign ${t.dtype} to a ${this.value.dtype} parameter`);
    const fresh = t.detach();
    fresh.requireGrad(true);
    moveGrad(this.value, fresh);
    this.value = fresh;
  }
}

export interface ModuleOptions {
  dtype?: DType;
  backend?: Backend;
}

export abstract class Module {
  private readonly _params = new Map<string, Parameter>();
  private readonly _children = new Map<string, Module>();
  /** Non-trainable tensors that belong in the state dict (e.g. a gate's correction bias). */
  private readonly _buffers = new Map<string, Tensor>();
  training = true;

  protected param(name: string, value: Tensor): Parameter {
    const p = new Parameter(value);
    this._params.set(name, p);
    return p;
  }
  protected child<M extends Module>(name: string, m: M): M {
    this._children.set(name, m);
    return m;
  }
  protected buffer(name: string, value: Tensor): void {
    this._buffers.set(name, value);
  }
  protected getBuffer(name: string): Tensor {
    const b = this._buffers.get(name);
    if (!b) throw new Error(`no buffer named ${name}`);
    return b;
  }
  protected setBuffer(name: string, value: Tensor): void {
    if (!this._buffers.has(name)) throw new Error(`no buffer named ${name}`);
    this._buffers.set(name, value);
  }

  /** Parameters under their dotted names (children first-registered first). */
  namedParameters(prefix = ''): [string, Parameter][] {
    const out: [string, Parameter][] = [];
    for (const [n, p] of this._params) out.push([prefix + n, p]);
    for (const [n, c] of this._children) out.push(...c.namedParameters(`${prefix}${n}.`));
    return out;
  }
  parameters(): Parameter[] {
    return this.namedParameters().map(([, p]) => p);
  }
  namedBuffers(prefix = ''): [string, Tensor][] {
    const out: [string, Tensor][] = [];
    for (const [n, b] of this._buffers) out.push([prefix + n, b]);
    for (const [n, c] of this._children) out.push(...c.namedBuffers(`${prefix}${n}.`));
    return out;
  }
  /** Every module of the tree under its dotted name ('' for this one). */
  namedModules(prefix = ''): [string, Module][] {
    const out: [string, Module][] = [[prefix.replace(/\.$/, ''), this]];
    for (const [n, c] of this._children) out.push(...c.namedModules(`${prefix}${n}.`));
    return out;
  }
  modules(): Module[] {
    return [this, ...[...this._children.values()].flatMap((c) => c.modules())];
  }
  train(on = true): this {
    for (const m of this.modules()) m.training = on;
    return this;
  }
  eval(): this {
    return this.train(false);
  }
  zeroGrad(): void {
    for (const p of this.parameters()) p.value.zeroGrad();
  }
  numParameters(): number {
    return this.parameters().reduce((s, p) => s + p.value.size, 0);
  }

  /** Parameters and buffers by name. */
  stateDict(): Record<string, Tensor> {
    const out: Record<string, Tensor> = {};
    for (const [n, p] of this.namedParameters()) out[n] = p.value;
    for (const [n, b] of this.namedBuffers()) out[n] = b;
    return out;
  }

  /**
   * Loads tensors by name. With `strict` (default), missing and unexpected names and shape or dtype
   * mismatches are all collected into one error and nothing is loaded.
   */
  loadStateDict(
    state: Record<string, Tensor>,
    opts: { strict?: boolean } = {},
  ): { missing: string[]; unexpected: string[] } {
    const strict = opts.strict ?? true;
    const params = new Map(this.namedParameters());
    const buffers = new Map(this.namedBuffers());
    const missing = [...params.keys(), ...buffers.keys()].filter((n) => !(n in state));
    const unexpected = Object.keys(state).filter((n) => !params.has(n) && !buffers.has(n));
    const problems: string[] = [];
    for (const [n, t] of Object.entries(state)) {
      const cur = params.get(n)?.value ?? buffers.get(n);
      if (!cur) continue;
      if (t.shape.length !== cur.shape.length || t.shape.some((d, i) => d !== cur.shape[i]))
        problems.push(`${n}: shape ${fmt(t.shape)}, expected ${fmt(cur.shape)}`);
      else if (t.dtype !== cur.dtype) problems.push(`${n}: dtype ${t.dtype}, expected ${cur.dtype}`);
    }
    if (problems.length || (strict && (missing.length || unexpected.length))) {
      const lines = [
        ...problems,
        ...(strict ? missing.map((n) => `${n}: missing`) : []),
        ...(strict ? unexpected.map((n) => `${n}: unexpected`) : []),
      ];
      throw new Error(`state dict does not match the module (nothing was loaded):\n  ${lines.join('\n  ')}`);
    }
    for (const [n, t] of Object.entries(state)) {
      const p = params.get(n);
      if (p) p.assign(t);
      else if (buffers.has(n)) this.replaceBuffer(n, t);
    }
    return { missing, unexpected };
  }

  private replaceBuffer(dotted: string, t: Tensor): void {
    const parts = dotted.split('.');
    let m: Module = this;
    for (const p of parts.slice(0, -1)) m = m._children.get(p)!;
    m._buffers.set(parts[parts.length - 1]!, t.detach());
  }
}

/** An indexed list of modules, named "0", "1", ... in state dicts (as PyTorch's nn.ModuleList). */
export class ModuleList<M extends Module = Module> extends Module {
  readonly items: M[] = [];
  constructor(modules: Iterable<M> = []) {
    super();
    for (const m of modules) this.push(m);
  }
  push(m: M): void {
    this.child(String(this.items.length), m);
    this.items.push(m);
  }
  get length(): number {
    return this.items.length;
  }
  at(i: number): M {
    const m = this.items[i];
    if (!m) throw new RangeError(`ModuleList index ${i} out of range (length ${this.items.length})`);
    return m;
  }
  [Symbol.iterator](): Iterator<M> {
    return this.items[Symbol.iterator]();
  }
}
