// A handle to one asynchronous operation (c10d's Work): the call returns at once with it, the data
// moves in the background, and wait() resolves with the result or throws an error naming the rank
// and the operation.
import type { OpName } from './errors.js';

export class Work<T> {
  private done = false;
  private error: Error | null = null;
  private readonly promise: Promise<T>;

  constructor(
    readonly op: OpName,
    /** This operation's sequence number in its group (collectives) or on its (peer, tag) (send/recv). */
    readonly seq: number,
    /** The id of the group it runs in (0 is the world). */
    readonly groupId: number,
    promise: Promise<T>,
    private readonly onTimeout: (work: Work<T>, timeoutMs: number) => Error,
  ) {
    this.promise = promise.then(
      (v) => {
        this.done = true;
        return v;
      },
      (e: Error) => {
        this.done = true;
        this.error = e;
        throw e;
      },
    );
    this.promise.catch(() => undefined); // failures surface through wait(), not as unhandled rejections
  }

  /** True once the operation finished (successfully or not). */
  isCompleted(): boolean {
    return this.done;
  }

  /** The failure, once the operation failed. */
  exception(): Error | null {
    return this.error;
  }

  /**
   * The result. With `timeoutMs`, waits at most that long; past it the group is aborted (as c10d
   * does), so peers fail too instead of hanging.
   */
  wait(timeoutMs?: number): Promise<T> {
    if (timeoutMs === undefined || this.done) return this.promise;
    if (!(timeoutMs > 0))
      throw new RangeError(`wait(timeoutMs): expected a positive number of milliseconds, got ${timeoutMs}`);
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => reject(this.onTimeout(this, timeoutMs)), timeoutMs);
      this.promise.then(
        (v) => {
          clearTimeout(timer);
          resolve(v);
        },
        (e) => {
          clearTimeout(timer);
          reject(e);
        },
      );
    });
  }
}
