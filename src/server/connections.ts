// Connection limits: open TCP connections (HTTP keep-alive and WebSocket alike) in total and
// per client address. A connection over a limit is not dropped silently: it is marked, and
// its first request (or WebSocket upgrade) is answered with too_many_connections (429 for
// one address over its limit, 503 for the server over its total) and the socket closed.
import type { Server } from 'node:http';
import type { Socket } from 'node:net';

export interface ConnectionLimits {
  maxConnections: number;
  maxConnectionsPerAddress: number;
}

export interface Refusal {
  status: 429 | 503;
  message: string;
}

export class ConnectionLimiter {
  private total = 0;
  private perAddress = new Map<string, number>();
  private refused = new WeakMap<Socket, Refusal>();

  constructor(private limits: ConnectionLimits) {}

  attach(server: Server): void {
    server.on('connection', (socket: Socket) => {
      try {
        this.onConnection(socket);
      } catch {
        socket.destroy();
      }
    });
  }

  private onConnection(socket: Socket): void {
    const address = socket.remoteAddress ?? 'unknown';
    const mine = this.perAddress.get(address) ?? 0;
    if (this.total >= this.limits.maxConnections)
      this.refused.set(socket, {
        status: 503,
        message: `the server has ${this.total} connections open, its limit (--max-connections ${this.limits.maxConnections}); retry later`,
      });
    else if (mine >= this.limits.maxConnectionsPerAddress)
      this.refused.set(socket, {
        status: 429,
        message: `${address} has ${mine} connections open, the limit per address (--max-connections-per-address ${this.limits.maxConnectionsPerAddress}); close some first`,
      });
    this.total++;
    this.perAddress.set(address, mine + 1);
    socket.once('close', () => {
      this.total--;
      const n = this.perAddress.get(address)! - 1;
      if (n) this.perAddress.set(address, n);
      else this.perAddress.delete(address);
    });
  }

  /** Why this connection is refused, or undefined when it is within the limits. */
  refusal(socket: Socket): Refusal | undefined {
    return this.refused.get(socket);
  }
}
