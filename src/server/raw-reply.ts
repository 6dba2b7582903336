// A whole HTTP response written straight to a socket, for the places that have no express
// response to answer with: a refused WebSocket upgrade, a request Node's parser rejected
// (clientError), and the last resort when a handler failed before it could answer. The body
// is always our JSON error shape, and the socket is closed after it.
import { STATUS_CODES } from 'node:http';
import type { Duplex } from 'node:stream';
import type { ErrorCode } from '../protocol/errors.ts';
import { errorMessage } from '../protocol/messages.ts';

export function rawErrorReply(socket: Duplex, status: number, code: ErrorCode, message: string, extraHeaders = ''): void {
  if (socket.destroyed || !socket.writable) return void socket.destroy();
  const body = JSON.stringify(errorMessage(code, message));
  socket.end(
    `HTTP/1.1 ${status} ${STATUS_CODES[status] ?? 'Error'}\r\nConnection: close\r\nContent-Type: application/json; charset=utf-8\r\n` +
      `Content-Length: ${Buffer.byteLength(body)}\r\n${extraHeaders}\r\n${body}`,
  );
}
