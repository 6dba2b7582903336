// Answer extractors: one rule per answer format, in one table. Each takes a completion and
// returns the answer as written (normalize.ts makes it canonical), or null when the
// completion states none. They never throw on any text: a model can write anything.
import { extractAnswer as arithmeticAnswer } from './arithmetic.ts';
import { bracedGroup } from './latex.ts';

export interface Extractor {
  /** As given to --extractor: `boxed`, `choice:A-J`, `regex:...`. */
  readonly name: string;
  extract(completion: string): string | null;
}

/** The last match of a global regex, or null. */
function lastMatch(re: RegExp, text: string, keep: (m: RegExpExecArray) => boolean = () => true): RegExpExecArray | null {
  let last: RegExpExecArray | null = null;
  re.lastIndex = 0;
  for (let m = re.exec(text); m; m = re.exec(text)) {
    if (keep(m)) last = m;
    if (m[0] === '') re.lastIndex++;
  }
  return last;
}

// ---------------------------------------------------------------------------------------
// boxed: the last \boxed{...} or \fbox{...}, braces balanced (\boxed{\frac{1}{2}}), or
// LaTeX's unbraced `\boxed 5`. The last one decides: when it never closes (cut off) or is
// empty there is no answer; an earlier box may be an intermediate step, so it is not used
// instead, and neither is any other number.

function boxed(text: string): string | null {
  const m = lastMatch(/\\(?:boxed|fbox)(?![A-Za-z])/g, text);
  if (!m) return null;
  const after = m.index + m[0].length;
  const open = text.slice(after).search(/\S/);
  if (open < 0) return null;
  if (text[after + open] === '{') {
    const group = bracedGroup(text, after + open);
    return group && group.content.trim() ? group.content.trim() : null;
  }
  if (open === 0) return null; // \boxed followed by something that is not an argument
  const word = /^[^\s$]+/.exec(text.slice(after + open));
  return word ? word[0] : null;
}

// ---------------------------------------------------------------------------------------
// number: GSM8K's final "#### N" when there is one, else the last number of the text.
// A number is an optional sign, digits (grouped in threes with commas, 1,234,567, or not)
// and optional decimals; a unicode minus counts as a sign. Not a number: digits inside a
// word (x2, H2O, step3), and a list marker (`2.` or `2)` opening a line, then text), so a
// worked answer that ends in a numbered list is not read as its last item's number.

const NUMBER = /(?<![\w.])[-\u2212]?(?:(?:\d{1,3}(?:,\d{3})+(?![\d])|\d+)(?:\.\d+)?|\.\d+)(?![\w])/g;
const GSM8K_MARKER = /####\s*(?:\$\s*)?([-\u2212]?(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?)(?![\w])/g;

function isListMarker(text: string, m: RegExpExecArray): boolean {
  let i = m.index - 1;
  while (i >= 0 && (text[i] === ' ' || text[i] === '\t' || text[i] === '\r')) i--;
  return (i < 0 || text[i] === '\n') && /^[.)][ \t]+\S/.test(text.slice(m.index + m[0].length, m.index + m[0].length + 64));
}

function number(text: string): string | null {
  const marked = lastMatch(GSM8K_MARKER, text);
  const found = marked ? marked[1]! : lastMatch(NUMBER, text, (m) => !isListMarker(text, m))?.[0];
  return found === undefined ? null : found.replace('\u2212', '-');
}

// ---------------------------------------------------------------------------------------
// choice: the letter of a multiple-choice answer, in order of precedence:
// 1. the last explicit statement: "answer is (B)", "Answer: C", "answer would be **D**",
//    "correct option is B", "the final answer is $\boxed{C}$", "(C) is correct";
// 2. else the last strong form: a bold letter (**D**, **(D)**), a parenthesised capital
//    ((B)), a boxed letter, or a last line that is only the letter (D, D., (D), D));
// 3. else no answer. A bare letter in running text is never read: "a dog", "A good way",
//    "I think" are words. After an explicit cue a lower-case letter counts only when
//    wrapped ((b), **b**); a bare capital A or I followed by a lower-case word counts only
//    when that word joins a reason (because, since, as, ...), since "Answer: A careful
//    look shows (C)" and "Answer: I think B" are sentences, not choices.

const CUE = String.raw`(?:\banswer\s*(?:is|:|would\s+be|should\s+be|must\s+be|=)|\bcorrect\s+(?:option|choice)\s*(?:is|:)|\b(?:i\s+)?(?:choose|pick|select))`;
// What may sit between the cue and the letter: markdown, math, "option".
const WRAP_OPEN = String.raw`(?:[\s:*_$]|\\boxed\{|\\text(?:bf)?\{|\(|\[|\boption\b|\bchoice\b|\bletter\b|\btherefore\b)*`;
const CONNECTIVES = /^(?:because|since|as|and|is|was|which|for|so|with|due|given|here|—|-)/;

