// The overlay file of `serve --overlay` and `mount --overlay`: imgtool's own layout, in one file.
//
//   [0, 4096)           header, little-endian:
//                         0 magic "imgtool-overlay\n"   16 u32 version (1)   20 u32 block size
//                        24 u64 volume size             32 u64 map offset    40 u64 map length
//                        48 u64 data offset             56 u32 identity length
//                        60 u32 CRC-32 of bytes [0, 64 + identity length) with this field 0
//                        64 identity of the volume it was made for (JSON text)
//   [map offset, +len)  2 bits per overlay block, block b in byte b>>2 at bit 2*(b&3):
//                         0 the volume's own bytes, 1 written here, 2 zeros, 3 never written
//   [data offset, ...)  written blocks at data offset + their offset in the volume (a sparse file)
//
// The header is written once, before the file gets its name. Writes go to the data area at once;
// the map reaches the disk only on flush, after the data it points to is durable (fdatasync,
// map pages, fdatasync), so whatever a crash leaves, every block the map calls written holds the
// bytes that were written there before the last flush that completed.
import fs from "node:fs";
import path from "node:path";
import { lockFile, punchHole } from "../../native/libc-file.ts";
import { ImageError, UsageError, withCommas } from "../errors.ts";
import type { DataRun } from "../formats/image.ts";
import { checkRange, type Extent, type Volume, type WritableVolume } from "./volume.ts";

const MAGIC = "imgtool-overlay\n";
const VERSION = 1;
const HEADER_SIZE = 4096;
const IDENTITY_AT = 64;
const MAX_IDENTITY = HEADER_SIZE - IDENTITY_AT;
const MAP_PAGE = 4096;
/** the data area starts on a MiB boundary, so that its blocks line up with the file system's */
const DATA_ALIGN = 1 << 20;
const MIN_BLOCK = 4096;
/** the map stays under 16 MiB in memory: larger volumes get larger overlay blocks */
const MAX_MAP_BLOCKS = 1 << 26;

const BASE = 0;
const WRITTEN = 1;
const ZEROS = 2;
/** a map byte whose four blocks all are in one state */
const WHOLE_BYTE = [0x00, 0x55, 0xaa];

interface Layout {
  blockSize: number;
  volumeSize: number;
  mapOffset: number;
  mapLength: number;
  dataOffset: number;
}

function layoutFor(volumeSize: number): Layout {
  let blockSize = MIN_BLOCK;
  while (Math.ceil(volumeSize / blockSize) > MAX_MAP_BLOCKS) blockSize *= 2;
  const blocks = Math.ceil(volumeSize / blockSize);
  const mapLength = Math.max(MAP_PAGE, Math.ceil(Math.ceil(blocks / 4) / MAP_PAGE) * MAP_PAGE);
  const dataOffset = Math.ceil((HEADER_SIZE + mapLength) / DATA_ALIGN) * DATA_ALIGN;
  return { blockSize, volumeSize, mapOffset: HEADER_SIZE, mapLength, dataOffset };
}

function identityOf(volume: Volume): string {
  return volume.identity ?? JSON.stringify({ name: volume.name, size: volume.size });
}

function encodeHeader(layout: Layout, identity: string): Uint8Array {
  const text = new TextEncoder().encode(identity);
  if (text.length > MAX_IDENTITY) throw new Error(`the volume's identity is ${text.length} bytes, more than an overlay header holds`);
  const header = new Uint8Array(HEADER_SIZE);
  const dv = new DataView(header.buffer);
  header.set(new TextEncoder().encode(MAGIC), 0);
  dv.setUint32(16, VERSION, true);
  dv.setUint32(20, layout.blockSize, true);
  dv.setBigUint64(24, BigInt(layout.volumeSize), true);
  dv.setBigUint64(32, BigInt(layout.mapOffset), true);
  dv.setBigUint64(40, BigInt(layout.mapLength), true);
  dv.setBigUint64(48, BigInt(layout.dataOffset), true);
  dv.setUint32(56, text.length, true);
  header.set(text, IDENTITY_AT);
  dv.setUint32(60, Bun.hash.crc32(header.subarray(0, IDENTITY_AT + text.length)), true);
  return header;
}

