// A short rule set that catches real bugs, not style (prettier owns the layout): promises
// nobody awaits or handles, variables and imports left unused, `any` where types exist,
// loose equality, and switch cases that fall through. Type-aware, for the promise rules.
import js from '@eslint/js';
import globals from 'globals';
import tseslint from 'typescript-eslint';

export default tseslint.config(
  { ignores: ['dist/', 'node_modules/', 'data/', 'models/', 'src/dashboard/page/vendor/'] },
  {
    files: ['**/*.ts'],
    extends: [tseslint.configs.base],
    languageOptions: { parserOptions: { projectService: true, tsconfigRootDir: import.meta.dirname } },
    rules: {
      // node:test's test() returns a promise the runner itself awaits.
      '@typescript-eslint/no-floating-promises': [
        'error',
        { allowForKnownSafeCalls: [{ from: 'package', package: 'node:test', name: ['test', 'describe', 'it', 'suite', 'before', 'after'] }] },
      ],
      '@typescript-eslint/no-misused-promises': ['error', { checksVoidReturn: false }],
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_', caughtErrors: 'none', ignoreRestSiblings: true }],
      '@typescript-eslint/no-explicit-any': 'error',
      eqeqeq: ['error', 'always', { null: 'ignore' }],
      'no-fallthrough': 'error',
      'no-self-compare': 'error',
      'no-unreachable': 'error',
      'no-dupe-keys': 'error',
      'no-cond-assign': ['error', 'except-parens'],
    },
  },
  { files: ['bin/**/*.js'], ...js.configs.recommended, languageOptions: { globals: globals.node } },
  { files: ['src/dashboard/page/**/*.js'], ...js.configs.recommended, languageOptions: { globals: { ...globals.browser, uPlot: 'readonly' } } },
);
