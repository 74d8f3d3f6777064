// The task that quantizes a row range of a weight-product job's x into its A~ (the i16 route).

/**
 * Runs a TASK_PACK_I16X task (fields: i16-weight-gemm.ts, packI16XFields) with the module's packAI16.
 * Embedded in the workers' source (worker-pool.ts), so self-contained: no imports, the layout's
 * constants come in the fields.
 */
export function packI16XTask(packAI16: (...args: number[]) => void, f: ArrayLike<number>): void {
  const x = f[1] as number,
    rsX = f[2] as number,
    rows = f[3] as number,
    k = f[4] as number,
    kcMax = f[5] as number,
    r0 = f[7] as number,
    rowsPad = f[8] as number;
  let aq = f[6] as number;
  for (let pc = 0; pc < k; pc += kcMax) {
    const kc = Math.min(kcMax, k - pc);
    const panelRowBytes = Math.ceil(kc / (f[9] as number)) * (4 + (f[10] as number)); // i16APanelBytes(1, kc)
    packAI16(x + pc * 4, rsX, rows, kc, aq + r0 * panelRowBytes);
    aq += rowsPad * panelRowBytes;
  }
}
