/**
 * How long work tells about itself. Lower layers only report bytes done; the CLI decides whether and
 * how to show them (src/cli/progress-bar.ts draws a bar on a terminal).
 */
export interface ProgressReport {
  update(done: number): void;
  finish(done: number): void;
}

/** A report for `total` bytes (undefined: not known, e.g. a pipe) of work named `label`. */
export type ProgressFactory = (total: number | undefined, label: string) => ProgressReport;

const SILENT: ProgressReport = { update() {}, finish() {} };

export const silentProgress: ProgressFactory = () => SILENT;
