// An NBD server: fixed newstyle handshake, simple and structured replies, the base:allocation
// meta context, and writes when the export has an overlay, as in the NBD project's doc/proto.md
// (github.com/NetworkBlockDevice/nbd). Every multi-byte field is big-endian.
import fs from "node:fs";
import type { SocketHandler } from "bun";
import type { Extent, Volume, WritableVolume } from "../volume/volume.ts";
import { concatBytes } from "../bytes.ts";
import { closeFd } from "../../native/libc-file.ts";
import { dupFd } from "../../native/libc-thread.ts";

/** What the server exports: a volume, writable when it is an overlay. */
export interface NbdExport {
  name: string;
  /** shown by NBD_OPT_LIST and NBD_INFO_DESCRIPTION */
  description: string;
  volume: Volume;
  /** the same volume taking writes; absent: the export is read-only */
  writable?: WritableVolume;
  /** the block size reads are efficient at (NBD_INFO_BLOCK_SIZE preferred size) */
  preferredBlockSize: number;
}

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

/** What a connection needs of its socket: Bun's on the event loop, or a blocking one on a thread of its own. */
export interface NbdTransport {
  /** bytes taken now (the rest waits for onDrain); negative when the socket is gone */
  write(bytes: Uint8Array): number;
  pause(): void;
  resume(): void;
  end(): void;
  readonly remoteAddress: string;
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

const NBDMAGIC = 0x4e42444d41474943n;
const IHAVEOPT = 0x49484156454f5054n;
const OPTION_REPLY_MAGIC = 0x3e889045565a9n;
const REQUEST_MAGIC = 0x25609513;
const SIMPLE_REPLY_MAGIC = 0x67446698;
const STRUCTURED_REPLY_MAGIC = 0x668e33ef;

const FLAG_FIXED_NEWSTYLE = 1 << 0;
const FLAG_NO_ZEROES = 1 << 1;
const CLIENT_FLAGS_KNOWN = FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES;

const FLAG_HAS_FLAGS = 1 << 0;
const FLAG_READ_ONLY = 1 << 1;
const FLAG_SEND_FLUSH = 1 << 2;
const FLAG_SEND_FUA = 1 << 3;
const FLAG_SEND_TRIM = 1 << 5;
const FLAG_SEND_WRITE_ZEROES = 1 << 6;
/**
 * Every connection reads and writes the one volume object of this process, with no cache of its
 * own, and a flush on any connection flushes it all: what the spec asks of multi-conn.
 */
const FLAG_CAN_MULTI_CONN = 1 << 8;
const READ_ONLY_FLAGS = FLAG_HAS_FLAGS | FLAG_READ_ONLY | FLAG_SEND_FLUSH | FLAG_CAN_MULTI_CONN;
const WRITABLE_FLAGS = FLAG_HAS_FLAGS | FLAG_SEND_FLUSH | FLAG_SEND_FUA | FLAG_SEND_TRIM | FLAG_SEND_WRITE_ZEROES | FLAG_CAN_MULTI_CONN;

const OPT_EXPORT_NAME = 1;
const OPT_ABORT = 2;
const OPT_LIST = 3;
const OPT_INFO = 6;
const OPT_GO = 7;
const OPT_STRUCTURED_REPLY = 8;
const OPT_LIST_META_CONTEXT = 9;
const OPT_SET_META_CONTEXT = 10;

const REP_ACK = 1;
const REP_SERVER = 2;
const REP_INFO = 3;
const REP_META_CONTEXT = 4;
const REP_ERR_UNSUP = 0x80000001;
const REP_ERR_POLICY = 0x80000002;
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
const CMD_BLOCK_STATUS = 7;

const CMD_FLAG_FUA = 1 << 0;
const CMD_FLAG_NO_HOLE = 1 << 1;
const CMD_FLAG_REQ_ONE = 1 << 3;

const REPLY_FLAG_DONE = 1;
const REPLY_TYPE_NONE = 0;
const REPLY_TYPE_OFFSET_DATA = 1;
const REPLY_TYPE_OFFSET_HOLE = 2;
const REPLY_TYPE_BLOCK_STATUS = 5;
const REPLY_TYPE_ERROR_OFFSET = (1 << 15) + 2;

const STATE_HOLE = 1;
const STATE_ZERO = 2;
const BASE_ALLOCATION = "base:allocation";
/** the one meta context there is; 0 means none was chosen */
const BASE_ALLOCATION_ID = 1;

const EPERM = 1;
const EIO = 5;
const EINVAL = 22;
const ENOSPC = 28;
const EOVERFLOW = 75;

/** the largest read or write answered, the spec's interoperable maximum payload (2^25) */
export const MAX_PAYLOAD = 1 << 25;
/**
 * Replies are read from the volume and sent in pieces: a client holds at most one piece the socket
 * has not taken. Few clients get large pieces (fewer turns of the event loop); many share
 * REPLY_BUDGET, down to the smallest piece. Piece buffers kept for reuse stay within it too.
 */
export const MAX_PIECE = 1 << 20;
const MIN_PIECE = 128 << 10;
const REPLY_BUDGET = 32 << 20;
/** writes are passed to the volume in pieces of this size as their payload arrives */
const WRITE_PIECE = 256 << 10;
/** data up to this size is copied behind its header and sent in one write; larger goes as it is */
const SMALL_REPLY = 64 << 10;
/** clients served at once unless told otherwise */
export const DEFAULT_MAX_CONNECTIONS = 64;
const REFUSED_LINGER_MS = 10_000;
/** the descriptors of one block status reply (the spec lets a server answer fewer) */
const MAX_DESCRIPTORS = 8192;
/** option data beyond this (names are at most 4096 bytes) is skipped and refused */
const MAX_OPTION_DATA = 16 << 10;
const OPTION_HEADER = 16;
const REQUEST_SIZE = 28;
const SIMPLE_HEADER = 16;
const CHUNK_HEADER = 20;
/** room for one option or a few pipelined requests */
const RECEIVE_BUFFER = OPTION_HEADER + MAX_OPTION_DATA + 64 * REQUEST_SIZE;
/**
 * Bytes that arrived after the socket was paused (what one read of the kernel's buffer brought);
 * a client that sends more while its replies go unread is cut off.
 */
const MAX_STASHED = 1 << 20;

type Phase = "client-flags" | "options" | "transmission" | "closed";

/** Where a request's payload goes as it arrives, and what to do once it is all there. */
interface PayloadSink {
  take(bytes: Uint8Array): void;
  done(): void;
}

/** One client: its bytes in, its replies out, and where it is in the protocol. */
export class NbdConnection {
  phase: Phase = "client-flags";
  private noZeroes = false;
  private structured = false;
  private metaContext = 0;
  private readonly received = new Uint8Array(RECEIVE_BUFFER);
  private readonly receivedView = new DataView(this.received.buffer);
  private receivedLength = 0;
  /** payload bytes still to come, and where they go */
  private payloadLeft = 0;
  private sink: PayloadSink | undefined;
  /** copies of what arrived while the connection was blocked on its replies */
  private stashed: Uint8Array[] = [];
  private stashedBytes = 0;
  /** reply bytes the socket did not take yet: at most the rest of one piece */
  private unsent: Uint8Array[] = [];
  /** the reply being sent, one piece at a time as the socket takes them */
  private current: Iterator<Uint8Array> | undefined;
  private out: Uint8Array | undefined;
  private staging: Uint8Array | undefined;
  /** where pieces of replies are read to, reused from one to the next */
  private pieceData: Uint8Array | undefined;
  private paused = false;

