// The transport of a one-rank world: collectives need no messages, and there is no peer to send to.
import { StreamTransport } from './transport.js';

export class SoloTransport extends StreamTransport {
  readonly kind = 'local' as const;
  constructor() {
    super(0, 1);
  }
  protected write(): Promise<void> {
    return Promise.reject(new Error('a one-rank world has no peer to send to'));
  }
  protected async shutdown(): Promise<void> {}
}
