// What every worker does to get its ORT sessions, written once: lower the thread's priority
// before any session exists, make each session with the worker's settings, and bind a weight
// source to a graph (a file the graph maps from its folder, or arrays fed as inputs).
import { readlinkSync } from 'node:fs';
import { setPriority } from 'node:os';
import type { Graph } from '../graph/ir.ts';
import { checkWeights, type ParamSpec } from '../model/family.ts';
import { checkWeightFile, isWeightFile, type WeightFile, type WeightSource } from '../formats/weight-file.ts';
import { createSession, type ort, type SessionOptions } from './ort.ts';
import { weightFeedsOf } from './scoring.ts';

/** What a worker's init says about its threads. */
export interface ThreadSettings {
  /** Threads for one op (default 1). */
  threads?: number;
  /** Linux nice value of the worker's threads. */
  nice?: number;
  /** Let idle compute threads spin (default true). */
  spin?: boolean;
}

/** The sessions of one worker thread, all made with the same options. */
export class WorkerSessions {
  private readonly options: SessionOptions;

  /**
   * Call once, at the worker's init and before its first session: ORT's pool threads inherit
   * the nice value of the thread that creates them. `tuning` is what the worker's graphs want
   * beyond the threads (ORT's prepacking and memory pattern; see SessionOptions).
   */
  constructor(threads: ThreadSettings, tuning: Pick<SessionOptions, 'prepack' | 'memPattern'> = {}) {
    if (threads.nice) niceThisThread(threads.nice);
    this.options = { threads: threads.threads ?? 1, spin: threads.spin, ...tuning };
  }

  /** A session of `graph`; one whose weights are mapped from `file` reads them from its folder. */
  create(graph: Graph, file?: WeightFile): Promise<ort.InferenceSession> {
    return createSession(graph, file ? { ...this.options, externalDir: file.dir } : this.options);
  }
}

/** A checked weight source as a graph takes it: a file to map (no feeds), or arrays to feed. */
export interface WeightBinding {
  file?: WeightFile;
  feeds: Record<string, ort.Tensor>;
}

export function bindWeights(specs: ParamSpec[], source: WeightSource): WeightBinding {
  if (isWeightFile(source)) {
    checkWeightFile(specs, source);
    return { file: source, feeds: {} };
  }
  checkWeights(specs, source);
  return { feeds: weightFeedsOf(specs, source) };
}

/**
 * Lowers the CPU priority of the calling thread (Linux: a thread's nice value; threads it
 * creates afterwards, such as ORT's pool, inherit it). Background work such as training
 * then yields the cores to serving. Elsewhere it is a no-op that returns false.
 */
export function niceThisThread(nice: number): boolean {
  try {
    const tid = Number(readlinkSync('/proc/thread-self').split('/').pop());
    if (!Number.isInteger(tid)) return false;
    setPriority(tid, nice);
    return true;
  } catch {
    return false;
  }
}
