// The README and the docs stay true to the tree: the folder table lists exactly the folders
// under src/, every link resolves inside the repository (no link leaves it), and the README
// stays a five-minute read with the two commands a newcomer needs.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { PROJECT_ROOT } from '../src/config/settings.ts';

const read = (p: string) => readFileSync(join(PROJECT_ROOT, p), 'utf8');
const DOCS = ['README.md', 'test/README.md', 'bench/RESULTS.md', ...readdirSync(join(PROJECT_ROOT, 'docs')).map((f) => `docs/${f}`)];

test("README's folder table lists exactly the folders under src/", () => {
  const listed = [...read('README.md').matchAll(/^\| `src\/([\w-]+)\/` \|/gm)].map((m) => m[1]!).sort();
  const folders = readdirSync(join(PROJECT_ROOT, 'src'))
    .filter((f) => statSync(join(PROJECT_ROOT, 'src', f)).isDirectory())
    .sort();
  assert.deepEqual(listed, folders);
});

test('README: the two commands, and a five-minute read', () => {
  const readme = read('README.md');
  assert.match(readme, /```sh\nnpm ci && npm start\n```/);
  assert.match(readme, /```sh\nnpm ci && npm test\n```/);
  const lines = readme.split('\n').length;
  assert.ok(lines <= 260, `README.md has ${lines} lines; reference material belongs in docs/`);
});

test('every link in the README and the docs stays in the repository and resolves', () => {
  const problems: string[] = [];
  for (const doc of DOCS) {
    const text = read(doc);
    for (const m of text.matchAll(/\]\(([^)\s]+)\)/g)) {
      const link = m[1]!;
      if (/^[a-z][\w+.-]*:/i.test(link)) {
        problems.push(`${doc}: ${link} leaves the repository`);
        continue;
      }
      const [path, anchor] = link.split('#');
      const target = path ? resolve(dirname(join(PROJECT_ROOT, doc)), path) : join(PROJECT_ROOT, doc);
      if (relative(PROJECT_ROOT, target).startsWith('..')) problems.push(`${doc}: ${link} leaves the repository`);
      else if (!existsSync(target)) problems.push(`${doc}: ${link} does not exist`);
      else if (anchor && target.endsWith('.md')) {
        const slugs = [...readFileSync(target, 'utf8').matchAll(/^#+ (.+)$/gm)].map((h) =>
          h[1]!
            .toLowerCase()
            .replace(/[^\w\s-]/g, '')
            .trim()
            .replace(/\s/g, '-'),
        );
        if (!slugs.includes(anchor)) problems.push(`${doc}: ${link}: no heading #${anchor}`);
      }
    }
  }
  assert.deepEqual(problems, []);
});
