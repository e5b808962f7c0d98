// An NBD server (the NBD project's doc/proto.md, github.com/NetworkBlockDevice/nbd): listens on TCP
// and/or a Unix socket, admits clients up to a limit (refusing the rest with a reason), shares the
// reply budget among them and hands connections to serving threads when there are any. Each client
// is an NbdConnection (nbd-connection.ts).
import fs from "node:fs";
import type { SocketHandler } from "bun";
import { closeFd } from "../../native/libc-file.ts";
import { dupFd } from "../../native/libc-thread.ts";
import { MAX_CHUNK, MIN_CHUNK, NbdConnection, type NbdExport, PER_CONNECTION_BUFFERS, REPLY_BUDGET } from "./nbd-connection.ts";

export interface NbdListenOptions {
  /** TCP address and port (0: any free port); left out when only a Unix socket is wanted */
  tcp?: { hostname: string; port: number };
  /** path of a Unix socket to create */
  unix?: string;
  /** clients served at once; more are refused during the handshake with a message saying why */
  maxConnections?: number;
  /** told about requests that failed on the server's side (a read error of the image) */
  onError?: (message: string) => void;
  /** how long a refused client may stay connected (to read why) before it is cut off; default 10 s */
  refusedLingerMs?: number;
  /** threads that serve whole connections (read-only exports); a client goes to one when it is free */
  threads?: NbdThreads;
}

/** Threads that each serve one connection at a time with blocking calls (src/serve/nbd-threads.ts). */
export interface NbdThreads {
  /** Serve the client whose socket `fd` is (a descriptor of its own) if a thread is free; `done` when it has gone. */
  take(fd: number, remoteAddress: string, done: () => void): boolean;
  /** End every connection the threads serve and the threads with them. */
  stop(): void;
}

export interface NbdServer {
  /** the TCP port listened on (the real one when 0 was asked for) */
  readonly port: number | undefined;
  readonly unix: string | undefined;
  /** how many clients are connected now (refused ones not counted) */
  readonly connections: number;
  /** the most reply bytes the server holds for one client, and for all of them together */
  readonly limits: { perConnection: number; total: number; connections: number };
  /** close every connection and stop listening; removes the Unix socket */
  stop(): void;
}

/** clients served at once unless told otherwise */
export const DEFAULT_MAX_CONNECTIONS = 64;
const REFUSED_LINGER_MS = 10_000;

const LISTEN_ERRORS: Record<string, string> = {
  EADDRINUSE: "the address is in use (another server?); choose another port",
  EADDRNOTAVAIL: "that address is not one of this machine's",
  EACCES: "permission denied (ports below 1024 need root)",
  ENOENT: "its directory does not exist",
};

/** Bun's listen error names neither the cause nor the port; say both. */
function withReason<T>(where: string, listen: () => T): T {
  try {
    return listen();
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code ?? "";
    throw new Error(`cannot listen on ${where}: ${LISTEN_ERRORS[code] ?? (code || (e as Error).message)}`);
  }
}

