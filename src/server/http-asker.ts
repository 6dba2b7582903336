// Who asks over HTTP (/v1/ask and the OpenAI routes alike): the client's own X-Request-Id when
// sane (logged beside the server's request id, which is always the server's own and unique),
// the queue lane (one per address), the source the update share counts by (the API key, else
// the address), and a signal that fires when the client goes away before its answer: its
// question, if still waiting, is then dropped and logged as failed, as a WebSocket client's
// questions are when its connection closes.
import type { Request, Response } from 'express';
import type { AskRequest } from '../loop/answerer.ts';

export function httpAsker(req: Request, res: Response): Pick<AskRequest, 'clientRequestId' | 'lane' | 'source' | 'signal'> {
  const id = req.get('x-request-id');
  const address = req.socket.remoteAddress ?? 'unknown';
  const gone = new AbortController();
  res.once('close', () => {
    if (!res.writableFinished) gone.abort();
  });
  return {
    clientRequestId: id && /^[\w.:-]{1,128}$/.test(id) ? id : undefined,
    lane: `http:${address}`,
    source: (res.locals.key as string | undefined) ?? `addr:${address}`,
    signal: gone.signal,
  };
}

/** The response headers that name the request: ours (X-Request-Id, unique) and the client's own, when it gave one. */
export function requestIdHeaders(res: Response, ask: Pick<AskRequest, 'requestId' | 'clientRequestId'>): void {
  if (ask.requestId) res.set('X-Request-Id', ask.requestId);
  if (ask.clientRequestId) res.set('X-Client-Request-Id', ask.clientRequestId);
}
