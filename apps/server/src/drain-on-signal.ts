// How the server processes stop: SIGTERM or SIGINT stops taking requests, lets the running ones finish
// (the caller's drain) and exits, 0 when the drain went through, 1 when it failed. A second signal
// while draining is ignored (the drain already under way decides the exit).

/** Installs the handlers; returns whether a signal has come (a stop under way, not a failure). */
export function exitAfterDrainOnSignal(drain: () => Promise<unknown>): () => boolean {
  let stopping = false;
  const stop = (signal: string): void => {
    if (stopping) return;
    stopping = true;
    process.stderr.write(`${signal}: draining (no new requests; finishing the running ones)\n`);
    drain().then(
      () => process.exit(0),
      (e: unknown) => {
        process.stderr.write(`drain failed: ${String(e)}\n`);
        process.exit(1);
      },
    );
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
  return () => stopping;
}
