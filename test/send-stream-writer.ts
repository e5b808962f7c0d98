import { crc32c } from "../native/crc32c.ts";
import { Attr, COMMAND_HEADER_BYTES, STREAM_MAGIC } from "../src/btrfs/protocol.ts";

/** One attribute: its number and its value bytes. */
export type Attribute = readonly [attr: number, value: Uint8Array];

/**
 * Builds send streams byte by byte (btrfs-progs kernel-shared/send.h layout): for tests of the
 * parser on what the kernel cannot be made to send (protocol 3, odd values, damage).
 */
export class SendStreamWriter {
  private readonly parts: Uint8Array[] = [];

  constructor(readonly version: number) {
    const head = new Uint8Array(17);
    head.set(new TextEncoder().encode(STREAM_MAGIC));
    new DataView(head.buffer).setUint32(13, version, true);
    this.parts.push(head);
  }

  /** Append a command; `crc` overrides the computed crc32c. From v2 on DATA goes last, unprefixed. */
  command(cmd: number, attributes: readonly Attribute[], crc?: number): this {
    let length = 0;
    for (const [attr, value] of attributes) length += (this.version >= 2 && attr === Attr.DATA ? 2 : 4) + value.length;
    const bytes = new Uint8Array(COMMAND_HEADER_BYTES + length);
    const view = new DataView(bytes.buffer);
    view.setUint32(0, length, true);
    view.setUint16(4, cmd, true);
    let at = COMMAND_HEADER_BYTES;
    for (const [attr, value] of attributes) {
      view.setUint16(at, attr, true);
      at += 2;
      if (!(this.version >= 2 && attr === Attr.DATA)) {
        view.setUint16(at, value.length, true);
        at += 2;
      }
      bytes.set(value, at);
      at += value.length;
    }
    view.setUint32(6, crc ?? crc32c(bytes), true);
    this.parts.push(bytes);
    return this;
  }

  /** Raw bytes as they are (a broken tail, say). */
  raw(bytes: Uint8Array): this {
    this.parts.push(bytes);
    return this;
  }

  bytes(): Uint8Array {
    return Buffer.concat(this.parts);
  }
}

export function u64(v: number | bigint): Uint8Array {
  const b = new Uint8Array(8);
  new DataView(b.buffer).setBigUint64(0, BigInt.asUintN(64, BigInt(v)), true);
  return b;
}

export function u32(v: number): Uint8Array {
  const b = new Uint8Array(4);
  new DataView(b.buffer).setUint32(0, v >>> 0, true);
  return b;
}

export function timespec(sec: number | bigint, nsec = 0): Uint8Array {
  const b = new Uint8Array(12);
  const view = new DataView(b.buffer);
  view.setBigInt64(0, BigInt(sec), true);
  view.setUint32(8, nsec, true);
  return b;
}

/** Bytes of a string (paths given as text in tests), or the bytes themselves. */
export function bytesOf(v: string | Uint8Array): Uint8Array {
  return typeof v === "string" ? new TextEncoder().encode(v) : v;
}
