// Optional API keys for the /v1 routes (WebSocket and HTTP). Keys are compared in constant
// time: each presented key is hashed and checked against every key's hash, with no early
// exit, so neither a key's length nor its first wrong byte shows in the timing. A client is
// then known by its key's id (a short hash, never the key), which fairness and the update
// share count by.
import { createHash, timingSafeEqual } from 'node:crypto';
import type { IncomingMessage } from 'node:http';

/** The WebSocket subprotocol the server selects, and the prefix under which browsers, which cannot set headers, offer their key. */
export const WS_SUBPROTOCOL = 'ttrl.v1';
export const WS_KEY_PREFIX = 'ttrl.key.';

const digest = (s: string) => createHash('sha256').update(s).digest();

export class ApiKeys {
  private digests: Buffer[];

  constructor(keys: readonly string[]) {
    this.digests = [...new Set(keys)].map(digest);
  }

  get enabled(): boolean {
    return this.digests.length > 0;
  }

  /** The id of the key presented (`key:` and 12 hex digits of its hash), or null when it is not one of ours. */
  check(presented: string | undefined): string | null {
    if (presented === undefined) return null;
    const d = digest(presented);
    let match = false;
    for (const k of this.digests) match = timingSafeEqual(d, k) || match;
    return match ? `key:${d.toString('hex').slice(0, 12)}` : null;
  }

  /** The key a request presents: `Authorization: Bearer KEY`, else (WebSocket from a browser) a subprotocol `ttrl.key.KEY`. */
  static presented(req: IncomingMessage): string | undefined {
    const auth = req.headers.authorization;
    if (auth) return /^Bearer\s+(\S+)\s*$/i.exec(auth)?.[1] ?? '';
    const offered = String(req.headers['sec-websocket-protocol'] ?? '')
      .split(',')
      .map((p) => p.trim());
    return offered.find((p) => p.startsWith(WS_KEY_PREFIX))?.slice(WS_KEY_PREFIX.length);
  }
}
