import { PARTCLONE_CRC_SEED, partcloneCrc32, partcloneCrc32Repeated } from "../checksum/crc32.ts";

/** Checksum modes as stored in the image (partclone src/checksum.h checksum_mode_enum). */
export const CHECKSUM_MODES: Record<number, { name: string; size: number }> = {
  0x00: { name: "NONE", size: 0 },
  0x20: { name: "CRC32", size: 4 },
  0x30: { name: "XXH64", size: 8 },
  0x31: { name: "XXH128", size: 16 },
};

/** The checksum of one strip of blocks, fed its bytes in chunks of any size. */
export interface StripChecksum {
  /** start a new strip (or, without reseed, keep going: the caller decides) */
  reset(): void;
  update(chunk: Uint8Array): void;
  /** the value as partclone stores it, compared with the stored bytes */
  matches(stored: Uint8Array): boolean;
  /** the computed value in hex, for messages */
  hex(): string;
}

function hexOf(bytes: Uint8Array): string {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

function le32(v: number): Uint8Array {
  const b = new Uint8Array(4);
  new DataView(b.buffer).setUint32(0, v, true);
  return b;
}

class Crc32Strip implements StripChecksum {
  protected register = PARTCLONE_CRC_SEED;
  reset(): void {
    this.register = PARTCLONE_CRC_SEED;
  }
  update(chunk: Uint8Array): void {
    this.register = partcloneCrc32(this.register, chunk);
  }
  matches(stored: Uint8Array): boolean {
    return (stored[0]! | (stored[1]! << 8) | (stored[2]! << 16) | (stored[3]! << 24)) >>> 0 === this.register;
  }
  hex(): string {
    return hexOf(le32(this.register));
  }
}

/** Format 0001: every block's CRC is over its first byte repeated (see partcloneCrc32Repeated). */
class Crc32RepeatedFirstByte extends Crc32Strip {
  private posInBlock = 0;
  private first = 0;
  constructor(private readonly blockSize: number) {
    super();
  }
  override update(chunk: Uint8Array): void {
    let i = 0;
    while (i < chunk.length) {
      if (this.posInBlock === 0) this.first = chunk[i]!;
      const n = Math.min(this.blockSize - this.posInBlock, chunk.length - i);
      this.register = partcloneCrc32Repeated(this.register, this.first, n);
      this.posInBlock = (this.posInBlock + n) % this.blockSize;
      i += n;
    }
  }
}

interface XxhState {
  reset(): void;
  update(data: Uint8Array): void;
  digestInto(out: Uint8Array): void;
}

class XxhStrip implements StripChecksum {
  private readonly digest: Uint8Array;
  constructor(
    private readonly state: XxhState,
    size: number,
  ) {
    this.digest = new Uint8Array(size);
  }
  reset(): void {
    this.state.reset();
  }
  update(chunk: Uint8Array): void {
    this.state.update(chunk);
  }
  matches(stored: Uint8Array): boolean {
    this.state.digestInto(this.digest);
    for (let i = 0; i < this.digest.length; i++) if (this.digest[i] !== stored[i]) return false;
    return true;
  }
  hex(): string {
    this.state.digestInto(this.digest);
    return hexOf(this.digest);
  }
}

export type ChecksumKind = "NONE" | "CRC32" | "CRC32_0001" | "XXH64" | "XXH128";

export function createStripChecksum(kind: ChecksumKind, blockSize: number): StripChecksum | undefined {
  switch (kind) {
    case "NONE":
      return undefined;
    case "CRC32":
      return new Crc32Strip();
    case "CRC32_0001":
      return new Crc32RepeatedFirstByte(blockSize);
    case "XXH64":
    case "XXH128": {
      // loaded only for such images: libxxhash is then required, and only then
      const xxh = require("../../native/xxhash.ts") as typeof import("../../native/xxhash.ts");
      return kind === "XXH64" ? new XxhStrip(new xxh.Xxh64State(), 8) : new XxhStrip(new xxh.Xxh128State(), 16);
    }
  }
}
