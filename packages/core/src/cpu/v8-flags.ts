// V8 flags set at run time, through process.getBuiltinModule (so browser bundles never see node:v8).
// Only flags V8 reads when it uses them, not at its start, take effect: a wasm feature before a module is
// compiled (sgemm-kernel.ts), the young generation's growth factor (young-generation.ts).

/** Sets V8 `flags` in this process; false outside Node or where V8 refused them. */
export function setV8Flags(flags: string): boolean {
  const proc = (globalThis as { process?: { getBuiltinModule?: (id: string) => unknown } }).process;
  try {
    const v8 = proc?.getBuiltinModule?.('node:v8') as { setFlagsFromString?: (flags: string) => void } | undefined;
    if (typeof v8?.setFlagsFromString !== 'function') return false;
    v8.setFlagsFromString(flags);
    return true;
  } catch {
    return false;
  }
}
