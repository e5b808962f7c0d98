/** Wait until `ctl[index]` is no longer `value`, at most `ms` milliseconds (a thread's start or stop, shared by Atomics). */
export function waitWhile(ctl: Int32Array, index: number, value: number, ms: number): void {
  const deadline = performance.now() + ms;
  for (let left = ms; Atomics.load(ctl, index) === value && left > 0; left = deadline - performance.now()) Atomics.wait(ctl, index, value, left);
}
