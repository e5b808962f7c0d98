// The thread that runs a resize tool on a view while the main thread serves the view through FUSE
// (its loop blocks that thread, so the tool's child must be waited for here), then unmounts the
// view, which ends that loop.
import os from "node:os";

import { FLAG_COUNT, RESULT_OFFSET, ToolFlag, type ToolResult, type ToolThreadJob, type ToolThreadReport } from "./tool-job.ts";

declare const self: Worker;

async function runJob(job: ToolThreadJob): Promise<ToolThreadReport> {
  const flags = new Int32Array(job.shared, 0, FLAG_COUNT);
  Atomics.store(flags, ToolFlag.started, 1);
  Atomics.notify(flags, ToolFlag.started);
  // the main thread says 1 once the view is mounted, -1 when the mount failed
  while (Atomics.load(flags, ToolFlag.mounted) === 0) Atomics.wait(flags, ToolFlag.mounted, 0);
  if (Atomics.load(flags, ToolFlag.mounted) < 0) return { results: [] };
  const results: ToolResult[] = [];
  for (const c of job.commands) {
    const child = Bun.spawn(c.argv, { stdin: c.input === undefined ? "ignore" : new TextEncoder().encode(c.input), stdout: "pipe", stderr: "pipe", env: c.env });
    // the main thread ends the child when a signal ends the mount
    Atomics.store(flags, ToolFlag.child, child.pid);
    const [stdout, stderr] = await Promise.all([new Response(child.stdout).text(), new Response(child.stderr).text(), child.exited]);
    Atomics.store(flags, ToolFlag.child, 0);
    const signal = child.signalCode ? (os.constants.signals[child.signalCode as keyof typeof os.constants.signals] ?? 0) : 0;
    results.push({ code: child.exitCode ?? 128 + signal, output: `${stdout}${stderr}` });
    if (!c.okCodes.includes(results.at(-1)!.code)) break;
  }
  const u = Bun.spawnSync(job.unmount, { stdin: "ignore", stdout: "pipe", stderr: "pipe" });
  return { results, unmountFailed: u.exitCode === 0 ? undefined : `${u.stdout.toString()}${u.stderr.toString()}`.trim() || `exit ${u.exitCode}` };
}

self.onmessage = async (event: MessageEvent<ToolThreadJob>) => {
  const job = event.data;
  let report: ToolThreadReport;
  try {
    report = await runJob(job);
  } catch (e) {
    report = { results: [{ code: -1, output: (e as Error).message }] };
  }
  const flags = new Int32Array(job.shared, 0, FLAG_COUNT);
  const room = new Uint8Array(job.shared, RESULT_OFFSET);
  let bytes = new TextEncoder().encode(JSON.stringify(report));
  if (bytes.length > room.length) {
    // outputs too long for the buffer keep their ends, where tools print why they stopped
    const keep = Math.floor(room.length / (2 * Math.max(1, report.results.length))) - 64;
    report = { ...report, results: report.results.map((r) => ({ code: r.code, output: r.output.length > keep ? r.output.slice(-keep) : r.output })) };
    bytes = new TextEncoder().encode(JSON.stringify(report));
  }
  room.set(bytes.subarray(0, room.length));
  Atomics.store(flags, ToolFlag.resultBytes, Math.min(bytes.length, room.length));
  Atomics.store(flags, ToolFlag.done, 1);
  Atomics.notify(flags, ToolFlag.done);
};
