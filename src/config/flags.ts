// Command-line flags from the setting groups: each command names the groups it runs, and gets
// their flags with the same names, help and checks as `ttrl serve` (the values are checked by
// the groups' schemas when the settings are resolved, so a bad flag reads as a bad setting).
import type { Command } from 'commander';
import { DEFAULT_MODEL_DIR, envName, flagName, settingsOf, type GroupName } from './settings.ts';

export interface FlagOptions {
  /** Before each help line (e.g. "offline: " where a command's other flags do something else). */
  helpPrefix?: string;
  /** Also name the TTRL_* variable in the help (commands that read them: serve). */
  showEnv?: boolean;
}

/** Adds the flags of the groups' settings to a command. */
export function addFlags(cmd: Command, groups: readonly GroupName[], o: FlagOptions = {}): Command {
  for (const [k, s] of Object.entries(settingsOf(groups))) {
    const shown = s.default === undefined ? '' : s.default === DEFAULT_MODEL_DIR ? 'models/arith-tiny' : Array.isArray(s.default) ? '' : String(s.default);
    const where = [o.showEnv ? envName(k) : '', shown ? `default ${shown}` : ''].filter(Boolean).join(', ');
    const help = `${o.helpPrefix ?? ''}${s.help}${where ? ` [${where}]` : ''}`;
    if (s.default === true) cmd.option(`--no-${flagName(k).slice(2)}`, help);
    else if (s.repeat) cmd.option(`${flagName(s.repeat)} <value>`, help, (v: string, all: string[] = []) => [...all, v]);
    else cmd.option(`${flagName(k)} <value>`, help);
  }
  return cmd;
}

/** The settings given on the command line (unset flags are left to the defaults and variables). */
export function givenFlags(cmd: Command, values: Record<string, unknown>, groups: readonly GroupName[]): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [k, s] of Object.entries(settingsOf(groups))) {
    const flag = s.repeat ?? k;
    if (cmd.getOptionValueSource(flag) === 'cli') out[k] = values[flag];
  }
  return out;
}