/** Check every field of a header against the file and the volume; the layout it describes. */
function decodeHeader(file: string, header: Uint8Array, fileSize: number, volume: Volume): Layout {
  const fail = (offset: number, what: string): never => {
    throw new ImageError({ file, offset }, what);
  };
  if (header.length < HEADER_SIZE) fail(0, `not an imgtool overlay (${header.length} bytes, shorter than its header)`);
  const dv = new DataView(header.buffer, header.byteOffset, header.length);
  if (Buffer.from(header.subarray(0, 16)).toString("latin1") !== MAGIC) fail(0, "not an imgtool overlay (no imgtool-overlay magic)");
  const version = dv.getUint32(16, true);
  if (version !== VERSION) fail(16, `overlay version ${version} is not one this imgtool reads (${VERSION})`);
  const identityLength = dv.getUint32(56, true);
  if (identityLength > MAX_IDENTITY) fail(56, `identity length ${withCommas(identityLength)} is more than the header holds`);
  const stored = dv.getUint32(60, true);
  const copy = header.slice(0, IDENTITY_AT + identityLength);
  new DataView(copy.buffer).setUint32(60, 0, true);
  if (Bun.hash.crc32(copy) !== stored) fail(60, "overlay header checksum does not match (damaged header)");
  const blockSize = dv.getUint32(20, true);
  const volumeSize = Number(dv.getBigUint64(24, true));
  const expected = layoutFor(volumeSize);
  if (blockSize !== expected.blockSize) fail(20, `overlay block size ${blockSize} is not ${expected.blockSize}`);
  if (Number(dv.getBigUint64(32, true)) !== expected.mapOffset) fail(32, "overlay map offset is wrong");
  if (Number(dv.getBigUint64(40, true)) !== expected.mapLength) fail(40, "overlay map length does not fit the volume size");
  if (Number(dv.getBigUint64(48, true)) !== expected.dataOffset) fail(48, "overlay data offset is wrong");
  const identity = Buffer.from(header.subarray(IDENTITY_AT, IDENTITY_AT + identityLength)).toString("utf8");
  if (volumeSize !== volume.size || identity !== identityOf(volume)) {
    throw new UsageError(
      `${file}: this overlay was made for another image (${withCommas(volumeSize)}-byte volume, ${identity}); ${volume.name} is ${withCommas(volume.size)} bytes, ${identityOf(volume)}`,
    );
  }
  if (fileSize < expected.dataOffset + volumeSize) fail(fileSize, `overlay file is ${withCommas(fileSize)} bytes, shorter than its ${withCommas(expected.dataOffset + volumeSize)}-byte layout (truncated)`);
  return expected;
}

/**
 * Create the overlay file without ever opening an existing file: the header and map are written
 * and synced under a temporary name, then linked to `file` (which fails if anything is there).
 */
function createOverlayFile(file: string, volume: Volume): void {
  const layout = layoutFor(volume.size);
  const header = encodeHeader(layout, identityOf(volume));
  const dir = path.dirname(file);
  const temp = path.join(dir, `.${path.basename(file)}.${process.pid}.creating`);
  const fd = fs.openSync(temp, fs.constants.O_RDWR | fs.constants.O_CREAT | fs.constants.O_EXCL | fs.constants.O_NOFOLLOW, 0o600);
  try {
    fs.writeSync(fd, header, 0, header.length, 0);
    fs.ftruncateSync(fd, layout.dataOffset + layout.volumeSize);
    fs.fsyncSync(fd);
    fs.closeSync(fd);
    fs.linkSync(temp, file);
  } catch (e) {
    try {
      fs.closeSync(fd);
    } catch {}
    throw e;
  } finally {
    fs.rmSync(temp, { force: true });
  }
  const dirFd = fs.openSync(dir, "r");
  try {
    fs.fsyncSync(dirFd);
  } finally {
    fs.closeSync(dirFd);
  }
}

export interface OverlayOptions {
  /** the image's files: the overlay is refused if it is one of them */
  inputs?: string[];
  /** refuse a missing file instead of creating it (restore merges an overlay, never makes one) */
  mustExist?: boolean;
}

/**
 * `base` with the changes kept in the overlay file `file` (created if missing). The base is only
 * read; closing the overlay closes the base too.
 */
