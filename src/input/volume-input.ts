import fs from "node:fs";
import { ImageError } from "../errors.ts";
import type { DataRun } from "../formats/image.ts";
import { type ProgressFactory, silentProgress } from "../progress.ts";
import { openStream, type OpenedStream } from "../source/open.ts";
import type { RandomAccessSource } from "../source/chunk-source.ts";
import type { SeekIndexOptions } from "../source/seek-index/open-index.ts";
import { checkRange, type Volume } from "../volume/volume.ts";
import type { Input, InputFacts, VerifyReport } from "./input.ts";

const CHUNK = 4 << 20;

/**
 * A file whose bytes are a volume itself: a partition copied with dd, what `imgtool restore` wrote,
 * a Clonezilla dd-img outside its folder; plain, compressed or split. `content` names what its first
 * bytes hold ("ext2/3/4", "xfs"); read at random through the seek index when compressed.
 */
export class VolumeInput implements Input {
  readonly kind = "volume";
  readonly files: readonly string[];
  readonly warnings: readonly string[] = [];
  private readonly stream: OpenedStream;
  private randomAccess: { stream: OpenedStream; source: RandomAccessSource } | undefined;

  constructor(
    readonly name: string,
    readonly content: string,
    private readonly seekIndex: SeekIndexOptions | undefined,
  ) {
    this.stream = openStream(name);
    this.files = [...this.stream.pieces, name];
  }

  /** known without reading for a plain file, split set or block device */
  get size(): number | undefined {
    return this.stream.randomAccess?.size ?? this.randomAccess?.source.size;
  }

  dataBytes(): number | undefined {
    return this.size;
  }

  compression() {
    return this.stream.compression;
  }

  /**
   * Its bytes in order, in chunks; chunks of zeros are left out (they read as zeros or holes in
   * the output), except the last, whose end is the volume's.
   */
  *dataBatches(): Generator<DataRun[], void, undefined> {
    const buf = new Uint8Array(CHUNK);
    const source = this.stream.reader.source;
    let offset = 0;
    let endsInZeros = false;
    for (;;) {
      let n = 0;
      while (n < buf.length) {
        const got = source.read(buf.subarray(n));
        if (got === 0) break;
        n += got;
      }
      if (n === 0) break;
      const data = buf.subarray(0, n);
      endsInZeros = isZero(data);
      if (!endsInZeros) yield [{ offset, data }];
      offset += n;
      if (n < buf.length) break;
    }
    if (endsInZeros) yield [{ offset: offset - 1, data: new Uint8Array(1) }];
    const known = this.stream.randomAccess?.size;
    if (known !== undefined && offset !== known) throw new ImageError({ file: this.name, offset }, "the file changed size while it was read", `${known} bytes when opened`);
  }

  openVolume(): Volume {
    if (!this.randomAccess) {
      const stream = this.stream.randomAccess ? this.stream : openStream(this.name, { seekIndex: this.seekIndex ?? { mode: "build" } });
      if (!stream.randomAccess) {
        if (stream !== this.stream) stream.reader.close();
        throw new ImageError({ file: this.name }, `this ${this.stream.compression.join(" inside ")} data cannot be read at any offset; decompress it first or use imgtool restore`);
      }
      this.randomAccess = { stream, source: stream.randomAccess };
    }
    const source = this.randomAccess.source;
    const name = this.name;
    const volume: Volume = {
      name,
      size: source.size,
      blockSize: 512,
      identity: identityOf(this.stream.pieces, source.size),
      read(offset, length) {
        checkRange(this, offset, length);
        const out = new Uint8Array(length);
        this.readInto!(offset, out);
        return out;
      },
      readInto(offset, into) {
        checkRange(this, offset, into.length);
        for (let done = 0; done < into.length; ) {
          const n = source.readAt(into.subarray(done), offset + done);
          if (n === 0) throw new ImageError({ file: name, offset: offset + done }, "the volume ends before its size");
          done += n;
        }
      },
      *extents(offset, length) {
        checkRange(this, offset, length);
        if (length > 0) yield { offset, length, data: true };
      },
      close() {},
    };
    return volume;
  }

  identity() {
    const v = this.openVolume();
    return { name: v.name, size: v.size, blockSize: v.blockSize, identity: v.identity };
  }

  /** A volume has no checksums of its own: reading it through checks its compression's. */
  verify(progress?: ProgressFactory): VerifyReport {
    const bar = (progress ?? silentProgress)(this.size, "verify");
    let dataBytes = 0;
    for (const batch of this.dataBatches()) {
      for (const run of batch) dataBytes = run.offset + run.data.length;
      bar.update(dataBytes);
    }
    bar.finish(dataBytes);
    const compressed = this.stream.compression.length > 0 ? `, ${this.stream.compression.join(" inside ")} data intact` : "";
    return { checksumProblems: [], otherProblems: [], checked: [`a volume of ${this.content}, ${dataBytes.toLocaleString("en-US")} bytes${compressed}; a volume has no data checksums`], dataBytes };
  }

  describe(): InputFacts {
    return { kind: "volume", file: this.name, size: this.size, content: this.content, compression: this.stream.compression, pieces: this.stream.pieces };
  }

  close(): void {
    if (this.randomAccess && this.randomAccess.stream !== this.stream) this.randomAccess.stream.reader.close();
    this.stream.reader.close();
  }
}

function isZero(data: Uint8Array): boolean {
  const words = data.byteOffset % 4 === 0 && data.length % 4 === 0 ? new Uint32Array(data.buffer, data.byteOffset, data.length / 4) : undefined;
  if (words) {
    for (let i = 0; i < words.length; i++) if (words[i] !== 0) return false;
    return true;
  }
  for (let i = 0; i < data.length; i++) if (data[i] !== 0) return false;
  return true;
}

function identityOf(pieces: string[], size: number): string {
  return JSON.stringify({ format: "volume", size, pieces: pieces.map((p) => {
    const st = fs.statSync(p);
    return { size: st.size, mtimeMs: st.mtimeMs };
  }) });
}
