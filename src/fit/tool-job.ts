// What the main thread and the tool thread (tool-thread.ts) pass: the commands to run on a mounted
// view, and a shared buffer for the handshake and the results (the main thread, blocked in the FUSE
// loop and then in Atomics.wait, never turns its event loop to receive a message).

/** One program run: stop at the first whose exit code is not in okCodes. */
export interface ToolCommand {
  argv: string[];
  env: Record<string, string>;
  /** written to its standard input (ntfsresize's confirmation) */
  input?: string;
  okCodes: number[];
}

export interface ToolThreadJob {
  commands: ToolCommand[];
  /** run once the commands are done: unmounts the view */
  unmount: string[];
  /** Int32 flags (see ToolFlag), then the results as JSON from RESULT_OFFSET */
  shared: SharedArrayBuffer;
}

/** Indexes of the Int32 flags at the start of the shared buffer. */
export const ToolFlag = { started: 0, mounted: 1, done: 2, resultBytes: 3, child: 4 } as const;
export const FLAG_COUNT = 5;
export const RESULT_OFFSET = 4 * FLAG_COUNT;

export interface ToolResult {
  code: number;
  output: string;
}

/** What the thread reports: each command run, in order (the last one failed when it stopped early), and the unmount's failure. */
export interface ToolThreadReport {
  results: ToolResult[];
  unmountFailed?: string;
}
