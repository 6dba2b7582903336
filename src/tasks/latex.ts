// The little LaTeX reading that answers need: a braced group with its nesting, and the
// argument of a command that LaTeX lets go unbraced (`\frac12`, `\sqrt3`).

/**
 * The group that opens at `text[open]` (which must be '{'), read to its matching '}'.
 * Escaped braces (`\{`, `\}`: set notation) do not count. Null when it never closes
 * (a completion cut off mid-answer).
 */
export function bracedGroup(text: string, open: number): { content: string; end: number } | null {
  if (text[open] !== '{') return null;
  let depth = 0;
  for (let i = open; i < text.length; i++) {
    const c = text[i];
    if (c === '\\') {
      i++;
      continue;
    }
    if (c === '{') depth++;
    else if (c === '}' && --depth === 0) return { content: text.slice(open + 1, i), end: i + 1 };
  }
  return null;
}

/**
 * For each '{' of the text, the index of its matching '}' (-1 when it never closes), in one
 * pass: what bracedGroup finds for every group at once, so nested or unclosed groups cost
 * no rescans.
 */
export function braceMatches(text: string): Int32Array {
  const close = new Int32Array(text.length).fill(-1);
  const open: number[] = [];
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (c === '\\') i++;
    else if (c === '{') open.push(i);
    else if (c === '}' && open.length) close[open.pop()!] = i;
  }
  return close;
}

/**
 * One argument of a command at `at`, spaces skipped: a braced group, or else the single
 * character LaTeX would take (`\frac12` is \frac{1}{2}). Null at the end of the text.
 */
export function commandArgument(text: string, at: number): { content: string; end: number } | null {
  let i = at;
  while (text[i] === ' ') i++;
  if (i >= text.length) return null;
  if (text[i] === '{') return bracedGroup(text, i);
  if (text[i] === '}' || text[i] === '\\') return null;
  return { content: text[i]!, end: i + 1 };
}
