// The threads of `serve` (src/serve/nbd-thread.ts): each opens the export itself and serves one
// client at a time; the event loop's thread keeps the clients beyond them.
import { decodeSettings } from "../../native/decode-settings.ts";
import { shutdownSocket } from "../../native/libc-thread.ts";
import { cacheDirectory } from "../source/seek-index/index-file.ts";
import type { NbdThreads } from "./nbd-server.ts";
import type { FromNbdThread, NbdThreadInput, ToNbdThread } from "./nbd-thread.ts";
import { workerEntry } from "../worker-entry.ts";

interface Thread {
  worker: Worker;
  /** the socket it serves, with what to call when that client is gone */
  serving?: { fd: number; done: () => void };
  /** it failed outside a client's handling: it takes no more clients */
  dead?: boolean;
}

/**
 * `count` threads, each with the export open; the reason instead where one could not open it, e.g.
 * a compressed image whose seek index could only be kept in memory.
 */
export async function startNbdThreads(count: number, input: NbdThreadInput, onError: (message: string) => void): Promise<NbdThreads | { failed: string }> {
  const threads: Thread[] = [];
  let stopping = false;
  let started = false;
  const opened = await Promise.all(
    Array.from({ length: count }, () => {
      const worker = new Worker(workerEntry("serve/nbd-thread.ts"), { smol: true });
      const thread: Thread = { worker };
      threads.push(thread);
      return new Promise<string | undefined>((resolve) => {
        worker.onmessage = (event: MessageEvent<FromNbdThread>) => {
          const message = event.data;
          if ("ready" in message) resolve(undefined);
          else if ("failed" in message) resolve(message.failed);
          else if ("error" in message) onError(message.error);
          else if (thread.serving) {
            const { done } = thread.serving;
            thread.serving = undefined;
            done();
            if (stopping) worker.terminate();
          }
        };
        worker.onerror = (event) => {
          resolve(event.message);
          // after the start: its client (if any) is gone with it, and its place is not taken again
          thread.dead = true;
          if (thread.serving) {
            shutdownSocket(thread.serving.fd);
            const { done } = thread.serving;
            thread.serving = undefined;
            done();
          }
          if (started) onError(`a serving thread failed: ${event.message}`);
        };
        worker.postMessage({ open: input, settings: decodeSettings(), cacheDirectory: cacheDirectory() } satisfies ToNbdThread);
      });
    }),
  );
  const failed = opened.find((reason) => reason !== undefined);
  if (failed !== undefined) {
    for (const t of threads) t.worker.terminate();
    return { failed };
  }
  started = true;
  // idle threads must not keep the process alive
  for (const t of threads) t.worker.unref();
  return {
    take(fd, remoteAddress, done) {
      const thread = threads.find((t) => !t.serving && !t.dead);
      if (!thread) return false;
      thread.serving = { fd, done };
      thread.worker.postMessage({ serve: fd, remoteAddress } satisfies ToNbdThread);
      return true;
    },
    stop() {
      stopping = true;
      for (const t of threads) {
        // wakes a thread blocked reading its client: it closes the socket, says so, and is ended then
        if (t.serving) shutdownSocket(t.serving.fd);
        else t.worker.terminate();
      }
    },
  };
}
