// Served accuracy, confidence and calibration error per window of questions, a line per run,
// as three stacked charts: what bench:serve --svg writes, and (run as a script) the same
// plot of runs taken from several bench:serve JSON lines, named by the caller.
//
//   npx tsx bench/windows-plot.ts --out FILE --title T NAME=FILE[:STREAM:MODE] ...
//   e.g. "on, --confidence-rise 0.05"=bench/serve-long-crise.json:recurring:on
import { readFileSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { Command } from 'commander';
import { linePlot, stackPlots, type Series } from '../src/util/svg-plot.ts';

export interface Window {
  to: number;
  accuracy: number;
  confidence: number;
  ece: number;
}

export function windowsPlot(runs: { name: string; windows: Window[] }[], title: string): string {
  const size = runs[0] && runs[0].windows.length > 1 ? runs[0].windows[1]!.to - runs[0].windows[0]!.to : 0;
  const chart = (key: 'accuracy' | 'confidence' | 'ece', heading: string) =>
    linePlot(
      runs.map((r): Series => ({ name: r.name, points: r.windows.map((w) => [w.to, w[key]]) })),
      { title: heading, xLabel: `questions served (windows of ${size})`, yMin: 0, yMax: key === 'ece' ? 0.5 : 1 },
    );
  return stackPlots([
    chart('accuracy', `served accuracy: ${title}`),
    chart('confidence', 'served confidence (majority share)'),
    chart('ece', 'calibration error (ECE)'),
  ]);
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const cmd = new Command().requiredOption('--out <file>').requiredOption('--title <text>').argument('<runs...>').parse();
  const o = cmd.opts<{ out: string; title: string }>();
  const runs = cmd.args.map((spec) => {
    const eq = spec.lastIndexOf('=');
    const [file, stream, mode] = spec.slice(eq + 1).split(':');
    const out = JSON.parse(readFileSync(file!, 'utf8').trim().split('\n').at(-1)!) as { runs: { stream: string; mode: string; windows?: Window[] }[] };
    const run = out.runs.find((r) => (!stream || r.stream === stream) && (!mode || r.mode === mode));
    if (!run?.windows) throw new Error(`${spec}: no run with windows (bench:serve --window) in ${file}`);
    return { name: spec.slice(0, eq), windows: run.windows };
  });
  writeFileSync(o.out, windowsPlot(runs, o.title));
}
