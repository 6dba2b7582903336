// Who asks over HTTP (/v1/ask and the OpenAI routes alike): the request id the logs follow a
// question by (the client's own X-Request-Id when sane, else the answerer makes one), the
// queue lane (one per address) and the source the update share counts by (the API key, else
// the address).
import type { Request, Response } from 'express';
import type { AskRequest } from '../loop/answerer.ts';

export function httpAsker(req: Request, res: Response): Pick<AskRequest, 'requestId' | 'lane' | 'source'> {
  const id = req.get('x-request-id');
  const address = req.socket.remoteAddress ?? 'unknown';
  return {
    requestId: id && /^[\w.:-]{1,128}$/.test(id) ? id : undefined,
    lane: `http:${address}`,
    source: (res.locals.key as string | undefined) ?? `addr:${address}`,
  };
}