  constructor(
    readonly socket: NbdTransport,
    private readonly exported: NbdExport,
    private readonly onError: ((message: string) => void) | undefined,
    /** set when the server has no room: every option is refused with this text */
    private readonly refusal: string | undefined,
    /** how large a piece of a reply may be now, from the number of clients */
    private readonly pieceSize: () => number,
    /** the bytes of piece buffers all clients keep, within REPLY_BUDGET */
    private readonly kept: { bytes: number },
  ) {}

  private dropPieceData(): void {
    if (!this.pieceData) return;
    this.kept.bytes -= this.pieceData.length;
    this.pieceData = undefined;
  }

  private get flags(): number {
    return this.exported.writable ? WRITABLE_FLAGS : READ_ONLY_FLAGS;
  }

  greet(): void {
    const hello = new Uint8Array(18);
    const dv = new DataView(hello.buffer);
    dv.setBigUint64(0, NBDMAGIC);
    dv.setBigUint64(8, IHAVEOPT);
    dv.setUint16(16, FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES);
    this.send(hello);
  }

  private blocked(): boolean {
    return this.phase === "closed" || this.current !== undefined || this.unsent.length > 0;
  }

  onData(chunk: Uint8Array): void {
    if (this.blocked() || this.stashed.length > 0) return this.stash(chunk);
    this.consume(chunk);
    this.pauseIfBlocked();
  }

