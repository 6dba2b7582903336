// Canonical answers, so that equivalent answers vote together. One normaliser for every
// task and every reader (votes, scoring against true answers, replay reports), so a label
// and a truth are always compared in the same form.
//
// An answer goes through the rewrites below in order, then takes its value form:
// - a number is exact decimal text: `+5`, `05`, `5.0`, `1,000` (digits grouped in threes),
//   `1e2` are `5`, `5`, `5`, `1000`, `100`;
// - a rational (`a/b`, `\frac{a}{b}`, `\dfrac12`, signs and decimals allowed) is reduced and
//   written as its decimal when that terminates, else as `p/q`: `\frac{2}{4}` = `1/2` =
//   `0.5`, `\frac{2}{6}` = `1/3`; `0.333` stays itself (it is not 1/3);
// - a lone letter, bare or in parentheses, is upper-cased: `(b)` = `B`, the way choices
//   are stated. Longer answers keep their case: in algebra `x+1` and `X+1` differ, and so
//   do units (`mL`, `Ml`), so case folding is not applied to them.
// Everything else stays text, compared exactly. normalizeAnswer(normalizeAnswer(a)) is
// normalizeAnswer(a), so answers may be normalised more than once on their way.
import { braceMatches, commandArgument } from './latex.ts';

type Rewrite = { name: string; apply: (s: string) => string };

/** Repeats a rewrite until it changes nothing (`$$5$$`, `$\(5\)$`). */
const fixpoint = (f: (s: string) => string) => (s: string) => {
  for (let prev = ''; prev !== s;) [prev, s] = [s, f(s)];
  return s;
};

/**
 * `\text{X}` and its kind become X, nested ones too, in one pass; a unit in \text after a
 * value at the end is not part of the value and goes whole (5\text{ cm} is 5). A group
 * that never closes is left as written.
 */
function unwrapTextCommands(s: string): string {
  const close = braceMatches(s);
  const drop = new Uint8Array(s.length);
  const lastText = s.trimEnd().length - 1;
  const re = new RegExp(String.raw`\\(?:${TEXT_COMMANDS.join('|')})(?![A-Za-z])\s*`, 'g');
  for (let m = re.exec(s); m; m = re.exec(s)) {
    const open = m.index + m[0].length;
    const end = s[open] === '{' ? close[open]! : -1;
    if (end < 0) continue;
    let before = m.index - 1;
    while (before >= 0 && s[before] === ' ') before--;
    const unit = end === lastText && before >= 0 && /\d/.test(s[before]!) && /^\s*[A-Za-z ]+$/.test(s.slice(open + 1, end));
    drop.fill(1, m.index, unit ? end + 1 : open + 1);
    drop[end] = 1;
  }
  let out = '';
  for (let i = 0; i < s.length; i++) if (!drop[i]) out += s[i];
  return out;
}

/** `\frac` and `\sqrt` with their arguments braced, whatever LaTeX's shorthand was. */
function braceArguments(s: string): string {
  const re = /\\(frac|sqrt)(?![A-Za-z])/g;
  let out = '';
  let from = 0;
  for (let m = re.exec(s); m; m = re.exec(s)) {
    const args: string[] = [];
    let end = m.index + m[0].length;
    if (m[1] === 'sqrt' && s[end] === '[') continue; // an n-th root: leave it as written
    for (let k = 0; k < (m[1] === 'frac' ? 2 : 1); k++) {
      const a = commandArgument(s, end);
      if (!a) break;
      args.push(a.content);
      end = a.end;
    }
    if (args.length !== (m[1] === 'frac' ? 2 : 1)) continue;
    out += s.slice(from, m.index) + `\\${m[1]}` + args.map((a) => `{${braceArguments(a.trim())}}`).join('');
    from = re.lastIndex = end;
  }
  return out + s.slice(from);
}

const MATH_DELIMITERS: [string, string][] = [
  ['$$', '$$'],
  ['$', '$'],
  ['\\(', '\\)'],
  ['\\[', '\\]'],
];
const TEXT_COMMANDS = ['text', 'textbf', 'textit', 'textrm', 'mathrm', 'mathbf', 'mathit', 'mbox', 'boxed', 'fbox'];

/** In order; each one job. */
const REWRITES: Rewrite[] = [
  { name: 'spacing', apply: (s) => s.replace(/\s+/g, ' ').trim() },
  {
    name: 'math delimiters', // $5$, \(5\), \[5\] around the whole answer
    apply: fixpoint((s) => {
      for (const [open, close] of MATH_DELIMITERS)
        if (s.length > open.length + close.length && s.startsWith(open) && s.endsWith(close)) return s.slice(open.length, -close.length).trim();
      return s;
    }),
  },
  { name: 'trailing period', apply: (s) => s.replace(/(?<!\\)\s*\.+$/, '') },
  { name: 'text commands', apply: unwrapTextCommands },
  { name: 'minus sign', apply: (s) => s.replace(/\u2212/g, '-') },
  // Thin spaces go (1\,000 is a number); word spaces stay spaces.
  { name: 'layout commands', apply: (s) => s.replace(/\\(?:displaystyle|left|right)(?![A-Za-z])|\\[!,;:]/g, '').replace(/\\q?quad(?![A-Za-z])|\\ |~/g, ' ') },
  { name: 'fraction styles', apply: (s) => s.replace(/\\[dt]frac(?![A-Za-z])/g, '\\frac') },
  { name: 'braced arguments', apply: braceArguments },
  { name: 'degrees', apply: (s) => s.replace(/\^\s*\{\s*\\circ\s*\}|\^\s*\\circ(?![A-Za-z])|°/g, '') },
  { name: 'percent and currency', apply: (s) => s.replace(/\\%/g, '%').replace(/\\?\$/g, '') },
  { name: 'braced comma', apply: (s) => s.replace(/\{,\}/g, ',') }, // 1{,}000
  // x = 5 and k=3 answer with a value: the value is the answer.
  { name: 'variable assignment', apply: (s) => s.replace(/^[A-Za-z](?:_\{?[A-Za-z0-9]+\}?)?\s*=\s*(?=[^=]+$)/, '') },
  // Spaces only matter between words ("x y", "5 cm", "café au lait"): around operators,
  // brackets and commands they go.
  {
    name: 'spaces around symbols',
    apply: (s) =>
      s
        .replace(/\s+/g, ' ')
        .replace(/ *([^\p{L}\p{N}_ ]) */gu, '$1')
        .trim(),
  },
  { name: 'trailing period again', apply: (s) => s.replace(/(?<!\\)\.+$/, '') },
];

