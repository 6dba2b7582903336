// The JSON body reader of every POST route. strict: false, so that a body of `null` or "x" is
// read as the JSON it is, and the route's schema then says it is not the object it needs,
// rather than the reader calling it "not JSON". Any Content-Type is read as JSON.
import express from 'express';

export const jsonBody = (limit: number) => express.json({ limit, strict: false, type: () => true });