export function openOverlay(file: string, base: Volume, opts: OverlayOptions = {}): OverlayVolume {
  let created = false;
  if (!fs.existsSync(file)) {
    let isLink = false;
    try {
      isLink = fs.lstatSync(file).isSymbolicLink();
    } catch {}
    if (isLink) throw new UsageError(`${file}: a symlink to nothing; an overlay is never created through a symlink`);
    if (opts.mustExist) throw new UsageError(`${file}: no such overlay file`);
    createOverlayFile(file, base);
    created = true;
  }
  let fd: number;
  try {
    fd = fs.openSync(file, fs.constants.O_RDWR | fs.constants.O_NOFOLLOW);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === "ELOOP") throw new UsageError(`${file}: a symlink; give the overlay file itself`);
    throw e;
  }
  try {
    const st = fs.fstatSync(fd);
    if (!st.isFile()) throw new UsageError(`${file}: not a regular file`);
    for (const input of opts.inputs ?? []) {
      const other = fs.statSync(input);
      if (other.dev === st.dev && other.ino === st.ino) throw new UsageError(`${file}: that is the image itself; the overlay must be another file`);
    }
    const header = new Uint8Array(HEADER_SIZE);
    const got = fs.readSync(fd, header, 0, HEADER_SIZE, 0);
    const layout = decodeHeader(file, header.subarray(0, got), st.size, base);
    const map = new Uint8Array(layout.mapLength);
    if (fs.readSync(fd, map, 0, map.length, layout.mapOffset) !== map.length) throw new ImageError({ file, offset: layout.mapOffset }, "overlay map is truncated");
    const blocks = Math.ceil(layout.volumeSize / layout.blockSize);
    for (let i = 0; i < map.length; i++) {
      const byte = map[i]!;
      if (byte === 0) continue;
      for (let slot = 0; slot < 4; slot++) {
        const state = (byte >>> (2 * slot)) & 3;
        // a state it never writes, or a change past the last block, is damage
        if (state === 3 || (state !== BASE && 4 * i + slot >= blocks)) {
          throw new ImageError({ file, offset: layout.mapOffset + i }, `overlay map byte 0x${byte.toString(16)} holds a state imgtool never writes`);
        }
      }
    }
    if (!lockFile(fd)) throw new UsageError(`${file}: another imgtool has this overlay open; stop it first`);
    return new OverlayVolume(file, fd, base, layout, map, created);
  } catch (e) {
    fs.closeSync(fd);
    throw e;
  }
}

/** A volume read from an overlay where it was written and from `base` elsewhere. */
export class OverlayVolume implements WritableVolume {
  readonly size: number;
  readonly name: string;
  readonly blockSize: number;
  readonly identity: string | undefined;
  private readonly overlayBlock: number;
  private readonly dirtyPages = new Set<number>();
  private closed = false;

  constructor(
    readonly file: string,
    private readonly fd: number,
    private readonly base: Volume,
    private readonly layout: Layout,
    private readonly map: Uint8Array,
    /** the file did not exist before */
    readonly created: boolean,
  ) {
    this.size = base.size;
    this.name = base.name;
    this.overlayBlock = layout.blockSize;
    this.blockSize = Math.min(base.blockSize, layout.blockSize);
    this.identity = base.identity;
  }

  /** bytes of the volume the overlay holds (written or zeroed) */
  changedBytes(): number {
    let blocks = 0;
    for (const byte of this.map) for (let s = 0; s < 8; s += 2) if ((byte >>> s) & 3) blocks++;
    return blocks * this.overlayBlock;
  }

  private state(block: number): number {
    return (this.map[block >>> 2]! >>> (2 * (block & 3))) & 3;
  }

  private setState(block: number, state: number): void {
    const i = block >>> 2;
    const shift = 2 * (block & 3);
    const old = this.map[i]!;
    const now = (old & ~(3 << shift)) | (state << shift);
    if (now !== old) {
      this.map[i] = now;
      this.dirtyPages.add(Math.floor(i / MAP_PAGE));
    }
  }

  private setStates(first: number, end: number, state: number): void {
    for (let b = first; b < end; b++) this.setState(b, state);
  }

  /** The run of blocks from `block` in its state, up to `limit`: whole map bytes are stepped at once. */
  private run(block: number, limit: number): { state: number; next: number } {
    const state = this.state(block);
    const whole = WHOLE_BYTE[state]!;
    let b = block + 1;
    while (b < limit) {
      if ((b & 3) === 0 && b + 4 <= limit && this.map[b >>> 2] === whole) {
        b += 4;
        continue;
      }
      if (this.state(b) !== state) break;
      b++;
    }
    return { state, next: b };
  }