  private stash(bytes: Uint8Array): void {
    if (this.phase === "closed") return;
    this.stashedBytes += bytes.length;
    if (this.stashedBytes > MAX_STASHED) return this.closeHard("too many requests while the replies go unread");
    this.stashed.push(bytes.slice());
  }

  private consume(chunk: Uint8Array): void {
    let at = 0;
    while (at < chunk.length) {
      if (this.phase === "closed") return;
      if (this.blocked()) return this.stash(chunk.subarray(at));
      if (this.payloadLeft > 0 && this.receivedLength === 0) {
        // a write's payload goes straight from the chunk to where it belongs, never buffered whole
        const n = Math.min(this.payloadLeft, chunk.length - at);
        this.feedPayload(chunk.subarray(at, at + n));
        at += n;
        continue;
      }
      const n = Math.min(RECEIVE_BUFFER - this.receivedLength, chunk.length - at);
      if (n === 0) return this.closeHard("a message longer than the receive buffer");
      this.received.set(chunk.subarray(at, at + n), this.receivedLength);
      this.receivedLength += n;
      at += n;
      this.process();
    }
  }

  private feedPayload(bytes: Uint8Array): void {
    this.payloadLeft -= bytes.length;
    const sink = this.sink!;
    sink.take(bytes);
    if (this.payloadLeft === 0) {
      this.sink = undefined;
      sink.done();
    }
  }

  private pauseIfBlocked(): void {
    if (this.blocked() && !this.paused && this.phase !== "closed") {
      this.paused = true;
      this.socket.pause();
    }
  }

  onDrain(): void {
    if (!this.flushUnsent()) return;
    this.pump();
    if (this.blocked()) return;
    // requests that came in one chunk with the one just answered
    this.process();
    while (this.stashed.length > 0 && !this.blocked()) {
      const next = this.stashed.shift()!;
      this.stashedBytes -= next.length;
      this.consume(next);
    }
    if (!this.blocked() && this.paused) {
      this.paused = false;
      this.socket.resume();
    }
  }

  /** Send what the socket did not take; true when all of it is gone. */
  private flushUnsent(): boolean {
    while (this.unsent.length > 0) {
      const part = this.unsent[0]!;
      const n = this.socket.write(part);
      if (n < 0) {
        this.closeHard();
        return false;
      }
      if (n < part.length) {
        this.unsent[0] = part.subarray(n);
        return false;
      }
      this.unsent.shift();
    }
    return this.phase !== "closed";
  }

  /** Build and send pieces of the current reply while the socket takes them. */
  private pump(): void {
    while (this.current && this.unsent.length === 0 && this.phase !== "closed") {
      let r: IteratorResult<Uint8Array>;
      try {
        r = this.current.next();
      } catch (e) {
        // a simple reply already under way cannot carry an error: the spec says disconnect
        this.current = undefined;
        return this.closeHard(`read failed in the middle of a reply: ${(e as Error).message}`);
      }
      if (r.done) this.current = undefined;
      else this.send(r.value);
    }
  }

