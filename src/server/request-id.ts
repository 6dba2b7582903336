// Request ids: the logs follow a question by one from its arrival through batch, sample,
// store and answer. An HTTP client may bring its own (X-Request-Id, echoed back).
import type { Request } from 'express';

/** The client's X-Request-Id when it is a sane one; else undefined (the answerer makes one). */
export function requestIdOf(req: Request): string | undefined {
  const id = req.get('x-request-id');
  return id && /^[\w.:-]{1,128}$/.test(id) ? id : undefined;
}
