// A read-only NBD server: fixed newstyle handshake and simple replies, as in the NBD project's
// doc/proto.md (github.com/NetworkBlockDevice/nbd). Every multi-byte field is big-endian.
import fs from "node:fs";
import type { Socket, SocketHandler } from "bun";

/** What the server exports: a size and random reads (bounds already checked by the server). */
export interface NbdExport {
  name: string;
  /** shown by NBD_OPT_LIST and NBD_INFO_DESCRIPTION */
  description: string;
  size: number;
  /** the block size reads are efficient at (NBD_INFO_BLOCK_SIZE preferred size) */
  preferredBlockSize: number;
  read(offset: number, length: number): Uint8Array;
}

export interface NbdListenOptions {
  /** TCP address and port (0: any free port); left out when only a Unix socket is wanted */
  tcp?: { hostname: string; port: number };
  /** path of a Unix socket to create */
  unix?: string;
  /** told about requests that failed on the server's side (a read error of the image) */
  onError?: (message: string) => void;
}

export interface NbdServer {
  /** the TCP port listened on (the real one when 0 was asked for) */
  readonly port: number | undefined;
  readonly unix: string | undefined;
  /** how many clients are connected now */
  readonly connections: number;
  /** close every connection and stop listening; removes the Unix socket */
  stop(): void;
}

const NBDMAGIC = 0x4e42444d41474943n;
const IHAVEOPT = 0x49484156454f5054n;
const OPTION_REPLY_MAGIC = 0x3e889045565a9n;
const REQUEST_MAGIC = 0x25609513;
const SIMPLE_REPLY_MAGIC = 0x67446698;

const FLAG_FIXED_NEWSTYLE = 1 << 0;
const FLAG_NO_ZEROES = 1 << 1;
const CLIENT_FLAGS_KNOWN = FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES;

const FLAG_HAS_FLAGS = 1 << 0;
const FLAG_READ_ONLY = 1 << 1;
const FLAG_SEND_FLUSH = 1 << 2;
/** no cache at all, so any number of connections see the same bytes */
const FLAG_CAN_MULTI_CONN = 1 << 8;
const TRANSMISSION_FLAGS = FLAG_HAS_FLAGS | FLAG_READ_ONLY | FLAG_SEND_FLUSH | FLAG_CAN_MULTI_CONN;

const OPT_EXPORT_NAME = 1;
const OPT_ABORT = 2;
const OPT_LIST = 3;
const OPT_INFO = 6;
const OPT_GO = 7;

const REP_ACK = 1;
const REP_SERVER = 2;
const REP_INFO = 3;
const REP_ERR_UNSUP = 0x80000001;
const REP_ERR_INVALID = 0x80000003;
const REP_ERR_UNKNOWN = 0x80000006;
const REP_ERR_TOO_BIG = 0x80000009;

const INFO_EXPORT = 0;
const INFO_NAME = 1;
const INFO_DESCRIPTION = 2;
const INFO_BLOCK_SIZE = 3;

const CMD_READ = 0;
const CMD_WRITE = 1;
const CMD_DISC = 2;
const CMD_FLUSH = 3;
const CMD_TRIM = 4;
const CMD_WRITE_ZEROES = 6;

const EPERM = 1;
const EIO = 5;
const EINVAL = 22;

/** the largest read answered, the spec's interoperable maximum payload (2^25) */
export const MAX_PAYLOAD = 1 << 25;
/** option data beyond this (names are at most 4096 bytes) is skipped and refused */
const MAX_OPTION_DATA = 16 << 10;
const OPTION_HEADER = 16;
const REQUEST_SIZE = 28;
const REPLY_HEADER = 16;
/** room for one option or a few pipelined requests; more waits in the kernel (the socket is paused) */
const RECEIVE_BUFFER = OPTION_HEADER + MAX_OPTION_DATA + 64 * REQUEST_SIZE;

type Phase = "client-flags" | "options" | "transmission" | "closed";

/** One client: its bytes in, its replies out, and where it is in the protocol. */
class Connection {
  phase: Phase = "client-flags";
  noZeroes = false;
  private readonly received = new Uint8Array(RECEIVE_BUFFER);
  private readonly receivedView = new DataView(this.received.buffer);
  private receivedLength = 0;
  /** bytes still to drop (the payload of a refused write, oversized option data) */
  private discardLeft = 0;
  /** what to answer once they are dropped */
  private afterDiscard: "write-refused" | "option-too-big" | undefined;
  private refusedOption = 0;
  /** the header of the one reply in flight; reused because nothing new is sent until it is gone */
  private readonly replyHeader = new Uint8Array(REPLY_HEADER);
  private readonly replyHeaderView = new DataView(this.replyHeader.buffer);
  /** reply bytes the socket did not take yet: at most the header and the data of one reply */
  private unsent: Uint8Array[] = [];
  private paused = false;