  /** The stretches the overlay holds, ascending: written here, or zeroed. */
  *changes(): Generator<{ offset: number; length: number; zero: boolean }> {
    const bs = this.overlayBlock;
    const blocks = Math.ceil(this.size / bs);
    let block = 0;
    while (block < blocks) {
      const { state, next } = this.run(block, blocks);
      if (state !== BASE) {
        const offset = block * bs;
        yield { offset, length: Math.min(this.size, next * bs) - offset, zero: state === ZEROS };
      }
      block = next;
    }
  }

  read(offset: number, length: number): Uint8Array {
    checkRange(this, offset, length);
    const out = new Uint8Array(length);
    this.fill(out, offset);
    return out;
  }

  readInto(offset: number, into: Uint8Array): void {
    checkRange(this, offset, into.length);
    this.fill(into, offset);
  }

  private fill(out: Uint8Array, offset: number): void {
    const bs = this.overlayBlock;
    const end = offset + out.length;
    const limit = Math.ceil(end / bs);
    let pos = offset;
    while (pos < end) {
      const { state, next } = this.run(Math.floor(pos / bs), limit);
      const stop = Math.min(end, next * bs);
      const at = pos - offset;
      if (state === BASE) {
        const part = out.subarray(at, at + stop - pos);
        if (this.base.readInto) this.base.readInto(pos, part);
        else part.set(this.base.read(pos, stop - pos));
      }
      else if (state === WRITTEN) this.readData(out.subarray(at, at + stop - pos), pos);
      else out.fill(0, at, at + stop - pos);
      pos = stop;
    }
  }

  private readData(into: Uint8Array, offset: number): void {
    let done = 0;
    while (done < into.length) {
      const n = fs.readSync(this.fd, into, done, into.length - done, this.layout.dataOffset + offset + done);
      if (n <= 0) throw new ImageError({ file: this.file, offset: this.layout.dataOffset + offset + done }, "overlay data ends early");
      done += n;
    }
  }

  private writeData(data: Uint8Array, offset: number): void {
    let done = 0;
    while (done < data.length) done += fs.writeSync(this.fd, data, done, data.length - done, this.layout.dataOffset + offset + done);
  }

  *extents(offset: number, length: number): Iterable<Extent> {
    checkRange(this, offset, length);
    const bs = this.overlayBlock;
    const end = offset + length;
    const limit = Math.ceil(end / bs);
    let pending: Extent | undefined;
    const merged = function* (e: Extent): Generator<Extent> {
      if (pending && pending.data === e.data && pending.offset + pending.length === e.offset) pending.length += e.length;
      else {
        if (pending) yield pending;
        pending = { ...e };
      }
    };
    let pos = offset;
    while (pos < end) {
      const { state, next } = this.run(Math.floor(pos / bs), limit);
      const stop = Math.min(end, next * bs);
      if (state === BASE) for (const e of this.base.extents(pos, stop - pos)) yield* merged(e);
      else yield* merged({ offset: pos, length: stop - pos, data: state === WRITTEN });
      pos = stop;
    }
    if (pending) yield pending;
  }

  write(offset: number, data: Uint8Array): void {
    checkRange(this, offset, data.length);
    const bs = this.overlayBlock;
    const end = offset + data.length;
    let pos = offset;
    while (pos < end) {
      const block = Math.floor(pos / bs);
      const blockStart = block * bs;
      const blockEnd = Math.min(this.size, blockStart + bs);
      if (pos === blockStart && end >= blockEnd) {
        // whole blocks: one write for all of them
        const wholeEnd = end === this.size ? end : Math.floor(end / bs) * bs;
        this.writeData(data.subarray(pos - offset, wholeEnd - offset), pos);
        this.setStates(block, Math.ceil(wholeEnd / bs), WRITTEN);
        pos = wholeEnd;
        continue;
      }
      const stop = Math.min(end, blockEnd);
      const part = data.subarray(pos - offset, stop - offset);
      if (this.state(block) === WRITTEN) this.writeData(part, pos);
      else {
        // a part of a block not yet here: the rest of the block comes along from what it reads now
        const whole = new Uint8Array(blockEnd - blockStart);
        this.fill(whole, blockStart);
        whole.set(part, pos - blockStart);
        this.writeData(whole, blockStart);
        this.setState(block, WRITTEN);
      }
      pos = stop;
    }
  }