  /** Handle every whole message received, until one is missing bytes or a reply backs up. */
  private process(): void {
    let at = 0;
    while (!this.blocked()) {
      if (this.payloadLeft > 0) {
        const n = Math.min(this.payloadLeft, this.receivedLength - at);
        if (n === 0) break;
        this.feedPayload(this.received.subarray(at, at + n));
        at += n;
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
        this.expectPayload(length, discardThen(() => this.send(optionReply(option, REP_ERR_TOO_BIG, "option data too long"))));
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

  private expectPayload(bytes: number, sink: PayloadSink): void {
    if (bytes === 0) return sink.done();
    this.payloadLeft = bytes;
    this.sink = sink;
  }

  // ---- handshake: option haggling (proto.md "Option types")

  private option(option: number, data: Uint8Array): void {
    const dv = new DataView(data.buffer, data.byteOffset, data.byteLength);
    if (this.refusal !== undefined) {
      if (option === OPT_EXPORT_NAME) return this.closeHard();
      if (option === OPT_ABORT) return this.abort(option);
      return this.send(optionReply(option, REP_ERR_POLICY, this.refusal));
    }
    switch (option) {
      case OPT_EXPORT_NAME: {
        if (!this.isOurs(data)) return this.closeHard();
        const reply = new Uint8Array(this.noZeroes ? 10 : 134);
        const rv = new DataView(reply.buffer);
        rv.setBigUint64(0, BigInt(this.exported.volume.size));
        rv.setUint16(8, this.flags);
        this.phase = "transmission";
        return this.send(reply);
      }
      case OPT_ABORT:
        return this.abort(option);
      case OPT_LIST: {
        if (data.length !== 0) return this.send(optionReply(option, REP_ERR_INVALID, "NBD_OPT_LIST takes no data"));
        const name = utf8(this.exported.name);
        const server = new Uint8Array(4 + name.length);
        new DataView(server.buffer).setUint32(0, name.length);
        server.set(name, 4);
        return this.send(concatBytes(optionReply(option, REP_SERVER, server), optionReply(option, REP_ACK)));
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
        const replies = [infoReply(option, INFO_EXPORT, this.exported, this.flags), infoReply(option, INFO_BLOCK_SIZE, this.exported, this.flags)];
        if (asked(INFO_NAME)) replies.push(infoReply(option, INFO_NAME, this.exported, this.flags));
        if (asked(INFO_DESCRIPTION)) replies.push(infoReply(option, INFO_DESCRIPTION, this.exported, this.flags));
        replies.push(optionReply(option, REP_ACK));
        if (option === OPT_GO) this.phase = "transmission";
        return this.send(concatBytes(...replies));
      }
      case OPT_STRUCTURED_REPLY:
        if (data.length !== 0) return this.send(optionReply(option, REP_ERR_INVALID, "NBD_OPT_STRUCTURED_REPLY takes no data"));
        this.structured = true;
        return this.send(optionReply(option, REP_ACK));
      case OPT_LIST_META_CONTEXT:
      case OPT_SET_META_CONTEXT:
        return this.metaContextOption(option, data);
      default:
        return this.send(optionReply(option, REP_ERR_UNSUP));
    }
  }

  private abort(option: number): void {
    this.send(optionReply(option, REP_ACK));
    this.phase = "closed";
    this.socket.end();
  }

  /** NBD_OPT_LIST_META_CONTEXT / SET_META_CONTEXT: export name, then queries (proto.md "Metadata querying"). */
  private metaContextOption(option: number, data: Uint8Array): void {
    const dv = new DataView(data.buffer, data.byteOffset, data.byteLength);
    const invalid = (why: string) => this.send(optionReply(option, REP_ERR_INVALID, why));
    if (option === OPT_SET_META_CONTEXT && !this.structured) return invalid("negotiate NBD_OPT_STRUCTURED_REPLY first");
    if (data.length < 8) return invalid("shorter than a name length and a query count");
    const nameLength = dv.getUint32(0);
    if (nameLength > data.length - 8) return invalid("name longer than the option");
    const count = dv.getUint32(4 + nameLength);
    const queries: string[] = [];
    let at = 8 + nameLength;
    for (let i = 0; i < count; i++) {
      if (at + 4 > data.length) return invalid("queries do not fit the option");
      const length = dv.getUint32(at);
      if (length > data.length - at - 4) return invalid("a query longer than the option");
      queries.push(Buffer.from(data.buffer, data.byteOffset + at + 4, length).toString("utf8"));
      at += 4 + length;
    }
    if (at !== data.length) return invalid("bytes after the last query");
    if (!this.isOurs(data.subarray(4, 4 + nameLength))) return this.send(optionReply(option, REP_ERR_UNKNOWN, "no such export; NBD_OPT_LIST names it"));
    const matches =
      option === OPT_LIST_META_CONTEXT
        ? queries.length === 0 || queries.some((q) => q === "base:" || q === BASE_ALLOCATION)
        : queries.includes(BASE_ALLOCATION);
    if (option === OPT_SET_META_CONTEXT) this.metaContext = matches ? BASE_ALLOCATION_ID : 0;
    const replies: Uint8Array[] = [];
    if (matches) {
      const name = utf8(BASE_ALLOCATION);
      const payload = new Uint8Array(4 + name.length);
      new DataView(payload.buffer).setUint32(0, BASE_ALLOCATION_ID);
      payload.set(name, 4);
      replies.push(optionReply(option, REP_META_CONTEXT, payload));
    }
    replies.push(optionReply(option, REP_ACK));
    this.send(concatBytes(...replies));
  }

  /** The empty name is the default export; any other must be its name. */
  private isOurs(name: Uint8Array): boolean {
    return name.length === 0 || Buffer.from(name.buffer, name.byteOffset, name.length).toString("utf8") === this.exported.name;
  }

  // ---- transmission (proto.md "Request message", "Simple reply message", "Structured reply message")

  private request(at: number): void {
    const dv = this.receivedView;
    const flags = dv.getUint16(at + 4);
    const type = dv.getUint16(at + 6);
    const cookie = this.received.slice(at + 8, at + 16);
    const high = dv.getUint32(at + 16);
    // 2^21 × 2^32 is past any safe integer: such an offset is out of range whatever the export
    const offset = high >= 1 << 21 ? Number.MAX_SAFE_INTEGER : high * 0x1_0000_0000 + dv.getUint32(at + 20);
    const length = dv.getUint32(at + 24);
    const size = this.exported.volume.size;
    const inRange = offset + length <= size;
    switch (type) {
      case CMD_READ:
        if (length > MAX_PAYLOAD || !inRange) return this.simpleOrError(cookie, EINVAL, "read past the end of the export or longer than 32 MiB");
        this.current = this.structured ? this.structuredRead(cookie, offset, length) : this.simpleRead(cookie, offset, length);
        return this.pump();
      case CMD_WRITE:
        return this.write(cookie, flags, offset, length, inRange);
      case CMD_DISC:
        this.phase = "closed";
        this.socket.end();
        return;
      case CMD_FLUSH:
        return this.changing(cookie, () => this.exported.writable?.flush());
      case CMD_TRIM:
      case CMD_WRITE_ZEROES: {
        const writable = this.exported.writable;
        if (!writable) return this.simpleReply(cookie, EPERM);
        if (!inRange) return this.simpleReply(cookie, ENOSPC);
        return this.changing(cookie, () => {
          writable.zero(offset, length, type === CMD_TRIM || (flags & CMD_FLAG_NO_HOLE) === 0);
          if (flags & CMD_FLAG_FUA) writable.flush();
        });
      }
      case CMD_BLOCK_STATUS:
        if (this.metaContext === 0) return this.simpleOrError(cookie, EINVAL, "no meta context was chosen (NBD_OPT_SET_META_CONTEXT base:allocation)");
        if (length === 0 || !inRange) return this.simpleOrError(cookie, EINVAL, "block status past the end of the export or of no length");
        return this.blockStatus(cookie, flags, offset, length);
      default:
        return this.simpleReply(cookie, EINVAL);
    }
  }

  /** Run a change to the volume; EIO (and the reason on the server's side) if it throws. */
  private changing(cookie: Uint8Array, change: () => void): void {
    try {
      change();
    } catch (e) {
      this.onError?.(`write to the overlay failed: ${(e as Error).message}`);
      return this.simpleReply(cookie, EIO);
    }
    this.simpleReply(cookie, 0);
  }

  private write(cookie: Uint8Array, flags: number, offset: number, length: number, inRange: boolean): void {
    const writable = this.exported.writable;
    const refuse = !writable ? EPERM : length > MAX_PAYLOAD ? EOVERFLOW : !inRange ? ENOSPC : 0;
    if (refuse !== 0 || !writable) {
      // the payload follows whatever the answer: dropped as it arrives, never buffered
      return this.expectPayload(length, discardThen(() => this.simpleReply(cookie, refuse)));
    }
    // written through in pieces as the payload arrives: a client never has more than a piece here
    const staging = this.stagingBuffer();
    let staged = 0;
    let written = offset;
    let failure: Error | undefined;
    const flushStaged = () => {
      if (staged === 0) return;
      if (!failure) {
        try {
          writable.write(written, staging.subarray(0, staged));
        } catch (e) {
          failure = e as Error;
        }
      }
      written += staged;
      staged = 0;
    };
    this.expectPayload(length, {
      take: (bytes) => {
        let at = 0;
        while (at < bytes.length) {
          const n = Math.min(WRITE_PIECE - staged, bytes.length - at);
          staging.set(bytes.subarray(at, at + n), staged);
          staged += n;
          at += n;
          if (staged === WRITE_PIECE) flushStaged();
        }
      },
      done: () => {
        flushStaged();
        if (!failure && flags & CMD_FLAG_FUA) {
          try {
            writable.flush();
          } catch (e) {
            failure = e as Error;
          }
        }
        if (failure) this.onError?.(`write of ${length} bytes at offset ${offset} failed: ${failure.message}`);
        this.simpleReply(cookie, failure ? EIO : 0);
      },
    });
  }

  /** headers and small replies are built here; free again once the socket took them */
  private pieceBuffer(): Uint8Array {
    this.out ??= new Uint8Array(CHUNK_HEADER + 8 + SMALL_REPLY);
    return this.out;
  }

  /** a write's payload is gathered here (never while a reply is built: requests are taken one at a time) */
  private stagingBuffer(): Uint8Array {
    this.staging ??= new Uint8Array(WRITE_PIECE);
    return this.staging;
  }

  /** Header, then the data in pieces; a piece that fails after the header went ends the connection. */
  private *simpleRead(cookie: Uint8Array, offset: number, length: number): Generator<Uint8Array> {
    const out = this.pieceBuffer();
    const dv = new DataView(out.buffer);
    const first = Math.min(length, this.pieceSize());
    let data: Uint8Array;
    try {
      data = this.readVolume(offset, first);
    } catch (e) {
      this.onError?.(`read of ${length} bytes at offset ${offset} failed: ${(e as Error).message}`);
      return yield this.simpleHeader(cookie, EIO);
    }
    dv.setUint32(0, SIMPLE_REPLY_MAGIC);
    dv.setUint32(4, 0);
    out.set(cookie, 8);
    if (first <= SMALL_REPLY) {
      out.set(data, SIMPLE_HEADER);
      yield out.subarray(0, SIMPLE_HEADER + first);
    } else {
      yield out.subarray(0, SIMPLE_HEADER);
      yield data;
    }
    for (let pos = offset + first; pos < offset + length; ) {
      const n = Math.min(this.pieceSize(), offset + length - pos);
      yield this.readVolume(pos, n);
      pos += n;
    }
  }

  /** OFFSET_DATA chunks in pieces and OFFSET_HOLE chunks for holes; the last one says DONE. */
  private *structuredRead(cookie: Uint8Array, offset: number, length: number): Generator<Uint8Array> {
    const out = this.pieceBuffer();
    const dv = new DataView(out.buffer);
    const end = offset + length;
    let pos = offset;
    try {
      if (length === 0) return yield this.chunkHeader(cookie, REPLY_FLAG_DONE, REPLY_TYPE_NONE, 0);
      for (const extent of this.exported.volume.extents(offset, length)) {
        const extentEnd = extent.offset + extent.length;
        if (!extent.data) {
          this.writeChunkHeader(dv, cookie, extentEnd === end ? REPLY_FLAG_DONE : 0, REPLY_TYPE_OFFSET_HOLE, 12);
          dv.setBigUint64(CHUNK_HEADER, BigInt(extent.offset));
          dv.setUint32(CHUNK_HEADER + 8, extent.length);
          yield out.subarray(0, CHUNK_HEADER + 12);
          pos = extentEnd;
          continue;
        }
        while (pos < extentEnd) {
          const n = Math.min(this.pieceSize(), extentEnd - pos);
          if (n <= SMALL_REPLY) {
            // one write for a small reply, its data read in place
            this.readVolumeInto(pos, out.subarray(CHUNK_HEADER + 8, CHUNK_HEADER + 8 + n));
            this.writeChunkHeader(dv, cookie, pos + n === end ? REPLY_FLAG_DONE : 0, REPLY_TYPE_OFFSET_DATA, 8 + n);
            dv.setBigUint64(CHUNK_HEADER, BigInt(pos));
            yield out.subarray(0, CHUNK_HEADER + 8 + n);
          } else {
            const data = this.readVolume(pos, n);
            this.writeChunkHeader(dv, cookie, pos + n === end ? REPLY_FLAG_DONE : 0, REPLY_TYPE_OFFSET_DATA, 8 + n);
            dv.setBigUint64(CHUNK_HEADER, BigInt(pos));
            yield out.subarray(0, CHUNK_HEADER + 8);
            yield data;
          }
          pos += n;
        }
      }
    } catch (e) {
      const message = (e as Error).message;
      this.onError?.(`read of ${length} bytes at offset ${offset} failed: ${message}`);
      const text = utf8(message.slice(0, 1024));
      const payload = new Uint8Array(6 + text.length + 8);
      const pv = new DataView(payload.buffer);
      pv.setUint32(0, EIO);
      pv.setUint16(4, text.length);
      payload.set(text, 6);
      pv.setBigUint64(6 + text.length, BigInt(pos));
      return yield concatBytes(this.chunkHeader(cookie, REPLY_FLAG_DONE, REPLY_TYPE_ERROR_OFFSET, payload.length), payload);
    }
  }

  /** Bytes of the volume into `into` (a small piece of a reply, read where it is sent from). */
  private readVolumeInto(offset: number, into: Uint8Array): void {
    const volume = this.exported.volume;
    if (volume.readInto) return volume.readInto(offset, into);
    const data = volume.read(offset, into.length);
    if (data.length !== into.length) throw new Error(`read ${data.length} bytes of ${into.length}`);
    into.set(data);
  }

  /**
   * Bytes of the volume for one piece: into this client's own piece buffer where the volume can
   * (kept while the server's budget allows: no allocation per piece), else freshly read.
   */
  private readVolume(offset: number, length: number): Uint8Array {
    const volume = this.exported.volume;
    if (volume.readInto && length > SMALL_REPLY) {
      let buffer = this.pieceData;
      if (!buffer || buffer.length < length) {
        this.dropPieceData();
        const size = Math.max(length, this.pieceSize());
        if (this.kept.bytes + size <= REPLY_BUDGET) {
          buffer = this.pieceData = new Uint8Array(size);
          this.kept.bytes += size;
        } else buffer = undefined;
      }
      if (buffer) {
        const part = buffer.subarray(0, length);
        volume.readInto(offset, part);
        return part;
      }
    }
    const data = volume.read(offset, length);
    if (data.length !== length) throw new Error(`read ${data.length} bytes of ${length}`);
    return data;
  }

  /** Descriptors of base:allocation from the volume's extents, clipped to the request. */
  private blockStatus(cookie: Uint8Array, flags: number, offset: number, length: number): void {
    const most = flags & CMD_FLAG_REQ_ONE ? 1 : MAX_DESCRIPTORS;
    const descriptors: Extent[] = [];
    try {
      for (const extent of this.exported.volume.extents(offset, length)) {
        // a descriptor's length is 32 bits: a longer extent is told in parts
        let at = extent.offset;
        const end = extent.offset + extent.length;
        while (at < end && descriptors.length < most) {
          const n = Math.min(end - at, 0xffff_f000);
          descriptors.push({ offset: at, length: n, data: extent.data });
          at += n;
        }
        if (descriptors.length >= most) break;
      }
    } catch (e) {
      this.onError?.(`block status of ${length} bytes at offset ${offset} failed: ${(e as Error).message}`);
      return this.simpleReply(cookie, EIO);
    }
    const payload = new Uint8Array(4 + 8 * descriptors.length);
    const dv = new DataView(payload.buffer);
    dv.setUint32(0, this.metaContext);
    descriptors.forEach((d, i) => {
      dv.setUint32(4 + 8 * i, d.length);
      dv.setUint32(8 + 8 * i, d.data ? 0 : STATE_HOLE | STATE_ZERO);
    });
    this.send(concatBytes(this.chunkHeader(cookie, REPLY_FLAG_DONE, REPLY_TYPE_BLOCK_STATUS, payload.length), payload));
  }

  private chunkHeader(cookie: Uint8Array, flags: number, type: number, length: number): Uint8Array {
    const header = new Uint8Array(CHUNK_HEADER);
    this.writeChunkHeader(new DataView(header.buffer), cookie, flags, type, length);
    return header;
  }

  /** A structured reply chunk's header at the start of `dv`. */
  private writeChunkHeader(dv: DataView, cookie: Uint8Array, flags: number, type: number, length: number): void {
    dv.setUint32(0, STRUCTURED_REPLY_MAGIC);
    dv.setUint16(4, flags);
    dv.setUint16(6, type);
    for (let i = 0; i < 8; i++) dv.setUint8(8 + i, cookie[i]!);
    dv.setUint32(16, length);
  }

  private simpleHeader(cookie: Uint8Array, error: number): Uint8Array {
    const header = new Uint8Array(SIMPLE_HEADER);
    const dv = new DataView(header.buffer);
    dv.setUint32(0, SIMPLE_REPLY_MAGIC);
    dv.setUint32(4, error);
    header.set(cookie, 8);
    return header;
  }

  private simpleReply(cookie: Uint8Array, error: number): void {
    this.send(this.simpleHeader(cookie, error));
  }

  /** An error for a read or block status: a simple reply, or an error chunk when structured. */
  private simpleOrError(cookie: Uint8Array, error: number, message: string): void {
    if (!this.structured) return this.simpleReply(cookie, error);
    const text = utf8(message);
    const payload = new Uint8Array(6 + text.length);
    const dv = new DataView(payload.buffer);
    dv.setUint32(0, error);
    dv.setUint16(4, text.length);
    payload.set(text, 6);
    this.send(concatBytes(this.chunkHeader(cookie, REPLY_FLAG_DONE, REPLY_TYPE_ERROR, payload.length), payload));
  }

  private send(bytes: Uint8Array): void {
    if (this.phase === "closed") return;
    if (this.unsent.length > 0) {
      this.unsent.push(bytes);
      return;
    }
    const n = this.socket.write(bytes);
    if (n < 0) return this.closeHard();
    if (n < bytes.length) this.unsent.push(bytes.subarray(n));
  }

  closeHard(reason?: string): void {
    if (this.phase === "closed") return;
    if (reason) this.onError?.(`${this.socket.remoteAddress || "client"}: ${reason}`);
    this.phase = "closed";
    this.socket.end();
    this.release();
  }

  /** Drop every buffer this client held, so that its memory goes back when it goes. */
  release(): void {
    this.phase = "closed";
    this.unsent = [];
    this.stashed = [];
    this.stashedBytes = 0;
    this.current = undefined;
    this.out = undefined;
    this.staging = undefined;
    this.dropPieceData();
    this.sink = undefined;
  }
}

const REPLY_TYPE_ERROR = (1 << 15) + 1;
const PER_CONNECTION_BUFFERS = CHUNK_HEADER + 8 + SMALL_REPLY + WRITE_PIECE + RECEIVE_BUFFER + MAX_STASHED;

/** Drop a payload as it arrives, then answer. */
function discardThen(answer: () => void): PayloadSink {
  return { take: () => {}, done: answer };
}

function utf8(text: string): Uint8Array {
  return new TextEncoder().encode(text);
}

/** An option reply: magic, option, reply type, length, data (proto.md "Fixed newstyle negotiation"). */
function optionReply(option: number, type: number, data: Uint8Array | string = new Uint8Array(0)): Uint8Array {
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
function infoReply(option: number, type: number, exported: NbdExport, flags: number): Uint8Array {
  let payload: Uint8Array;
  if (type === INFO_EXPORT) {
    payload = new Uint8Array(12);
    const dv = new DataView(payload.buffer);
    dv.setBigUint64(2, BigInt(exported.volume.size));
    dv.setUint16(10, flags);
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

/** Listen on TCP and/or a Unix socket and serve `exported` to up to `maxConnections` clients at once. */
export function serveNbd(exported: NbdExport, opts: NbdListenOptions): NbdServer {
  if (!opts.tcp && !opts.unix) throw new Error("serveNbd needs a TCP address or a Unix socket path");
  const maxConnections = opts.maxConnections ?? DEFAULT_MAX_CONNECTIONS;
  const open = new Set<NbdConnection>();
  const kept = { bytes: 0 };
  const pieceSize = () => Math.max(MIN_PIECE, Math.min(MAX_PIECE, Math.floor(REPLY_BUDGET / Math.max(1, open.size) / MIN_PIECE) * MIN_PIECE));
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
      const c = new NbdConnection(socket, exported, opts.onError, refusal, pieceSize, kept);
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
    // a piece of a reply, the buffers for small replies and writes, what arrived while replies waited
    limits: {
      perConnection: MAX_PIECE + PER_CONNECTION_BUFFERS,
      // the kept piece buffers, and a piece each in flight
      total: REPLY_BUDGET + Math.max(REPLY_BUDGET, maxConnections * MIN_PIECE) + maxConnections * PER_CONNECTION_BUFFERS,
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
