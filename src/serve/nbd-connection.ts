// One NBD client's state machine: its bytes in (client flags, options, requests and write payloads),
// its replies out at the pace the socket takes them, over any transport (the event loop's or a
// blocking socket on a thread). The wire layouts are in nbd-protocol.ts.
import type { Extent, Volume, WritableVolume } from "../volume/volume.ts";
import { concatBytes } from "../bytes.ts";
import {
  BASE_ALLOCATION,
  blockStatusChunk,
  chunkHeader,
  CLIENT_FLAGS_KNOWN,
  CLIENT_FLAGS_SIZE,
  CMD_BLOCK_STATUS,
  CMD_DISC,
  CMD_FLAG_FUA,
  CMD_FLAG_NO_HOLE,
  CMD_FLAG_REQ_ONE,
  CMD_FLUSH,
  CMD_READ,
  CMD_TRIM,
  CMD_WRITE,
  CMD_WRITE_ZEROES,
  EINVAL,
  EIO,
  ENOSPC,
  EOVERFLOW,
  EPERM,
  errorChunk,
  type ExportFacts,
  exportNameReply,
  FLAG_CAN_MULTI_CONN,
  FLAG_FIXED_NEWSTYLE,
  FLAG_HAS_FLAGS,
  FLAG_NO_ZEROES,
  FLAG_READ_ONLY,
  FLAG_SEND_FLUSH,
  FLAG_SEND_FUA,
  FLAG_SEND_TRIM,
  FLAG_SEND_WRITE_ZEROES,
  greeting,
  INFO_BLOCK_SIZE,
  INFO_DESCRIPTION,
  INFO_EXPORT,
  INFO_NAME,
  infoReply,
  MAX_DESCRIPTOR_LENGTH,
  MAX_PAYLOAD,
  metaContextReply,
  OFFSET_DATA_HEADER,
  OPT_ABORT,
  OPT_EXPORT_NAME,
  OPT_GO,
  OPT_INFO,
  OPT_LIST,
  OPT_LIST_META_CONTEXT,
  OPT_SET_META_CONTEXT,
  OPT_STRUCTURED_REPLY,
  OPTION_HEADER,
  optionReply,
  parseInfoRequest,
  parseMetaContextRequest,
  parseOptionHeader,
  parseRequest,
  REP_ACK,
  REP_ERR_INVALID,
  REP_ERR_POLICY,
  REP_ERR_TOO_BIG,
  REP_ERR_UNKNOWN,
  REP_ERR_UNSUP,
  REPLY_FLAG_DONE,
  REPLY_TYPE_NONE,
  REQUEST_SIZE,
  serverReply,
  SIMPLE_HEADER,
  simpleReply,
  writeOffsetDataHeader,
  writeOffsetHole,
  writeSimpleHeader,
} from "./nbd-protocol.ts";

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

/** What a connection needs of its socket: Bun's on the event loop, or a blocking one on a thread of its own. */
export interface NbdTransport {
  /** bytes taken now (the rest waits for onDrain); negative when the socket is gone */
  write(bytes: Uint8Array): number;
  pause(): void;
  resume(): void;
  end(): void;
  readonly remoteAddress: string;
}

/**
 * Every connection reads and writes the one volume object of this process, with no cache of its
 * own, and a flush on any connection flushes it all: what the spec asks of multi-conn.
 */
const READ_ONLY_FLAGS = FLAG_HAS_FLAGS | FLAG_READ_ONLY | FLAG_SEND_FLUSH | FLAG_CAN_MULTI_CONN;
const WRITABLE_FLAGS = FLAG_HAS_FLAGS | FLAG_SEND_FLUSH | FLAG_SEND_FUA | FLAG_SEND_TRIM | FLAG_SEND_WRITE_ZEROES | FLAG_CAN_MULTI_CONN;

/** the one meta context there is; 0 means none was chosen */
const BASE_ALLOCATION_ID = 1;

