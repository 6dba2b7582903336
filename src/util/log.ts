// Structured logs: pino, one JSON object per line on stderr (stdout stays for the CLI's
// own output, such as --json lines). On a terminal the lines are made readable by
// pino-pretty when it is installed (a dev dependency: production images log JSON).
import { createRequire } from 'node:module';
import pino, { type Logger } from 'pino';

export type { Logger };

export const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];

/** A logger that drops everything: the default of in-process servers (tests, benchmarks). */
export const silentLogger: Logger = pino({ level: 'silent' });

export function createLogger(o: { level: LogLevel; pretty?: boolean }): Logger {
  const pretty = o.pretty ?? process.stderr.isTTY === true;
  if (pretty) {
    try {
      createRequire(import.meta.url).resolve('pino-pretty');
      return pino(
        { level: o.level },
        pino.transport({ target: 'pino-pretty', options: { destination: 2, colorize: true, translateTime: 'SYS:HH:MM:ss.l', ignore: 'pid,hostname' } }),
      );
    } catch {
      // Not installed (npm ci --omit=dev): JSON, which is still readable.
    }
  }
  // Synchronous writes: a record logged just before a crash is not lost in a buffer.
  return pino({ level: o.level, base: { pid: process.pid } }, pino.destination({ fd: 2, sync: true }));
}

/** The plain-text log of modules that only report lines (versions' start-up notes): info records. */
export const lineLog = (logger: Logger) => (line: string) => logger.info(line);

/** A logger that keeps each record's message in `lines` (tests read what was logged). */
export function collectingLogger(lines: string[], level: LogLevel = 'info'): Logger {
  return pino({ level }, { write: (record: string) => void lines.push(JSON.parse(record).msg) });
}