  constructor(
    readonly socket: Socket<Connection | undefined>,
    private readonly exported: NbdExport,
    private readonly onError: ((message: string) => void) | undefined,
  ) {}

  greet(): void {
    const hello = new Uint8Array(18);
    const dv = new DataView(hello.buffer);
    dv.setBigUint64(0, NBDMAGIC);
    dv.setBigUint64(8, IHAVEOPT);
    dv.setUint16(16, FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES);
    this.send(hello);
  }

  onData(chunk: Uint8Array): void {
    let at = 0;
    while (at < chunk.length && this.phase !== "closed") {
      if (this.discardLeft > 0 && this.receivedLength === 0) {
        // a refused write's payload: dropped straight from the chunk, never buffered
        const n = Math.min(this.discardLeft, chunk.length - at);
        this.discardLeft -= n;
        at += n;
        if (this.discardLeft === 0) this.answerDiscarded();
        continue;
      }
      const n = Math.min(RECEIVE_BUFFER - this.receivedLength, chunk.length - at);
      if (n === 0) {
        // only a client that keeps sending requests without reading the replies gets here
        return this.closeHard("too many requests while the replies go unread");
      }
      this.received.set(chunk.subarray(at, at + n), this.receivedLength);
      this.receivedLength += n;
      at += n;
      this.process();
    }
  }

  onDrain(): void {
    while (this.unsent.length > 0) {
      const part = this.unsent[0]!;
      const n = this.socket.write(part);
      if (n < 0) return this.closeHard();
      if (n < part.length) {
        this.unsent[0] = part.subarray(n);
        return;
      }
      this.unsent.shift();
    }
    if (this.paused) {
      this.paused = false;
      this.socket.resume();
      this.process();
    }
  }

  /** Handle every whole message received, until one is missing bytes or replies back up. */
  private process(): void {
    let at = 0;
    while (this.phase !== "closed" && this.unsent.length === 0) {
      if (this.discardLeft > 0) {
        const n = Math.min(this.discardLeft, this.receivedLength - at);
        if (n === 0) break;
        at += n;
        this.discardLeft -= n;
        if (this.discardLeft === 0) this.answerDiscarded();
        continue;
      }
      const used = this.step(at);
      if (used === 0) break;
      at += used;
    }
    if (at > 0) {
      this.received.copyWithin(0, at, this.receivedLength);
      this.receivedLength -= at;
    }
    if (this.unsent.length > 0 && !this.paused && this.phase !== "closed") {
      this.paused = true;
      this.socket.pause();
    }
  }

  /** One message at `at` in the receive buffer: bytes used, or 0 when it is not all there. */
  private step(at: number): number {
    const have = this.receivedLength - at;
    const dv = this.receivedView;
    if (this.phase === "client-flags") {
      if (have < 4) return 0;
      const flags = dv.getUint32(at);
      if ((flags & ~CLIENT_FLAGS_KNOWN) !== 0 || (flags & FLAG_FIXED_NEWSTYLE) === 0) {
        this.closeHard();
        return 0;
      }
      this.noZeroes = (flags & FLAG_NO_ZEROES) !== 0;
      this.phase = "options";
      return 4;
    }
    if (this.phase === "options") {
      if (have < OPTION_HEADER) return 0;
      if (dv.getBigUint64(at) !== IHAVEOPT) {
        this.closeHard();
        return 0;
      }
      const option = dv.getUint32(at + 8);
      const length = dv.getUint32(at + 12);
      if (length > MAX_OPTION_DATA) {
        if (option === OPT_EXPORT_NAME || option === OPT_GO) {
          this.closeHard();
          return 0;
        }
        this.refusedOption = option;
        this.discard(length, "option-too-big");
        return OPTION_HEADER;
      }
      if (have < OPTION_HEADER + length) return 0;
      this.option(option, this.received.subarray(at + OPTION_HEADER, at + OPTION_HEADER + length));
      return OPTION_HEADER + length;
    }
    if (have < REQUEST_SIZE) return 0;
    if (dv.getUint32(at) !== REQUEST_MAGIC) {
      this.closeHard();
      return 0;
    }
    this.request(at);
    return REQUEST_SIZE;
  }

  // ---- handshake: option haggling (proto.md "Option types")