function choiceExtractor(last: string): (text: string) => string | null {
  const upper = `A-${last}`;
  const lower = upper.toLowerCase();
  const letterOk = (l: string) => l.toUpperCase() >= 'A' && l.toUpperCase() <= last;
  const explicit = new RegExp(`${CUE}(${WRAP_OPEN})([${upper}${lower}])(?![\\w'’])(?=(.{0,24}))`, 'gis');
  const correctAfter = new RegExp(String.raw`(?:\(([${upper}])\)|\b([${upper}])\b)\s+is\s+(?:the\s+)?correct\b`, 'g');
  const strong = new RegExp(String.raw`\*\*\(?([${upper}])\)?[.)]?\*\*|(?<![\w\\])\(([${upper}])\)|\\boxed\{\s*(?:\\text\{)?([${upper}])\}?\s*\}`, 'g');

  const explicitLetter = (text: string): { letter: string; at: number } | null => {
    const ok = (m: RegExpExecArray) => {
      const [wrap, letter, rest] = [m[1]!, m[2]!, m[3]!];
      const wrapped = /[(*[{]/.test(wrap);
      if (letter === letter.toLowerCase()) return wrapped && letterOk(letter);
      if (!wrapped && (letter === 'A' || letter === 'I')) {
        const next = /^ +([a-z]\S*)/.exec(rest);
        if (next && !CONNECTIVES.test(next[1]!)) return false;
      }
      return letterOk(letter);
    };
    const m = lastMatch(explicit, text, ok);
    const c = lastMatch(correctAfter, text);
    const a = m ? { letter: m[2]!.toUpperCase(), at: m.index } : null;
    const b = c ? { letter: (c[1] ?? c[2])!, at: c.index } : null;
    return a && b ? (a.at > b.at ? a : b) : (a ?? b);
  };

  return (text) => {
    const e = explicitLetter(text);
    if (e) return e.letter;
    const s = lastMatch(strong, text);
    const lastLine = /(?:^|\n)[ \t*_#>]*\(?([A-Z])\)?[.)]?[\s*_]*$/.exec(text);
    const fromLine = lastLine && letterOk(lastLine[1]!) ? { letter: lastLine[1]!, at: lastLine.index } : null;
    const fromStrong = s ? { letter: (s[1] ?? s[2] ?? s[3])!, at: s.index } : null;
    const best = fromLine && fromStrong ? (fromLine.at >= fromStrong.at ? fromLine : fromStrong) : (fromLine ?? fromStrong);
    return best ? best.letter : null;
  };
}

// ---------------------------------------------------------------------------------------
// regex:PATTERN: the first capture group of the last match (the whole match when the
// pattern has no group); the pattern runs with the g flag only.

function regexExtractor(pattern: string, name: string): (text: string) => string | null {
  let re: RegExp;
  try {
    re = new RegExp(pattern, 'g');
  } catch (e) {
    throw new Error(`extractor ${JSON.stringify(name)}: invalid regular expression: ${(e as Error).message}`);
  }
  const groups = new RegExp(`${pattern}|`).exec('')!.length - 1;
  return (text) => {
    const m = lastMatch(re, text);
    if (!m) return null;
    const answer = groups > 0 ? m[1] : m[0];
    return answer === undefined || answer === '' ? null : answer;
  };
}

// ---------------------------------------------------------------------------------------

/** Extractors by name. `choice:A-J` and `regex:PATTERN` take a parameter (see extractor()). */
export const EXTRACTORS: Record<string, { help: string; extract: (text: string) => string | null }> = {
  arithmetic: { help: "the integer after the last '#' (the shipped model's format)", extract: arithmeticAnswer },
  boxed: { help: 'the last \\boxed{...} or \\fbox{...}, nested braces balanced', extract: boxed },
  number: { help: 'GSM8K\'s "#### N", else the last number (1,234.5, -7)', extract: number },
  choice: { help: 'the stated letter A-D ("The answer is (B)", "Answer: C", "**D**"); choice:A-J for more options', extract: choiceExtractor('D') },
};

export const EXTRACTOR_NAMES = [...Object.keys(EXTRACTORS), 'choice:A-J', 'regex:PATTERN'];

/** The extractor a setting names; throws naming the value when there is none. */
export function extractor(name: string): Extractor {
  const known = EXTRACTORS[name];
  if (known) return { name, extract: known.extract };
  if (name.startsWith('regex:')) {
    if (name.length === 'regex:'.length) throw new Error(`extractor "regex:" has no pattern; write regex:PATTERN`);
    return { name, extract: regexExtractor(name.slice('regex:'.length), name) };
  }
  const range = /^choice:A-([B-J])$/.exec(name);
  if (range) return { name, extract: choiceExtractor(range[1]!) };
  if (name.startsWith('choice:')) throw new Error(`extractor ${JSON.stringify(name)}: the letters are written choice:A-B ... choice:A-J`);
  throw new Error(`unknown extractor ${JSON.stringify(name)}; one of: ${EXTRACTOR_NAMES.join(', ')}`);
}
