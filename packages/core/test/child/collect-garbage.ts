// For the child processes run with --expose-gc: full collections with the tasks between them in which
// FinalizationRegistry callbacks run.
const gc = (globalThis as { gc?: () => void }).gc;

export async function collectGarbage(): Promise<void> {
  if (!gc) throw new Error('run with --expose-gc');
  for (let i = 0; i < 4; i++) {
    gc();
    await new Promise((r) => setTimeout(r, 10)); // finalizers run between tasks
  }
}