  private option(option: number, data: Uint8Array): void {
    const dv = new DataView(data.buffer, data.byteOffset, data.byteLength);
    switch (option) {
      case OPT_EXPORT_NAME: {
        if (!this.isOurs(data)) return this.closeHard();
        const reply = new Uint8Array(this.noZeroes ? 10 : 134);
        const rv = new DataView(reply.buffer);
        rv.setBigUint64(0, BigInt(this.exported.size));
        rv.setUint16(8, TRANSMISSION_FLAGS);
        this.phase = "transmission";
        return this.send(reply);
      }
      case OPT_ABORT:
        this.send(optionReply(option, REP_ACK));
        this.phase = "closed";
        this.socket.end();
        return;
      case OPT_LIST: {
        if (data.length !== 0) return this.send(optionReply(option, REP_ERR_INVALID, "NBD_OPT_LIST takes no data"));
        const name = utf8(this.exported.name);
        const server = new Uint8Array(4 + name.length);
        new DataView(server.buffer).setUint32(0, name.length);
        server.set(name, 4);
        return this.send(concat(optionReply(option, REP_SERVER, server), optionReply(option, REP_ACK)));
      }
      case OPT_INFO:
      case OPT_GO: {
        const nameLength = data.length >= 4 ? dv.getUint32(0) : Infinity;
        if (nameLength > data.length - 6) return this.send(optionReply(option, REP_ERR_INVALID, "name longer than the option"));
        const requests = dv.getUint16(4 + nameLength);
        if (6 + nameLength + 2 * requests !== data.length) return this.send(optionReply(option, REP_ERR_INVALID, "information requests do not fill the option"));
        if (!this.isOurs(data.subarray(4, 4 + nameLength))) return this.send(optionReply(option, REP_ERR_UNKNOWN, "no such export; NBD_OPT_LIST names it"));
        const asked = (type: number) => {
          for (let i = 0; i < requests; i++) if (dv.getUint16(6 + nameLength + 2 * i) === type) return true;
          return false;
        };
        const replies = [infoReply(option, INFO_EXPORT, this.exported), infoReply(option, INFO_BLOCK_SIZE, this.exported)];
        if (asked(INFO_NAME)) replies.push(infoReply(option, INFO_NAME, this.exported));
        if (asked(INFO_DESCRIPTION)) replies.push(infoReply(option, INFO_DESCRIPTION, this.exported));
        replies.push(optionReply(option, REP_ACK));
        if (option === OPT_GO) this.phase = "transmission";
        return this.send(concat(...replies));
      }
      default:
        // NBD_OPT_STRUCTURED_REPLY among them: clients fall back to simple replies
        return this.send(optionReply(option, REP_ERR_UNSUP));
    }
  }

  /** The empty name is the default export; any other must be its name. */
  private isOurs(name: Uint8Array): boolean {
    return name.length === 0 || Buffer.from(name.buffer, name.byteOffset, name.length).toString("utf8") === this.exported.name;
  }

  // ---- transmission (proto.md "Request message", "Simple reply message", "Request types")

  private request(at: number): void {
    const dv = this.receivedView;
    const type = dv.getUint16(at + 6);
    for (let i = 8; i < 16; i++) this.replyHeader[i] = this.received[at + i]!;
    const high = dv.getUint32(at + 16);
    const offset = high * 0x1_0000_0000 + dv.getUint32(at + 20);
    const length = dv.getUint32(at + 24);
    switch (type) {
      case CMD_READ:
        return this.read(offset, length, high);
      case CMD_WRITE:
        return this.discard(length, "write-refused");
      case CMD_DISC:
        this.phase = "closed";
        this.socket.end();
        return;
      case CMD_FLUSH:
        return this.reply(0);
      case CMD_TRIM:
      case CMD_WRITE_ZEROES:
        return this.reply(EPERM);
      default:
        return this.reply(EINVAL);
    }
  }

  private read(offset: number, length: number, offsetHigh: number): void {
    // 2^21 × 2^32 is past any safe integer: such an offset is out of range whatever the export
    if (offsetHigh >= 1 << 21 || length > MAX_PAYLOAD || offset + length > this.exported.size) return this.reply(EINVAL);
    let data: Uint8Array;
    try {
      data = length === 0 ? EMPTY : this.exported.read(offset, length);
      if (data.length !== length) throw new Error(`read ${data.length} bytes of ${length}`);
    } catch (e) {
      this.onError?.(`read of ${length} bytes at offset ${offset} failed: ${(e as Error).message}`);
      return this.reply(EIO);
    }
    this.reply(0, data);
  }

  private reply(error: number, data?: Uint8Array): void {
    this.replyHeaderView.setUint32(0, SIMPLE_REPLY_MAGIC);
    this.replyHeaderView.setUint32(4, error);
    this.send(this.replyHeader);
    if (data && data.length > 0) this.send(data);
  }

