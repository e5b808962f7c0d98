// The thread that runs a resize tool on a view while the main thread serves the view through FUSE
// (its loop blocks that thread, so the tool's child must be waited for here), then unmounts the
// view, which ends that loop.
import os from "node:os";

import { FLAG_COUNT, RESULT_OFFSET, ToolFlag, type ToolResult, type ToolThreadJob, type ToolThreadReport } from "./tool-job.ts";

declare const self: Worker;

/** what is kept of a tool's output: its end, where tools print why they stopped (e2fsck -y can print megabytes) */
const OUTPUT_TAIL_BYTES = 64 << 10;

/** The last `max` bytes a stream gives, as text, holding no more than about that much while it runs. */
async function tailOf(stream: ReadableStream<Uint8Array>, max: number): Promise<string> {
  const chunks: Uint8Array[] = [];
  let held = 0;
  for await (const chunk of stream) {
    chunks.push(chunk);
    held += chunk.length;
    while (held - chunks[0]!.length >= max) held -= chunks.shift()!.length;
  }
  const all = Buffer.concat(chunks);
  return all.subarray(Math.max(0, all.length - max)).toString();
}

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
    const [stdout, stderr] = await Promise.all([tailOf(child.stdout, OUTPUT_TAIL_BYTES), tailOf(child.stderr, OUTPUT_TAIL_BYTES), child.exited]);
    Atomics.store(flags, ToolFlag.child, 0);
    const signal = child.signalCode ? (os.constants.signals[child.signalCode as keyof typeof os.constants.signals] ?? 0) : 0;
    results.push({ code: child.exitCode ?? 128 + signal, output: `${stdout}${stderr}` });
    if (!c.okCodes.includes(results.at(-1)!.code)) break;
  }
  const unmount = (argv: string[]) => Bun.spawnSync(argv, { stdin: "ignore", stdout: "pipe", stderr: "pipe" });
  const u = unmount(job.unmount);
  if (u.exitCode === 0) return { results };
  // the main thread serves the view until it is unmounted: a busy view is detached (lazily) so that
  // its loop ends, and the first failure is reported
  unmount([job.unmount[0]!, "-u", "-z", job.unmount.at(-1)!]);
  return { results, unmountFailed: `${u.stdout.toString()}${u.stderr.toString()}`.trim() || `exit ${u.exitCode}` };
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
  // outputs too long for the buffer keep their ends, shorter until the whole report (escapes and
  // all) fits: never a report cut inside its JSON
  for (let keep = OUTPUT_TAIL_BYTES; bytes.length > room.length; keep >>= 1) {
    const end = (text: string) => (keep > 0 ? text.slice(-keep) : "");
    const cut = report.results.map((r) => ({ code: r.code, output: end(r.output) }));
    bytes = new TextEncoder().encode(JSON.stringify({ ...report, results: cut, unmountFailed: report.unmountFailed && end(report.unmountFailed) }));
  }
  room.set(bytes);
  Atomics.store(flags, ToolFlag.resultBytes, bytes.length);
  Atomics.store(flags, ToolFlag.done, 1);
  Atomics.notify(flags, ToolFlag.done);
};
