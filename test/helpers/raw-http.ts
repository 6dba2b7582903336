// A raw HTTP/1.1 exchange over a TCP socket: the bytes a hostile or broken client would send,
// and what came back, parsed just enough to judge it (status, headers, body). Used where
// fetch and ws would refuse to send the request at all.
import { connect } from 'node:net';

export interface RawResponse {
  /** Everything the server wrote. */
  raw: Buffer;
  status?: number;
  headers: Record<string, string>;
  body: string;
  /** The first response was complete (or its head was, for a stream or a 101). */
  complete: boolean;
}

function parse(raw: Buffer, noBody = false): RawResponse {
  const r: RawResponse = { raw, headers: {}, body: '', complete: false };
  const end = raw.indexOf('\r\n\r\n');
  if (end < 0) return r;
  const [statusLine, ...lines] = raw.subarray(0, end).toString('latin1').split('\r\n');
  const m = /^HTTP\/1\.[01] (\d{3})/.exec(statusLine!);
  if (!m) return r;
  r.status = Number(m[1]);
  for (const l of lines) {
    const i = l.indexOf(':');
    if (i > 0) r.headers[l.slice(0, i).trim().toLowerCase()] = l.slice(i + 1).trim();
  }
  const rest = raw.subarray(end + 4);
  const type = r.headers['content-type'] ?? '';
  if (r.status === 101 || type.startsWith('text/event-stream') || noBody) {
    r.complete = true;
    r.body = rest.toString('utf8');
  } else if (r.headers['content-length'] !== undefined) {
    const n = Number(r.headers['content-length']);
    r.body = rest.subarray(0, n).toString('utf8');
    r.complete = rest.length >= n;
  } else if (/chunked/i.test(r.headers['transfer-encoding'] ?? '')) {
    let body = '';
    let at = 0;
    for (;;) {
      const eol = rest.indexOf('\r\n', at);
      if (eol < 0) break;
      const size = parseInt(rest.subarray(at, eol).toString('latin1'), 16);
      if (Number.isNaN(size)) break;
      if (size === 0) {
        r.complete = true;
        break;
      }
      if (rest.length < eol + 2 + size) break;
      body += rest.subarray(eol + 2, eol + 2 + size).toString('utf8');
      at = eol + 2 + size + 2;
    }
    r.body = body;
  } else if (r.status === 204 || r.status === 304) {
    r.complete = true;
  }
  return r;
}

/**
 * Sends the bytes, half-closes (unless keepOpen), and reads until the first response is
 * complete, the server closes, or the time runs out. noBody: the reply to a HEAD, complete at its head.
 */
export function rawExchange(
  port: number,
  request: Buffer | string,
  o: { timeoutMs?: number; keepOpen?: boolean; noBody?: boolean } = {},
): Promise<RawResponse & { closed: boolean; timedOut: boolean }> {
  return new Promise((resolve) => {
    const socket = connect(port, '127.0.0.1');
    const chunks: Buffer[] = [];
    let done = false;
    const finish = (closed: boolean, timedOut: boolean) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      socket.destroy();
      resolve({ ...parse(Buffer.concat(chunks), o.noBody), closed, timedOut });
    };
    const timer = setTimeout(() => finish(false, true), o.timeoutMs ?? 5000);
    socket.on('error', () => finish(true, false));
    socket.on('close', () => finish(true, false));
    socket.on('data', (d) => {
      chunks.push(d);
      if (parse(Buffer.concat(chunks), o.noBody).complete) finish(false, false);
    });
    socket.on('connect', () => {
      socket.write(request);
      if (!o.keepOpen) socket.end();
    });
  });
}