// ---------------------------------------------------------------------------------------
// Values

const DECIMAL = /^([+-]?)(\d*)(?:\.(\d*))?$/;

/** An exact decimal as a scaled integer: value = n / 10^scale. Null when s is not one. */
function parseDecimal(s: string): { n: bigint; scale: number } | null {
  const m = DECIMAL.exec(s);
  if (!m || !(m[2] || m[3])) return null;
  const frac = m[3] ?? '';
  const n = BigInt((m[2] || '0') + frac);
  return { n: m[1] === '-' ? -n : n, scale: frac.length };
}

const abs = (n: bigint) => (n < 0n ? -n : n);
const gcd = (a: bigint, b: bigint): bigint => (b === 0n ? abs(a) : gcd(b, a % b));

/** num/den (den > 0) in lowest terms: its decimal when that terminates, else `p/q`. */
function rationalText(num: bigint, den: bigint): string {
  const g = gcd(num, den) || 1n;
  [num, den] = [num / g, den / g];
  let twos = 0,
    fives = 0,
    rest = den;
  while (rest % 2n === 0n) [rest, twos] = [rest / 2n, twos + 1];
  while (rest % 5n === 0n) [rest, fives] = [rest / 5n, fives + 1];
  if (rest !== 1n) return `${num}/${den}`;
  const digits = Math.max(twos, fives);
  const scaled = (num * 10n ** BigInt(digits)) / den;
  return decimalText(scaled, digits);
}

/** n / 10^scale without a sign on zero, leading zeros or trailing fractional zeros. */
function decimalText(n: bigint, scale: number): string {
  if (n === 0n) return '0';
  const digits = abs(n)
    .toString()
    .padStart(scale + 1, '0');
  const whole = digits.slice(0, digits.length - scale);
  const frac = digits.slice(digits.length - scale).replace(/0+$/, '');
  return (n < 0n ? '-' : '') + whole + (frac ? '.' + frac : '');
}

function numberValue(s: string): string | null {
  const plain = /^[+-]?\d{1,3}(?:,\d{3})+(?:\.\d+)?$/.test(s) ? s.replace(/,/g, '') : s;
  const d = parseDecimal(plain);
  if (d) return decimalText(d.n, d.scale);
  if (/^[+-]?(\d+\.?\d*|\.\d+)e[+-]?\d+$/i.test(s)) {
    const n = Number(s);
    if (Number.isFinite(n)) return n === 0 ? '0' : String(n);
  }
  return null;
}

function rationalValue(s: string): string | null {
  const m = /^([+-]?)(?:\\frac\{([^{}]+)\}\{([^{}]+)\}|([^/]+)\/([^/]+))$/.exec(s);
  if (!m) return null;
  const num = parseDecimal(m[2] ?? m[4]!);
  const den = parseDecimal(m[3] ?? m[5]!);
  if (!num || !den || den.n === 0n) return null;
  // (a / 10^i) / (b / 10^j) = a 10^j / (b 10^i)
  let p = num.n * 10n ** BigInt(den.scale);
  let q = den.n * 10n ** BigInt(num.scale);
  if (q < 0n) [p, q] = [-p, -q];
  return rationalText(m[1] === '-' ? -p : p, q);
}

function percentValue(s: string): string | null {
  const m = /^(.+)%$/.exec(s);
  const v = m ? numberValue(m[1]!) : null;
  return v === null ? null : v + '%';
}

const letterValue = (s: string) => /^\(?([A-Za-z])\)?$/.exec(s)?.[1]!.toUpperCase() ?? null;

/** Canonical form of an answer, or null for none. */
export function normalizeAnswer(answer: string | null | undefined): string | null {
  if (answer === null || answer === undefined) return null;
  let s = answer;
  for (const r of REWRITES) s = r.apply(s);
  if (!s) return null;
  return numberValue(s) ?? rationalValue(s) ?? percentValue(s) ?? letterValue(s) ?? s;
}

/**
 * Whether a served answer is right against a known one: both in canonical form, and an
 * answer that normalises to nothing is never right. The one comparison every scorer of
 * served answers uses (replay reports, the dashboard's calibration), so they agree.
 */
export function isCorrect(answer: string | null | undefined, truth: string | null | undefined): boolean {
  const a = normalizeAnswer(answer);
  return a !== null && a === normalizeAnswer(truth);
}