  private discard(bytes: number, then: "write-refused" | "option-too-big"): void {
    this.afterDiscard = then;
    this.discardLeft = bytes;
    if (bytes === 0) this.answerDiscarded();
  }

  private answerDiscarded(): void {
    const then = this.afterDiscard;
    this.afterDiscard = undefined;
    if (then === "write-refused") this.reply(EPERM);
    else if (then === "option-too-big") this.send(optionReply(this.refusedOption, REP_ERR_TOO_BIG, "option data too long"));
  }

  private send(bytes: Uint8Array): void {
    if (this.unsent.length > 0) {
      this.unsent.push(bytes);
      return;
    }
    const n = this.socket.write(bytes);
    if (n < 0) return this.closeHard();
    if (n < bytes.length) this.unsent.push(bytes.subarray(n));
  }

  closeHard(reason?: string): void {
    if (reason) this.onError?.(`${this.socket.remoteAddress || "client"}: ${reason}`);
    this.phase = "closed";
    this.unsent = [];
    this.socket.end();
  }
}

const EMPTY = new Uint8Array(0);

function utf8(text: string): Uint8Array {
  return new TextEncoder().encode(text);
}

function concat(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/** An option reply: magic, option, reply type, length, data (proto.md "Fixed newstyle negotiation"). */
function optionReply(option: number, type: number, data: Uint8Array | string = EMPTY): Uint8Array {
  const payload = typeof data === "string" ? utf8(data) : data;
  const out = new Uint8Array(20 + payload.length);
  const dv = new DataView(out.buffer);
  dv.setBigUint64(0, OPTION_REPLY_MAGIC);
  dv.setUint32(8, option);
  dv.setUint32(12, type);
  dv.setUint32(16, payload.length);
  out.set(payload, 20);
  return out;
}

/** An NBD_REP_INFO reply of one information type (proto.md "NBD_REP_INFO"). */
function infoReply(option: number, type: number, exported: NbdExport): Uint8Array {
  let payload: Uint8Array;
  if (type === INFO_EXPORT) {
    payload = new Uint8Array(12);
    const dv = new DataView(payload.buffer);
    dv.setBigUint64(2, BigInt(exported.size));
    dv.setUint16(10, TRANSMISSION_FLAGS);
  } else if (type === INFO_BLOCK_SIZE) {
    payload = new Uint8Array(14);
    const dv = new DataView(payload.buffer);
    dv.setUint32(2, 1);
    dv.setUint32(6, exported.preferredBlockSize);
    dv.setUint32(10, MAX_PAYLOAD);
  } else {
    const text = utf8(type === INFO_NAME ? exported.name : exported.description);
    payload = new Uint8Array(2 + text.length);
    payload.set(text, 2);
  }
  new DataView(payload.buffer).setUint16(0, type);
  return optionReply(option, REP_INFO, payload);
}

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

/** Listen on TCP and/or a Unix socket and serve `exported` read-only to any number of clients. */
export function serveNbd(exported: NbdExport, opts: NbdListenOptions): NbdServer {
  if (!opts.tcp && !opts.unix) throw new Error("serveNbd needs a TCP address or a Unix socket path");
  const open = new Set<Connection>();
  const handler: SocketHandler<Connection | undefined> = {
    open(socket) {
      const c = new Connection(socket, exported, opts.onError);
      socket.data = c;
      open.add(c);
      c.greet();
    },
    data(socket, chunk) {
      socket.data?.onData(chunk);
    },
    drain(socket) {
      socket.data?.onDrain();
    },
    close(socket) {
      if (socket.data) {
        socket.data.phase = "closed";
        open.delete(socket.data);
      }
    },
    error(socket, error) {
      opts.onError?.(`${socket.remoteAddress || "client"}: ${error.message}`);
    },
  };
  const listeners: { stop(closeActiveConnections?: boolean): void }[] = [];
  let port: number | undefined;
  try {
    if (opts.unix) {
      const unix = opts.unix;
      listeners.push(withReason(unix, () => Bun.listen<Connection | undefined>({ unix, socket: handler })));
    }
    if (opts.tcp) {
      const { hostname, port: asked } = opts.tcp;
      const where = `${hostname.includes(":") ? `[${hostname}]` : hostname}:${asked}`;
      const tcp = withReason(where, () => Bun.listen<Connection | undefined>({ hostname, port: asked, socket: handler }));
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
      return open.size;
    },
    stop() {
      if (stopped) return;
      stopped = true;
      for (const l of listeners) l.stop(true);
      for (const c of open) c.closeHard();
      if (opts.unix) fs.rmSync(opts.unix, { force: true });
    },
  };
}
