/** how long ending a worker waits for it to finish starting (it takes tens of milliseconds) */
const WORKER_SETTLE_MS = 5_000;

/**
 * End `worker` once `ctl[index]` no longer says it is `starting` (at most WORKER_SETTLE_MS): a worker
 * ended while it still loads its modules can bring the runtime down (Bun 1.3.14 crashed so once in
 * ten runs of a small index build that was over before its worker had started).
 */
export function terminateWhenStarted(worker: Worker, ctl: Int32Array, index: number, starting: number): void {
  waitWhile(ctl, index, starting, WORKER_SETTLE_MS);
  worker.terminate();
}

/** Wait until `ctl[index]` is no longer `value`, at most `ms` milliseconds (a thread's start or stop, shared by Atomics). */
function waitWhile(ctl: Int32Array, index: number, value: number, ms: number): void {
  const deadline = performance.now() + ms;
  for (let left = ms; Atomics.load(ctl, index) === value && left > 0; left = deadline - performance.now()) Atomics.wait(ctl, index, value, left);
}