  zero(offset: number, length: number, punch: boolean): void {
    checkRange(this, offset, length);
    const bs = this.overlayBlock;
    const end = offset + length;
    const firstWhole = Math.ceil(offset / bs);
    const endWhole = end === this.size ? Math.ceil(end / bs) : Math.floor(end / bs);
    if (firstWhole >= endWhole) {
      this.write(offset, new Uint8Array(length));
      return;
    }
    const wholeStart = firstWhole * bs;
    const wholeEnd = Math.min(this.size, endWhole * bs);
    if (offset < wholeStart) this.write(offset, new Uint8Array(wholeStart - offset));
    if (wholeEnd < end) this.write(wholeEnd, new Uint8Array(end - wholeEnd));
    this.setStates(firstWhole, endWhole, ZEROS);
    // the map says zeros whatever the data area holds; punching gives the space back
    if (punch) punchHole(this.fd, this.layout.dataOffset + wholeStart, wholeEnd - wholeStart);
  }

  flush(): void {
    fs.fdatasyncSync(this.fd);
    if (this.dirtyPages.size === 0) return;
    const pages = [...this.dirtyPages].sort((a, b) => a - b);
    for (const page of pages) {
      const from = page * MAP_PAGE;
      const bytes = this.map.subarray(from, Math.min(this.map.length, from + MAP_PAGE));
      let done = 0;
      while (done < bytes.length) done += fs.writeSync(this.fd, bytes, done, bytes.length - done, this.layout.mapOffset + from + done);
    }
    fs.fdatasyncSync(this.fd);
    for (const page of pages) this.dirtyPages.delete(page);
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    try {
      this.flush();
    } finally {
      fs.closeSync(this.fd);
      this.base.close();
    }
  }
}

/** the most of an overlay's own data one merged run carries */
const MERGE_CHUNK = 4 << 20;

/**
 * The used data of an image (ascending batches, as restore writes them) with an overlay's changes
 * laid over it: changed bytes inside a run are replaced, written stretches outside the image's
 * runs become runs of their own, zeroed ones outside stay holes.
 */
export function* mergeOverlay(batches: Iterable<DataRun[]>, overlay: OverlayVolume): Generator<DataRun[], void, undefined> {
  const changes = overlay.changes();
  let change = nextChange(changes);
  const own = (offset: number, end: number, out: DataRun[]) => {
    for (let at = offset; at < end; at += MERGE_CHUNK) out.push({ offset: at, data: overlay.read(at, Math.min(MERGE_CHUNK, end - at)) });
  };
  for (const batch of batches) {
    const out: DataRun[] = [];
    for (const run of batch) {
      const runEnd = run.offset + run.data.length;
      while (change && change.offset < runEnd) {
        const changeEnd = change.offset + change.length;
        if (change.offset < run.offset) {
          // the part before this run lies where the image has no data
          const stop = Math.min(changeEnd, run.offset);
          if (!change.zero) own(change.offset, stop, out);
          if (changeEnd <= run.offset) {
            change = nextChange(changes);
            continue;
          }
          change = { offset: run.offset, length: changeEnd - run.offset, zero: change.zero };
          continue;
        }
        break;
      }
      if (!change || change.offset >= runEnd) {
        out.push(run);
        continue;
      }
      const data = run.data.slice();
      while (change && change.offset < runEnd) {
        const stop = Math.min(change.offset + change.length, runEnd);
        if (change.zero) data.fill(0, change.offset - run.offset, stop - run.offset);
        else data.set(overlay.read(change.offset, stop - change.offset), change.offset - run.offset);
        if (stop < change.offset + change.length) {
          change = { offset: stop, length: change.offset + change.length - stop, zero: change.zero };
          break;
        }
        change = nextChange(changes);
      }
      out.push({ offset: run.offset, data });
    }
    yield out;
  }
  while (change) {
    const out: DataRun[] = [];
    if (!change.zero) own(change.offset, change.offset + change.length, out);
    change = nextChange(changes);
    if (out.length > 0) yield out;
  }
}

function nextChange(changes: Iterator<{ offset: number; length: number; zero: boolean }>) {
  const r = changes.next();
  return r.done ? undefined : { ...r.value };
}

/**
 * A stand-in for an image's volume when only the overlay's own data is read (restore streams the
 * image itself): it identifies the image and refuses reads.
 */
export function identityVolume(name: string, size: number, blockSize: number, identity: string): Volume {
  const refuse = (): never => {
    throw new Error("this volume only identifies an image");
  };
  return { name, size, blockSize, identity, read: refuse, extents: refuse, close: () => {} };
}
