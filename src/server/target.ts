// The request-target, parsed once and safely, before any route sees it. HTTP/1.1 allows four
// forms (RFC 9112 section 3.2): origin-form (/path?query), the one clients send a server;
// absolute-form (http://host/path), which a server must accept; authority-form (host:port),
// only for CONNECT; and asterisk-form (*), only for OPTIONS. Neither of the last two names a
// resource here. A target that is none of these, or whose path holds a %-escape that does not
// decode, is refused (400 invalid_message) before express or ws could throw on it: the
// routes only ever see a normalised origin-form URL.

export type Target = { ok: true; path: string; search: string } | { ok: false; message: string };

/** Longest target taken; a longer one is refused as not a target of this server (Node's header limit bounds it anyway). */
export const MAX_TARGET_LENGTH = 8192;

/** A path as RFC 3986 allows it (section 3.3): unreserved, sub-delims, ':', '@', '/', and %-escapes. */
const PATH = /^(?:[A-Za-z0-9\-._~!$&'()*+,;=:@/]|%[0-9A-Fa-f]{2})*$/;

const show = (raw: string) => JSON.stringify(raw.length > 80 ? `${raw.slice(0, 77)}...` : raw);

export function parseTarget(raw: string | undefined): Target {
  if (raw === undefined || raw === '') return { ok: false, message: 'the request has no target' };
  if (raw.length > MAX_TARGET_LENGTH) return { ok: false, message: `the request target has ${raw.length} characters; at most ${MAX_TARGET_LENGTH} are taken` };
  if (raw === '*') return { ok: false, message: 'the request target * (asterisk-form) names no resource here' };
  // The path as sent (the query is left to the URL parser, which escapes what it must).
  const rawPath = raw.startsWith('/') ? raw.split(/[?#]/, 1)[0]! : raw.replace(/^https?:\/\/[^/?#]*/i, '').split(/[?#]/, 1)[0]!;
  if (!PATH.test(rawPath))
    return { ok: false, message: `the request target ${show(raw)} holds characters a URL path may not (RFC 3986), or a % not followed by two hex digits` };
  let url: URL;
  try {
    if (raw.startsWith('/')) {
      // A fixed origin in front: the target is a path, never a scheme-relative URL (//host).
      url = new URL(`http://origin.invalid${raw}`);
    } else if (/^https?:\/\//i.test(raw)) {
      url = new URL(raw);
    } else {
      return { ok: false, message: `the request target ${show(raw)} is not a path (authority-form is only for CONNECT, which this server does not take)` };
    }
  } catch {
    return { ok: false, message: `the request target ${show(raw)} does not parse as a URL path` };
  }
  try {
    decodeURIComponent(url.pathname);
  } catch {
    return { ok: false, message: `the request target ${show(raw)} holds a %-escape that does not decode as UTF-8` };
  }
  return { ok: true, path: url.pathname, search: url.search };
}
