// The NBD wire protocol: magics, flags, option, request and reply layouts, from the NBD project's
// doc/proto.md (github.com/NetworkBlockDevice/nbd). Every multi-byte field is big-endian.
import { concatBytes } from "../bytes.ts";

const NBDMAGIC = 0x4e42444d41474943n;
export const IHAVEOPT = 0x49484156454f5054n;
const OPTION_REPLY_MAGIC = 0x3e889045565a9n;
const REQUEST_MAGIC = 0x25609513;
const SIMPLE_REPLY_MAGIC = 0x67446698;
const STRUCTURED_REPLY_MAGIC = 0x668e33ef;

export const FLAG_FIXED_NEWSTYLE = 1 << 0;
export const FLAG_NO_ZEROES = 1 << 1;
export const CLIENT_FLAGS_KNOWN = FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES;

export const FLAG_HAS_FLAGS = 1 << 0;
export const FLAG_READ_ONLY = 1 << 1;
export const FLAG_SEND_FLUSH = 1 << 2;
export const FLAG_SEND_FUA = 1 << 3;
export const FLAG_SEND_TRIM = 1 << 5;
export const FLAG_SEND_WRITE_ZEROES = 1 << 6;
export const FLAG_CAN_MULTI_CONN = 1 << 8;

export const OPT_EXPORT_NAME = 1;
export const OPT_ABORT = 2;
export const OPT_LIST = 3;
export const OPT_INFO = 6;
export const OPT_GO = 7;
export const OPT_STRUCTURED_REPLY = 8;
export const OPT_LIST_META_CONTEXT = 9;
export const OPT_SET_META_CONTEXT = 10;

export const REP_ACK = 1;
const REP_SERVER = 2;
const REP_INFO = 3;
const REP_META_CONTEXT = 4;
export const REP_ERR_UNSUP = 0x80000001;
export const REP_ERR_POLICY = 0x80000002;
export const REP_ERR_INVALID = 0x80000003;
export const REP_ERR_UNKNOWN = 0x80000006;
export const REP_ERR_TOO_BIG = 0x80000009;

export const INFO_EXPORT = 0;
export const INFO_NAME = 1;
export const INFO_DESCRIPTION = 2;
export const INFO_BLOCK_SIZE = 3;

export const CMD_READ = 0;
export const CMD_WRITE = 1;
export const CMD_DISC = 2;
export const CMD_FLUSH = 3;
export const CMD_TRIM = 4;
export const CMD_WRITE_ZEROES = 6;
export const CMD_BLOCK_STATUS = 7;

export const CMD_FLAG_FUA = 1 << 0;
export const CMD_FLAG_NO_HOLE = 1 << 1;
export const CMD_FLAG_REQ_ONE = 1 << 3;

export const REPLY_FLAG_DONE = 1;
export const REPLY_TYPE_NONE = 0;
const REPLY_TYPE_OFFSET_DATA = 1;
const REPLY_TYPE_OFFSET_HOLE = 2;
const REPLY_TYPE_BLOCK_STATUS = 5;
const REPLY_TYPE_ERROR = (1 << 15) + 1;
const REPLY_TYPE_ERROR_OFFSET = (1 << 15) + 2;

const STATE_HOLE = 1;
const STATE_ZERO = 2;
export const BASE_ALLOCATION = "base:allocation";

export const EPERM = 1;
export const EIO = 5;
export const EINVAL = 22;
export const ENOSPC = 28;
export const EOVERFLOW = 75;

/** the largest read or write answered, the spec's interoperable maximum payload (2^25) */
export const MAX_PAYLOAD = 1 << 25;
/** the longest a block status descriptor can say (32 bits, kept to whole 4 KiB) */
export const MAX_DESCRIPTOR_LENGTH = 0xffff_f000;
const GREETING_SIZE = 18;
export const CLIENT_FLAGS_SIZE = 4;
export const OPTION_HEADER = 16;
export const REQUEST_SIZE = 28;
export const SIMPLE_HEADER = 16;
const CHUNK_HEADER = 20;
/** an OFFSET_DATA chunk's payload starts with the offset (8 bytes), then the data */
export const OFFSET_DATA_HEADER = CHUNK_HEADER + 8;

export function utf8(text: string): Uint8Array {
  return new TextEncoder().encode(text);
}

/** The server's first message: magic, IHAVEOPT, handshake flags (proto.md "Fixed newstyle negotiation"). */
export function greeting(): Uint8Array {
  const hello = new Uint8Array(GREETING_SIZE);
  const dv = new DataView(hello.buffer);
  dv.setBigUint64(0, NBDMAGIC);
  dv.setBigUint64(8, IHAVEOPT);
  dv.setUint16(16, FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES);
  return hello;
}

