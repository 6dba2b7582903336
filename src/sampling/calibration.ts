// Whether `confidence` (the majority's share of the votes) means what clients read it as:
// among answers given with confidence c, about a share c should be right. Wherever labels
// exist (evaluation, replays, benchmarks) this measures it: the expected calibration error
// (the mean gap between confidence and accuracy, bin by bin, weighted by how many answers
// fall in each bin) and the reliability curve it is computed from.

/** One answer: how sure the server said it was, and whether it was right. */
export interface Judged {
  confidence: number;
  correct: boolean;
}

export interface ReliabilityBin {
  /** The bin holds confidences in [lo, hi) (the last one includes 1). */
  lo: number;
  hi: number;
  n: number;
  /** Mean confidence and accuracy of its answers (null: empty). */
  confidence: number | null;
  accuracy: number | null;
}

export interface Calibration {
  answers: number;
  mean_confidence: number | null;
  accuracy: number | null;
  /** Expected calibration error: sum over bins of (n_bin / n) * |accuracy_bin - confidence_bin|; null without answers. */
  ece: number | null;
  bins: ReliabilityBin[];
}

/** Ten equal bins of confidence, as is usual for ECE. */
export const CALIBRATION_BINS = 10;

export function calibration(answers: Judged[], bins = CALIBRATION_BINS): Calibration {
  const sums = Array.from({ length: bins }, () => ({ n: 0, conf: 0, right: 0 }));
  for (const a of answers) {
    if (!(a.confidence >= 0 && a.confidence <= 1)) throw new Error(`calibration: confidence ${a.confidence} is not in [0, 1]`);
    const b = sums[Math.min(bins - 1, Math.floor(a.confidence * bins))]!;
    b.n++;
    b.conf += a.confidence;
    if (a.correct) b.right++;
  }
  const n = answers.length;
  let ece = 0;
  const out = sums.map((b, i): ReliabilityBin => {
    if (b.n) ece += (b.n / n) * Math.abs(b.right / b.n - b.conf / b.n);
    return { lo: i / bins, hi: (i + 1) / bins, n: b.n, confidence: b.n ? b.conf / b.n : null, accuracy: b.n ? b.right / b.n : null };
  });
  return {
    answers: n,
    mean_confidence: n ? answers.reduce((s, a) => s + a.confidence, 0) / n : null,
    accuracy: n ? answers.filter((a) => a.correct).length / n : null,
    ece: n ? ece : null,
    bins: out,
  };
}
