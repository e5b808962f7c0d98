import { isTerminal } from "../../native/libc-file.ts";
import { humanSize } from "../formats/units.ts";
import type { ProgressFactory, ProgressReport } from "../progress.ts";

/** A one-line progress bar on stderr when it is a terminal; silent otherwise. */
export class Progress implements ProgressReport {
  private readonly enabled: boolean;
  private readonly started = performance.now();
  private lastDraw = 0;

  constructor(
    /** undefined when the total is not known (a pipe): then no percentage or ETA */
    private readonly total: number | undefined,
    private readonly label: string,
    enabled = isTerminal(2),
  ) {
    this.enabled = enabled;
  }

  update(done: number): void {
    if (!this.enabled) return;
    const now = performance.now();
    if (now - this.lastDraw < 200) return;
    this.lastDraw = now;
    this.draw(done, now);
  }

  finish(done: number): void {
    if (!this.enabled) return;
    this.draw(done, performance.now());
    process.stderr.write("\n");
  }

  private draw(done: number, now: number): void {
    const seconds = (now - this.started) / 1000;
    const rate = seconds > 0 ? done / seconds : 0;
    // read each time: the terminal may have been resized
    const line = progressLine({ label: this.label, done, total: this.total, rate }, process.stderr.columns || 80);
    process.stderr.write(`\r${line}\x1b[K`);
  }
}

/** Bars on stderr when it is a terminal; undefined (nobody told, no totals computed) otherwise or when `quiet`. */
export function progressBars(quiet = false): ProgressFactory | undefined {
  if (quiet || !isTerminal(2)) return undefined;
  return (total, label) => new Progress(total, label, true);
}

export interface ProgressState {
  label: string;
  done: number;
  total: number | undefined;
  /** bytes per second so far */
  rate: number;
}

const MIN_BAR = 8;
const MAX_BAR = 40;

/**
 * The progress line for a terminal `columns` wide: at most columns - 1 characters (writing the
 * last column makes some terminals wrap), so it never wraps. Fields go, least useful first, as
 * the width shrinks: rate, sizes, ETA, then the bar; the percentage goes last.
 */
export function progressLine(s: ProgressState, columns: number): string {
  const room = Math.max(1, columns - 1);
  const rate = `${humanSize(s.rate)}/s`;
  if (s.total === undefined) {
    return fit([`${s.label} ${humanSize(s.done)}  ${rate}`, `${s.label} ${humanSize(s.done)}`, humanSize(s.done)], room);
  }
  const fraction = s.total > 0 ? Math.min(1, s.done / s.total) : 0;
  const percent = `${(fraction * 100).toFixed(1).padStart(5)}%`;
  const eta = `ETA ${clock(s.rate > 0 && s.total > s.done ? (s.total - s.done) / s.rate : 0)}`;
  const sizes = `${humanSize(s.done)} / ${humanSize(s.total)}`;
  // richest first; each as (text before the bar, text after it)
  const layouts: [string, string][] = [
    [s.label, `${percent} ${sizes}  ${rate}  ${eta}`],
    [s.label, `${percent} ${sizes}  ${eta}`],
    [s.label, `${percent} ${eta}`],
    [s.label, percent],
    ["", percent],
  ];
  for (const [before, after] of layouts) {
    const fixed = (before ? before.length + 1 : 0) + 2 + 1 + after.length;
    const bar = Math.min(MAX_BAR, room - fixed);
    if (bar < MIN_BAR) continue;
    const filled = Math.round(fraction * bar);
    return `${before ? `${before} ` : ""}[${"#".repeat(filled)}${"-".repeat(bar - filled)}] ${after}`;
  }
  return fit([`${s.label} ${percent} ${eta}`, `${s.label} ${percent}`, percent.trim()], room);
}

/** The first text that fits in `room`, else the last one cut to fit. */
function fit(candidates: string[], room: number): string {
  for (const c of candidates) if (c.length <= room) return c;
  return candidates[candidates.length - 1]!.slice(0, room);
}

function clock(seconds: number): string {
  const s = Math.round(seconds);
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const ss = String(s % 60).padStart(2, "0");
  return h > 0 ? `${h}:${String(m).padStart(2, "0")}:${ss}` : `${m}:${ss}`;
}