/** Listen on TCP and/or a Unix socket and serve `exported` to up to `maxConnections` clients at once. */
export function serveNbd(exported: NbdExport, opts: NbdListenOptions): NbdServer {
  if (!opts.tcp && !opts.unix) throw new Error("serveNbd needs a TCP address or a Unix socket path");
  const maxConnections = opts.maxConnections ?? DEFAULT_MAX_CONNECTIONS;
  const open = new Set<NbdConnection>();
  const kept = { bytes: 0 };
  const chunkSize = () => Math.max(MIN_CHUNK, Math.min(MAX_CHUNK, Math.floor(REPLY_BUDGET / Math.max(1, open.size) / MIN_CHUNK) * MIN_CHUNK));
  let refusedOpen = 0;
  let lastRefusalLogged = 0;
  // once clients have gone, collect what they held so that the memory goes back to the system
  let collect: Timer | undefined;
  const collectSoon = () => {
    if (collect) return;
    collect = setTimeout(() => {
      collect = undefined;
      Bun.gc(true);
    }, 200);
    collect.unref();
  };
  // clients a thread serves (opts.threads): counted here, their sockets held there
  let onThreads = 0;
  const handler: SocketHandler<NbdConnection | undefined> = {
    open(socket) {
      let refusal: string | undefined;
      if (open.size + onThreads < maxConnections && opts.threads && handOff(socket)) {
        // the event loop lets go of the socket without shutting it down; the thread's descriptor keeps it
        socket.end();
        return;
      }
      if (open.size + onThreads >= maxConnections) {
        // a refused client gets the handshake and a reason; beyond as many again, just the close
        if (refusedOpen >= maxConnections) {
          socket.end();
          return;
        }
        refusal = `the server has ${maxConnections} clients already (imgtool serve --max-connections); try again later`;
        if (Date.now() - lastRefusalLogged > 10_000) {
          lastRefusalLogged = Date.now();
          opts.onError?.(`${socket.remoteAddress || "client"}: refused: ${maxConnections} clients connected already (--max-connections)`);
        }
      }
      const c = new NbdConnection(socket, exported, opts.onError, refusal, chunkSize, kept);
      socket.data = c;
      if (refusal) {
        refusedOpen++;
        // it has had its answer: it may not hold a place for as long as it likes
        setTimeout(() => c.closeHard(), opts.refusedLingerMs ?? REFUSED_LINGER_MS).unref();
      } else open.add(c);
      c.greet();
    },
    data(socket, chunk) {
      socket.data?.onData(chunk);
    },
    drain(socket) {
      socket.data?.onDrain();
    },
    close(socket) {
      const c = socket.data;
      if (!c) return;
      c.release();
      socket.data = undefined;
      if (open.has(c)) open.delete(c);
      else refusedOpen--;
      collectSoon();
    },
    error(socket, error) {
      opts.onError?.(`${socket.remoteAddress || "client"}: ${error.message}`);
    },
  };
  function handOff(socket: { remoteAddress: string }): boolean {
    // Bun's sockets carry their descriptor (not in its types)
    const fd = (socket as { fd?: unknown }).fd;
    if (typeof fd !== "number" || fd < 0) return false;
    let own: number;
    try {
      own = dupFd(fd);
    } catch {
      // out of descriptors: this client stays on the event loop
      return false;
    }
    const taken = opts.threads!.take(own, socket.remoteAddress, () => {
      onThreads--;
      collectSoon();
    });
    if (taken) onThreads++;
    else closeFd(own);
    return taken;
  }
  const listeners: { stop(closeActiveConnections?: boolean): void }[] = [];
  let port: number | undefined;
  try {
    if (opts.unix) {
      const unix = opts.unix;
      listeners.push(withReason(unix, () => Bun.listen<NbdConnection | undefined>({ unix, socket: handler })));
    }
    if (opts.tcp) {
      const { hostname, port: asked } = opts.tcp;
      const where = `${hostname.includes(":") ? `[${hostname}]` : hostname}:${asked}`;
      const tcp = withReason(where, () => Bun.listen<NbdConnection | undefined>({ hostname, port: asked, socket: handler }));
      port = tcp.port;
      listeners.push(tcp);
    }
  } catch (e) {
    for (const l of listeners) l.stop(true);
    if (opts.unix && listeners.length > 0) fs.rmSync(opts.unix, { force: true });
    throw e;
  }
  let stopped = false;
  return {
    port,
    unix: opts.unix,
    get connections() {
      return open.size + onThreads;
    },
    // a chunk of a reply, the buffers for small replies and writes, what arrived while replies waited
    limits: {
      perConnection: MAX_CHUNK + PER_CONNECTION_BUFFERS,
      // the kept chunk buffers, and a chunk each in flight
      total: REPLY_BUDGET + Math.max(REPLY_BUDGET, maxConnections * MIN_CHUNK) + maxConnections * PER_CONNECTION_BUFFERS,
      connections: maxConnections,
    },
    stop() {
      if (stopped) return;
      stopped = true;
      for (const l of listeners) l.stop(true);
      for (const c of open) c.closeHard();
      opts.threads?.stop();
      if (collect) clearTimeout(collect);
      if (opts.unix) fs.rmSync(opts.unix, { force: true });
    },
  };
}