/** An option's header at `at`: undefined when the magic is wrong. */
export function parseOptionHeader(dv: DataView, at: number): { option: number; length: number } | undefined {
  if (dv.getBigUint64(at) !== IHAVEOPT) return undefined;
  return { option: dv.getUint32(at + 8), length: dv.getUint32(at + 12) };
}

/** The answer to NBD_OPT_EXPORT_NAME: size, transmission flags, and 124 zero bytes unless the client said NO_ZEROES. */
export function exportNameReply(size: number, flags: number, noZeroes: boolean): Uint8Array {
  const reply = new Uint8Array(noZeroes ? 10 : 134);
  const dv = new DataView(reply.buffer);
  dv.setBigUint64(0, BigInt(size));
  dv.setUint16(8, flags);
  return reply;
}

/** An option reply: magic, option, reply type, length, data (proto.md "Fixed newstyle negotiation"). */
export function optionReply(option: number, type: number, data: Uint8Array | string = new Uint8Array(0)): Uint8Array {
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

/** NBD_REP_SERVER for NBD_OPT_LIST: the export's name. */
export function serverReply(option: number, name: string): Uint8Array {
  const text = utf8(name);
  const server = new Uint8Array(4 + text.length);
  new DataView(server.buffer).setUint32(0, text.length);
  server.set(text, 4);
  return optionReply(option, REP_SERVER, server);
}

/** What NBD_REP_INFO tells of an export. */
export interface ExportFacts {
  name: string;
  description: string;
  size: number;
  flags: number;
  preferredBlockSize: number;
}

/** An NBD_REP_INFO reply of one information type (proto.md "NBD_REP_INFO"). */
export function infoReply(option: number, type: number, facts: ExportFacts): Uint8Array {
  let payload: Uint8Array;
  if (type === INFO_EXPORT) {
    payload = new Uint8Array(12);
    const dv = new DataView(payload.buffer);
    dv.setBigUint64(2, BigInt(facts.size));
    dv.setUint16(10, facts.flags);
  } else if (type === INFO_BLOCK_SIZE) {
    payload = new Uint8Array(14);
    const dv = new DataView(payload.buffer);
    dv.setUint32(2, 1);
    dv.setUint32(6, facts.preferredBlockSize);
    dv.setUint32(10, MAX_PAYLOAD);
  } else {
    const text = utf8(type === INFO_NAME ? facts.name : facts.description);
    payload = new Uint8Array(2 + text.length);
    payload.set(text, 2);
  }
  new DataView(payload.buffer).setUint16(0, type);
  return optionReply(option, REP_INFO, payload);
}

/** NBD_REP_META_CONTEXT: a context's id and name. */
export function metaContextReply(option: number, id: number, name: string): Uint8Array {
  const text = utf8(name);
  const payload = new Uint8Array(4 + text.length);
  new DataView(payload.buffer).setUint32(0, id);
  payload.set(text, 4);
  return optionReply(option, REP_META_CONTEXT, payload);
}

/** The data of NBD_OPT_INFO / NBD_OPT_GO: export name, then the information types asked for. */
export function parseInfoRequest(data: Uint8Array): { name: Uint8Array; requests: number[] } | { invalid: string } {
  const dv = new DataView(data.buffer, data.byteOffset, data.byteLength);
  const nameLength = data.length >= 4 ? dv.getUint32(0) : Infinity;
  if (nameLength > data.length - 6) return { invalid: "name longer than the option" };
  const count = dv.getUint16(4 + nameLength);
  if (6 + nameLength + 2 * count !== data.length) return { invalid: "information requests do not fill the option" };
  const requests = Array.from({ length: count }, (_, i) => dv.getUint16(6 + nameLength + 2 * i));
  return { name: data.subarray(4, 4 + nameLength), requests };
}

/** The data of NBD_OPT_LIST_META_CONTEXT / SET_META_CONTEXT: export name, then queries (proto.md "Metadata querying"). */
export function parseMetaContextRequest(data: Uint8Array): { name: Uint8Array; queries: string[] } | { invalid: string } {
  const dv = new DataView(data.buffer, data.byteOffset, data.byteLength);
  if (data.length < 8) return { invalid: "shorter than a name length and a query count" };
  const nameLength = dv.getUint32(0);
  if (nameLength > data.length - 8) return { invalid: "name longer than the option" };
  const count = dv.getUint32(4 + nameLength);
  const queries: string[] = [];
  let at = 8 + nameLength;
  for (let i = 0; i < count; i++) {
    if (at + 4 > data.length) return { invalid: "queries do not fit the option" };
    const length = dv.getUint32(at);
    if (length > data.length - at - 4) return { invalid: "a query longer than the option" };
    queries.push(Buffer.from(data.buffer, data.byteOffset + at + 4, length).toString("utf8"));
    at += 4 + length;
  }
  if (at !== data.length) return { invalid: "bytes after the last query" };
  return { name: data.subarray(4, 4 + nameLength), queries };
}

export interface NbdRequest {
  flags: number;
  type: number;
  cookie: Uint8Array;
  offset: number;
  length: number;
}

/** A request at `at` (REQUEST_SIZE bytes): undefined when the magic is wrong. */
export function parseRequest(bytes: Uint8Array, dv: DataView, at: number): NbdRequest | undefined {
  if (dv.getUint32(at) !== REQUEST_MAGIC) return undefined;
  const high = dv.getUint32(at + 16);
  return {
    flags: dv.getUint16(at + 4),
    type: dv.getUint16(at + 6),
    cookie: bytes.slice(at + 8, at + 16),
    // 2^21 × 2^32 is past any safe integer: such an offset is out of range whatever the export
    offset: high >= 1 << 21 ? Number.MAX_SAFE_INTEGER : high * 0x1_0000_0000 + dv.getUint32(at + 20),
    length: dv.getUint32(at + 24),
  };
}

/** A simple reply (proto.md "Simple reply message"): the data, if any, follows it. */
export function simpleReply(cookie: Uint8Array, error: number): Uint8Array {
  const header = new Uint8Array(SIMPLE_HEADER);
  writeSimpleHeader(new DataView(header.buffer), header, cookie, error);
  return header;
}

/** A simple reply's header at the start of `into`. */
export function writeSimpleHeader(dv: DataView, into: Uint8Array, cookie: Uint8Array, error: number): void {
  dv.setUint32(0, SIMPLE_REPLY_MAGIC);
  dv.setUint32(4, error);
  into.set(cookie, 8);
}

/** A structured reply chunk's header (proto.md "Structured reply message"): `length` payload bytes follow. */
export function chunkHeader(cookie: Uint8Array, flags: number, type: number, length: number): Uint8Array {
  const header = new Uint8Array(CHUNK_HEADER);
  writeChunkHeader(new DataView(header.buffer), cookie, flags, type, length);
  return header;
}

/** A structured reply chunk's header at the start of `dv`. */
function writeChunkHeader(dv: DataView, cookie: Uint8Array, flags: number, type: number, length: number): void {
  dv.setUint32(0, STRUCTURED_REPLY_MAGIC);
  dv.setUint16(4, flags);
  dv.setUint16(6, type);
  for (let i = 0; i < 8; i++) dv.setUint8(8 + i, cookie[i]!);
  dv.setUint32(16, length);
}

/** An OFFSET_DATA chunk's header and offset at the start of `dv`, for `dataLength` bytes of data. */
export function writeOffsetDataHeader(dv: DataView, cookie: Uint8Array, flags: number, offset: number, dataLength: number): void {
  writeChunkHeader(dv, cookie, flags, REPLY_TYPE_OFFSET_DATA, 8 + dataLength);
  dv.setBigUint64(CHUNK_HEADER, BigInt(offset));
}

/** An OFFSET_HOLE chunk, at the start of `dv`: its size. */
export function writeOffsetHole(dv: DataView, cookie: Uint8Array, flags: number, offset: number, length: number): number {
  writeChunkHeader(dv, cookie, flags, REPLY_TYPE_OFFSET_HOLE, 12);
  dv.setBigUint64(CHUNK_HEADER, BigInt(offset));
  dv.setUint32(CHUNK_HEADER + 8, length);
  return CHUNK_HEADER + 12;
}

/** The last chunk of a structured reply: an error, with the offset it happened at when known. */
export function errorChunk(cookie: Uint8Array, error: number, message: string, offset?: number): Uint8Array {
  const text = utf8(message);
  const payload = new Uint8Array(6 + text.length + (offset === undefined ? 0 : 8));
  const dv = new DataView(payload.buffer);
  dv.setUint32(0, error);
  dv.setUint16(4, text.length);
  payload.set(text, 6);
  if (offset !== undefined) dv.setBigUint64(6 + text.length, BigInt(offset));
  const type = offset === undefined ? REPLY_TYPE_ERROR : REPLY_TYPE_ERROR_OFFSET;
  return concatBytes(chunkHeader(cookie, REPLY_FLAG_DONE, type, payload.length), payload);
}

/** A BLOCK_STATUS chunk (the last): the context, then each descriptor's length and hole/zero state. */
export function blockStatusChunk(cookie: Uint8Array, contextId: number, descriptors: { length: number; data: boolean }[]): Uint8Array {
  const payload = new Uint8Array(4 + 8 * descriptors.length);
  const dv = new DataView(payload.buffer);
  dv.setUint32(0, contextId);
  descriptors.forEach((d, i) => {
    dv.setUint32(4 + 8 * i, d.length);
    dv.setUint32(8 + 8 * i, d.data ? 0 : STATE_HOLE | STATE_ZERO);
  });
  return concatBytes(chunkHeader(cookie, REPLY_FLAG_DONE, REPLY_TYPE_BLOCK_STATUS, payload.length), payload);
}
