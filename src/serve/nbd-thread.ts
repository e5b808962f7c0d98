// A thread that serves NBD clients one at a time with blocking socket calls, so that the reads,
// the decoding and the sends of several clients run on several cores. It opens the export again
// (read-only; a compressed image only through the seek index the main thread left on disk).
import { type DecodeSettings, useDecodeSettings } from "../../native/decode-settings.ts";
import { closeFd, makeBlocking } from "../../native/libc-file.ts";
import { recvInto, SocketSender } from "../../native/libc-thread.ts";
import { openInputVolume } from "../input/input-volume.ts";
import { useCacheDirectory } from "../source/seek-index/index-file.ts";
import { volumeExport } from "./image-export.ts";
import { MAX_CHUNK, type NbdExport, NbdConnection, type NbdTransport } from "./nbd-connection.ts";

declare const self: Worker;

/** What to open: the serve command's input, as it was given. */
export interface NbdThreadInput {
  image: string;
  partition?: string;
  disk?: string;
  exportName: string;
}

export type ToNbdThread = { open: NbdThreadInput; settings: DecodeSettings; cacheDirectory: string | undefined } | { serve: number; remoteAddress: string };
export type FromNbdThread = { ready: true } | { failed: string } | { done: number } | { error: string };

/** Small replies and headers gathered into one send; a larger chunk goes out with them at once. */
const GATHER_BYTES = 256 << 10;
const RECEIVE_BYTES = 256 << 10;
const COLLECT_EVERY_BATCHES = 128;

class BlockingTransport implements NbdTransport {
  private readonly sender: SocketSender;
  private readonly gathered = new Uint8Array(GATHER_BYTES);
  private gatheredLength = 0;
  private gone = false;

  constructor(
    fd: number,
    readonly remoteAddress: string,
  ) {
    this.sender = new SocketSender(fd);
  }

  write(bytes: Uint8Array): number {
    if (this.gone) return -1;
    if (bytes.length <= GATHER_BYTES - this.gatheredLength) {
      this.gathered.set(bytes, this.gatheredLength);
      this.gatheredLength += bytes.length;
      return bytes.length;
    }
    const pending = this.gathered.subarray(0, this.gatheredLength);
    this.gatheredLength = 0;
    if (!this.sender.send([pending, bytes])) this.gone = true;
    return this.gone ? -1 : bytes.length;
  }

  /** Send what was gathered: done after every batch of requests, so that no reply waits. */
  flush(): void {
    if (this.gone || this.gatheredLength === 0) return;
    const pending = this.gathered.subarray(0, this.gatheredLength);
    this.gatheredLength = 0;
    if (!this.sender.send([pending])) this.gone = true;
  }

  // a blocking send never leaves anything behind: nothing to pause for
  pause(): void {}
  resume(): void {}

  end(): void {
    this.flush();
  }
}

let exported: NbdExport | undefined;

function post(message: FromNbdThread): void {
  self.postMessage(message);
}

/** One client from its greeting to its end; the descriptor is closed here. */
function serve(fd: number, remoteAddress: string): void {
  const transport = new BlockingTransport(fd, remoteAddress);
  const connection = new NbdConnection(transport, exported!, (message) => post({ error: message }), undefined, () => MAX_CHUNK, { bytes: 0 });
  try {
    makeBlocking(fd);
    connection.greet();
    transport.flush();
    const received = new Uint8Array(RECEIVE_BYTES);
    let batches = 0;
    while (connection.phase !== "closed") {
      const n = recvInto(fd, received);
      if (n <= 0) break;
      connection.onData(received.subarray(0, n));
      transport.flush();
      // this loop never yields to the event loop, and a worker's collector lets each request's
      // small garbage pile up to tens of MiB: a quick collection now and then keeps it young
      if (++batches % COLLECT_EVERY_BATCHES === 0) Bun.gc(false);
    }
  } finally {
    connection.release();
    closeFd(fd);
  }
}

self.onmessage = (event: MessageEvent<ToNbdThread>) => {
  const message = event.data;
  if ("open" in message) {
    useDecodeSettings(message.settings);
    // the main thread may have written the export's seek index there
    if (message.cacheDirectory !== undefined) useCacheDirectory(message.cacheDirectory);
    const { image, partition, disk, exportName } = message.open;
    try {
      const input = openInputVolume(image, { command: "serve", partition, disk, seekIndex: { mode: "use-if-present" } });
      exported = volumeExport(input.volume, exportName, input.description);
      post({ ready: true });
    } catch (e) {
      post({ failed: (e as Error).message });
    }
  } else {
    try {
      serve(message.serve, message.remoteAddress);
    } catch (e) {
      post({ error: `${message.remoteAddress || "client"}: ${(e as Error).message}` });
    }
    post({ done: message.serve });
  }
};
