// A one-line progress bar on stderr: redrawn in place on a terminal, a plain line every
// `every` updates otherwise (logs stay readable in CI and under nohup).
export class Progress {
  private start = performance.now();
  private updates = 0;
  constructor(
    private total: number,
    private label: string,
    private every = 50,
    private out: NodeJS.WriteStream = process.stderr,
    /** Where a resumed run starts: the rate and ETA count from here. */
    private from = 0,
  ) {}

  update(done: number, fields: Record<string, string> = {}): void {
    this.updates++;
    const elapsed = (performance.now() - this.start) / 1000;
    const eta = done > this.from ? (elapsed / (done - this.from)) * (this.total - done) : NaN;
    const frac = this.total ? done / this.total : 1;
    const extras = Object.entries(fields)
      .map(([k, v]) => `${k} ${v}`)
      .join('  ');
    const text = `${this.label} ${done}/${this.total} ${(frac * 100).toFixed(0)}%  ${extras}  elapsed ${fmtSeconds(elapsed)}  eta ${fmtSeconds(eta)}`;
    if (this.out.isTTY) {
      const width = 24;
      const bar = '█'.repeat(Math.round(frac * width)).padEnd(width, '·');
      this.out.write(`\r\x1b[2K${bar} ${text}`);
      if (done >= this.total) this.out.write('\n');
    } else if (this.updates % this.every === 0 || done >= this.total) this.out.write(text + '\n');
  }
}

export function fmtSeconds(s: number): string {
  if (!Number.isFinite(s)) return '?';
  if (s < 60) return `${s.toFixed(0)}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${String(Math.floor(s % 60)).padStart(2, '0')}s`;
  return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, '0')}m`;
}