/**
 * Replies are read from the volume and sent in chunks: a client holds at most one chunk the socket
 * has not taken. Few clients get large chunks (fewer turns of the event loop); many share
 * REPLY_BUDGET, down to the smallest chunk. Chunk buffers kept for reuse stay within it too.
 */
export const MAX_CHUNK = 1 << 20;
export const MIN_CHUNK = 128 << 10;
export const REPLY_BUDGET = 32 << 20;
/** writes are passed to the volume in batches of this size as their payload arrives */
const WRITE_BATCH = 256 << 10;
/** data up to this size is copied behind its header and sent in one write; larger goes as it is */
const SMALL_REPLY = 64 << 10;
/** the descriptors of one block status reply (the spec lets a server answer fewer) */
const MAX_DESCRIPTORS = 8192;
/** option data beyond this (names are at most 4096 bytes) is skipped and refused */
const MAX_OPTION_DATA = 16 << 10;
/** room for one option or a few pipelined requests */
const RECEIVE_BUFFER = OPTION_HEADER + MAX_OPTION_DATA + 64 * REQUEST_SIZE;
/**
 * Bytes that arrived after the socket was paused (what one read of the kernel's buffer brought);
 * a client that sends more while its replies go unread is cut off.
 */
const MAX_STASHED = 1 << 20;
/** what a connection may hold besides its reply chunk */
export const PER_CONNECTION_BUFFERS = OFFSET_DATA_HEADER + SMALL_REPLY + WRITE_BATCH + RECEIVE_BUFFER + MAX_STASHED;

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
  /** reply bytes the socket did not take yet: at most the rest of one chunk */
  private unsent: Uint8Array[] = [];
  /** the reply being sent, one chunk at a time as the socket takes them */
  private current: Iterator<Uint8Array> | undefined;
  private out: Uint8Array | undefined;
  private staging: Uint8Array | undefined;
  /** where the data of reply chunks is read to, reused from one to the next */
  private chunkData: Uint8Array | undefined;
  private paused = false;

  constructor(
    readonly socket: NbdTransport,
    private readonly exported: NbdExport,
    private readonly onError: ((message: string) => void) | undefined,
    /** set when the server has no room: every option is refused with this text */
    private readonly refusal: string | undefined,
    /** how large a chunk of a reply may be now, from the number of clients */
    private readonly chunkSize: () => number,
    /** the bytes of chunk buffers all clients keep, within REPLY_BUDGET */
    private readonly kept: { bytes: number },
  ) {}

  private dropChunkData(): void {
    if (!this.chunkData) return;
    this.kept.bytes -= this.chunkData.length;
    this.chunkData = undefined;
  }

  private get flags(): number {
    return this.exported.writable ? WRITABLE_FLAGS : READ_ONLY_FLAGS;
  }

  private get facts(): ExportFacts {
    const { name, description, volume, preferredBlockSize } = this.exported;
    return { name, description, size: volume.size, flags: this.flags, preferredBlockSize };
  }

  greet(): void {
    this.send(greeting());
  }

  private blocked(): boolean {
    return this.phase === "closed" || this.current !== undefined || this.unsent.length > 0;
  }

  onData(bytes: Uint8Array): void {
    if (this.blocked() || this.stashed.length > 0) return this.stash(bytes);
    this.consume(bytes);
    this.pauseIfBlocked();
  }

  private stash(bytes: Uint8Array): void {
    if (this.phase === "closed") return;
    this.stashedBytes += bytes.length;
    if (this.stashedBytes > MAX_STASHED) return this.closeHard("too many requests while the replies go unread");
    this.stashed.push(bytes.slice());
  }

  private consume(bytes: Uint8Array): void {
    let at = 0;
    while (at < bytes.length) {
      if (this.phase === "closed") return;
      if (this.blocked()) return this.stash(bytes.subarray(at));
      if (this.payloadLeft > 0 && this.receivedLength === 0) {
        // a write's payload goes straight from what arrived to where it belongs, never buffered whole
        const n = Math.min(this.payloadLeft, bytes.length - at);
        this.feedPayload(bytes.subarray(at, at + n));
        at += n;
        continue;
      }
      const n = Math.min(RECEIVE_BUFFER - this.receivedLength, bytes.length - at);
      if (n === 0) return this.closeHard("a message longer than the receive buffer");
      this.received.set(bytes.subarray(at, at + n), this.receivedLength);
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
    // requests that came in one read with the one just answered
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

  /** Build and send chunks of the current reply while the socket takes them. */
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
      if (have < CLIENT_FLAGS_SIZE) return 0;
      const flags = dv.getUint32(at);
      if ((flags & ~CLIENT_FLAGS_KNOWN) !== 0 || (flags & FLAG_FIXED_NEWSTYLE) === 0) {
        this.closeHard();
        return 0;
      }
      this.noZeroes = (flags & FLAG_NO_ZEROES) !== 0;
      this.phase = "options";
      return CLIENT_FLAGS_SIZE;
    }
    if (this.phase === "options") {
      if (have < OPTION_HEADER) return 0;
      const header = parseOptionHeader(dv, at);
      if (!header) {
        this.closeHard();
        return 0;
      }
      const { option, length } = header;
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
    const request = parseRequest(this.received, dv, at);
    if (!request) {
      this.closeHard();
      return 0;
    }
    this.request(request.flags, request.type, request.cookie, request.offset, request.length);
    return REQUEST_SIZE;
  }

  private expectPayload(bytes: number, sink: PayloadSink): void {
    if (bytes === 0) return sink.done();
    this.payloadLeft = bytes;
    this.sink = sink;
  }

  // ---- handshake: option haggling (proto.md "Option types")

  private option(option: number, data: Uint8Array): void {
    if (this.refusal !== undefined) {
      if (option === OPT_EXPORT_NAME) return this.closeHard();
      if (option === OPT_ABORT) return this.abort(option);
      return this.send(optionReply(option, REP_ERR_POLICY, this.refusal));
    }
    switch (option) {
      case OPT_EXPORT_NAME: {
        if (!this.isOurs(data)) return this.closeHard();
        this.phase = "transmission";
        return this.send(exportNameReply(this.exported.volume.size, this.flags, this.noZeroes));
      }
      case OPT_ABORT:
        return this.abort(option);
      case OPT_LIST: {
        if (data.length !== 0) return this.send(optionReply(option, REP_ERR_INVALID, "NBD_OPT_LIST takes no data"));
        return this.send(concatBytes(serverReply(option, this.exported.name), optionReply(option, REP_ACK)));
      }
      case OPT_INFO:
      case OPT_GO: {
        const asked = parseInfoRequest(data);
        if ("invalid" in asked) return this.send(optionReply(option, REP_ERR_INVALID, asked.invalid));
        if (!this.isOurs(asked.name)) return this.send(optionReply(option, REP_ERR_UNKNOWN, "no such export; NBD_OPT_LIST names it"));
        const facts = this.facts;
        const replies = [infoReply(option, INFO_EXPORT, facts), infoReply(option, INFO_BLOCK_SIZE, facts)];
        if (asked.requests.includes(INFO_NAME)) replies.push(infoReply(option, INFO_NAME, facts));
        if (asked.requests.includes(INFO_DESCRIPTION)) replies.push(infoReply(option, INFO_DESCRIPTION, facts));
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

  /** NBD_OPT_LIST_META_CONTEXT / SET_META_CONTEXT: base:allocation is the one context there is. */
  private metaContextOption(option: number, data: Uint8Array): void {
    if (option === OPT_SET_META_CONTEXT && !this.structured) return this.send(optionReply(option, REP_ERR_INVALID, "negotiate NBD_OPT_STRUCTURED_REPLY first"));
    const asked = parseMetaContextRequest(data);
    if ("invalid" in asked) return this.send(optionReply(option, REP_ERR_INVALID, asked.invalid));
    if (!this.isOurs(asked.name)) return this.send(optionReply(option, REP_ERR_UNKNOWN, "no such export; NBD_OPT_LIST names it"));
    const { queries } = asked;
    const matches =
      option === OPT_LIST_META_CONTEXT
        ? queries.length === 0 || queries.some((q) => q === "base:" || q === BASE_ALLOCATION)
        : queries.includes(BASE_ALLOCATION);
    if (option === OPT_SET_META_CONTEXT) this.metaContext = matches ? BASE_ALLOCATION_ID : 0;
    const replies: Uint8Array[] = [];
    if (matches) replies.push(metaContextReply(option, BASE_ALLOCATION_ID, BASE_ALLOCATION));
    replies.push(optionReply(option, REP_ACK));
    this.send(concatBytes(...replies));
  }

  /** The empty name is the default export; any other must be its name. */
  private isOurs(name: Uint8Array): boolean {
    return name.length === 0 || Buffer.from(name.buffer, name.byteOffset, name.length).toString("utf8") === this.exported.name;
  }

  // ---- transmission (proto.md "Request message", "Simple reply message", "Structured reply message")

  private request(flags: number, type: number, cookie: Uint8Array, offset: number, length: number): void {
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
        if (!writable) return this.send(simpleReply(cookie, EPERM));
        if (!inRange) return this.send(simpleReply(cookie, ENOSPC));
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
        return this.send(simpleReply(cookie, EINVAL));
    }
  }

  /** Run a change to the volume; EIO (and the reason on the server's side) if it throws. */
  private changing(cookie: Uint8Array, change: () => void): void {
    try {
      change();
    } catch (e) {
      this.onError?.(`write to the overlay failed: ${(e as Error).message}`);
      return this.send(simpleReply(cookie, EIO));
    }
    this.send(simpleReply(cookie, 0));
  }

  private write(cookie: Uint8Array, flags: number, offset: number, length: number, inRange: boolean): void {
    const writable = this.exported.writable;
    const refuse = !writable ? EPERM : length > MAX_PAYLOAD ? EOVERFLOW : !inRange ? ENOSPC : 0;
    if (refuse !== 0 || !writable) {
      // the payload follows whatever the answer: dropped as it arrives, never buffered
      return this.expectPayload(length, discardThen(() => this.send(simpleReply(cookie, refuse))));
    }
    // written through in batches as the payload arrives: a client never has more than a batch here
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
          const n = Math.min(WRITE_BATCH - staged, bytes.length - at);
          staging.set(bytes.subarray(at, at + n), staged);
          staged += n;
          at += n;
          if (staged === WRITE_BATCH) flushStaged();
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
        this.send(simpleReply(cookie, failure ? EIO : 0));
      },
    });
  }

  /** headers and small replies are built here; free again once the socket took them */
  private headerBuffer(): Uint8Array {
    this.out ??= new Uint8Array(OFFSET_DATA_HEADER + SMALL_REPLY);
    return this.out;
  }

  /** a write's payload is gathered here (never while a reply is built: requests are taken one at a time) */
  private stagingBuffer(): Uint8Array {
    this.staging ??= new Uint8Array(WRITE_BATCH);
    return this.staging;
  }

  /** Header, then the data in chunks; a chunk that fails after the header went ends the connection. */
  private *simpleRead(cookie: Uint8Array, offset: number, length: number): Generator<Uint8Array> {
    const out = this.headerBuffer();
    const dv = new DataView(out.buffer);
    const first = Math.min(length, this.chunkSize());
    let data: Uint8Array;
    try {
      data = this.readVolume(offset, first);
    } catch (e) {
      this.onError?.(`read of ${length} bytes at offset ${offset} failed: ${(e as Error).message}`);
      return yield simpleReply(cookie, EIO);
    }
    writeSimpleHeader(dv, out, cookie, 0);
    if (first <= SMALL_REPLY) {
      out.set(data, SIMPLE_HEADER);
      yield out.subarray(0, SIMPLE_HEADER + first);
    } else {
      yield out.subarray(0, SIMPLE_HEADER);
      yield data;
    }
    for (let pos = offset + first; pos < offset + length; ) {
      const n = Math.min(this.chunkSize(), offset + length - pos);
      yield this.readVolume(pos, n);
      pos += n;
    }
  }

  /** OFFSET_DATA chunks of at most chunkSize() and OFFSET_HOLE chunks for holes; the last one says DONE. */
  private *structuredRead(cookie: Uint8Array, offset: number, length: number): Generator<Uint8Array> {
    const out = this.headerBuffer();
    const dv = new DataView(out.buffer);
    const end = offset + length;
    let pos = offset;
    try {
      if (length === 0) return yield chunkHeader(cookie, REPLY_FLAG_DONE, REPLY_TYPE_NONE, 0);
      for (const extent of this.exported.volume.extents(offset, length)) {
        const extentEnd = extent.offset + extent.length;
        if (!extent.data) {
          yield out.subarray(0, writeOffsetHole(dv, cookie, extentEnd === end ? REPLY_FLAG_DONE : 0, extent.offset, extent.length));
          pos = extentEnd;
          continue;
        }
        while (pos < extentEnd) {
          const n = Math.min(this.chunkSize(), extentEnd - pos);
          const flags = pos + n === end ? REPLY_FLAG_DONE : 0;
          if (n <= SMALL_REPLY) {
            // one write for a small reply, its data read in place
            this.readVolumeInto(pos, out.subarray(OFFSET_DATA_HEADER, OFFSET_DATA_HEADER + n));
            writeOffsetDataHeader(dv, cookie, flags, pos, n);
            yield out.subarray(0, OFFSET_DATA_HEADER + n);
          } else {
            const data = this.readVolume(pos, n);
            writeOffsetDataHeader(dv, cookie, flags, pos, n);
            yield out.subarray(0, OFFSET_DATA_HEADER);
            yield data;
          }
          pos += n;
        }
      }
    } catch (e) {
      const message = (e as Error).message;
      this.onError?.(`read of ${length} bytes at offset ${offset} failed: ${message}`);
      return yield errorChunk(cookie, EIO, message.slice(0, 1024), pos);
    }
  }

  /** Bytes of the volume into `into` (a small chunk of a reply, read where it is sent from). */
  private readVolumeInto(offset: number, into: Uint8Array): void {
    const volume = this.exported.volume;
    if (volume.readInto) return volume.readInto(offset, into);
    const data = volume.read(offset, into.length);
    if (data.length !== into.length) throw new Error(`read ${data.length} bytes of ${into.length}`);
    into.set(data);
  }

  /**
   * Bytes of the volume for one chunk: into this client's own chunk buffer where the volume can
   * (kept while the server's budget allows: no allocation per chunk), else freshly read.
   */
  private readVolume(offset: number, length: number): Uint8Array {
    const volume = this.exported.volume;
    if (volume.readInto && length > SMALL_REPLY) {
      let buffer = this.chunkData;
      if (!buffer || buffer.length < length) {
        this.dropChunkData();
        const size = Math.max(length, this.chunkSize());
        if (this.kept.bytes + size <= REPLY_BUDGET) {
          buffer = this.chunkData = new Uint8Array(size);
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
          const n = Math.min(end - at, MAX_DESCRIPTOR_LENGTH);
          descriptors.push({ offset: at, length: n, data: extent.data });
          at += n;
        }
        if (descriptors.length >= most) break;
      }
    } catch (e) {
      this.onError?.(`block status of ${length} bytes at offset ${offset} failed: ${(e as Error).message}`);
      return this.send(simpleReply(cookie, EIO));
    }
    this.send(blockStatusChunk(cookie, this.metaContext, descriptors));
  }

  /** An error for a read or block status: a simple reply, or an error chunk when structured. */
  private simpleOrError(cookie: Uint8Array, error: number, message: string): void {
    this.send(this.structured ? errorChunk(cookie, error, message) : simpleReply(cookie, error));
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
    this.dropChunkData();
    this.sink = undefined;
  }
}

/** Drop a payload as it arrives, then answer. */
function discardThen(answer: () => void): PayloadSink {
  return { take: () => {}, done: answer };
}
