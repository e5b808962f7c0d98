import { humanSize } from "../formats/units.ts";

/** A one-line progress bar on stderr when it is a terminal; silent otherwise. */
export class Progress {
  private readonly enabled: boolean;
  private readonly started = performance.now();
  private lastDraw = 0;

  constructor(
    /** undefined when the total is not known (a pipe): then no percentage or ETA */
    private readonly total: number | undefined,
    private readonly label: string,
    enabled = process.stderr.isTTY === true,
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
    if (this.total === undefined) {
      process.stderr.write(`\r${this.label} ${humanSize(done)}  ${humanSize(rate)}/s\x1b[K`);
      return;
    }
    const fraction = this.total > 0 ? Math.min(1, done / this.total) : 0;
    const width = 24;
    const filled = Math.round(fraction * width);
    const eta = rate > 0 && this.total > done ? (this.total - done) / rate : 0;
    const line =
      `${this.label} [${"#".repeat(filled)}${"-".repeat(width - filled)}] ${(fraction * 100).toFixed(1).padStart(5)}% ` +
      `${humanSize(done)} / ${humanSize(this.total)}  ${humanSize(rate)}/s  ETA ${clock(eta)}`;
    process.stderr.write(`\r${line}\x1b[K`);
  }
}

function clock(seconds: number): string {
  const s = Math.round(seconds);
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const ss = String(s % 60).padStart(2, "0");
  return h > 0 ? `${h}:${String(m).padStart(2, "0")}:${ss}` : `${m}:${ss}`;
}
