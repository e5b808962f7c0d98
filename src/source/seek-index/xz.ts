// .xz: streams of blocks, each stream closed by an index of (unpadded size, uncompressed size) per
// block and a footer pointing back to it: "The .xz File Format" 1.1.0 (tukaani.org/xz/xz-file-format.txt).
import { ImageError, withCommas } from "../../errors.ts";
import { LzmaDecoder } from "../../../native/lzma.ts";
import type { ChunkSource, RandomAccessSource } from "../chunk-source.ts";
import type { BuildOptions, CodecIndex, SeekCodec, SeekPoint } from "./codec.ts";
import type { StretchHashes } from "./stretch-hashes.ts";
import { type Part, PartsSource, PointCollector, rawFrom } from "./resume-support.ts";

const HEADER_MAGIC = [0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00];
const FOOTER_MAGIC = [0x59, 0x5a];
const HEADER_SIZE = 12;
const FOOTER_SIZE = 12;
/** the largest index read into memory: 16 MiB is ~2 million blocks */
const MAX_INDEX = 16 << 20;
/** `extra` of a block point: stream flags (2), index offset (u64), stream end (u64), block number (u32) */
const EXTRA_SIZE = 22;
const EMPTY = new Uint8Array(0);

export interface XzBlock {
  /** offset of the block header in the file */
  compressed: number;
  /** decoded offset of its first byte in the whole file */
  decoded: number;
  unpadded: number;
  uncompressed: number;
}

export interface XzStream {
  start: number;
  /** the stream flags of header and footer (2 bytes) */
  flags: Uint8Array;
  indexStart: number;
  /** just after the footer */
  end: number;
  blocks: XzBlock[];
}

const crc32 = (b: Uint8Array) => Bun.hash.crc32(b) >>> 0;

function bad(raw: RandomAccessSource, offset: number, what: string): never {
  throw new ImageError(raw.locate(offset), "corrupt xz data", what);
}

function readExactly(raw: RandomAccessSource, offset: number, length: number): Uint8Array {
  const b = new Uint8Array(length);
  if (offset < 0 || raw.readAt(b, offset) !== length) bad(raw, Math.max(0, offset), "the file ends too early for its stream footer's index");
  return b;
}

/** Records of one index (its bytes, CRC checked), as [unpadded, uncompressed] pairs. */
function parseIndex(raw: RandomAccessSource, at: number, b: Uint8Array): [number, number][] {
  let p = 0;
  const vli = (): number => {
    let v = 0;
    for (let i = 0; i < 9; i++) {
      if (p >= b.length - 4) bad(raw, at + p, "index record runs past the index");
      const byte = b[p++]!;
      v += (byte & 0x7f) * 2 ** (7 * i);
      if ((byte & 0x80) === 0) {
        if (i > 0 && byte === 0) bad(raw, at + p - 1, "index number not in its shortest form");
        if (v > Number.MAX_SAFE_INTEGER) bad(raw, at + p - 1, "index number too large");
        return v;
      }
    }
    bad(raw, at + p, "index number longer than 9 bytes");
  };
  if (b[p++] !== 0x00) bad(raw, at, "index indicator is not 0x00");
  const count = vli();
  // each record takes at least 2 bytes
  if (count > (b.length - p) / 2) bad(raw, at, `index claims ${withCommas(count)} records, more than its ${withCommas(b.length)} bytes can hold`);
  const records: [number, number][] = [];
  for (let i = 0; i < count; i++) {
    const unpadded = vli();
    const uncompressed = vli();
    if (unpadded < 5) bad(raw, at + p, "index record with an unpadded size below 5");
    records.push([unpadded, uncompressed]);
  }
  while (p % 4 !== 0) if (b[p++] !== 0) bad(raw, at + p - 1, "index padding is not zero");
  if (p !== b.length - 4) bad(raw, at + p, "index size does not match its records");
  const stored = new DataView(b.buffer, b.byteOffset + p, 4).getUint32(0, true);
  if (stored !== crc32(b.subarray(0, p))) bad(raw, at + p, "index CRC32 mismatch");
  return records;
}

/** Every stream of the file with its blocks, from the footers backwards (stream padding skipped). */
export function readXzLayout(raw: RandomAccessSource): XzStream[] {
  const streams: XzStream[] = [];
  let pos = raw.size;
  while (pos > 0) {
    // stream padding: null bytes in multiples of four, read back in 64 KiB steps
    for (let zeros = true; zeros && pos >= 4; ) {
      const n = Math.min(pos, 64 * 1024) & ~3;
      const w = readExactly(raw, pos - n, n);
      let i = n;
      while (i >= 4 && !(w[i - 1] || w[i - 2] || w[i - 3] || w[i - 4])) i -= 4;
      zeros = i === 0;
      pos -= n - i;
    }
    if (pos === 0) break;
    if (pos % 4 !== 0 || pos < HEADER_SIZE + FOOTER_SIZE) bad(raw, pos, "no xz stream footer at the end (truncated file?)");
    const footerAt = pos - FOOTER_SIZE;
    const footer = readExactly(raw, footerAt, FOOTER_SIZE);
    if (footer[10] !== FOOTER_MAGIC[0] || footer[11] !== FOOTER_MAGIC[1]) bad(raw, footerAt, "no xz stream footer at the end (truncated file?)");
    const fv = new DataView(footer.buffer);
    if (fv.getUint32(0, true) !== crc32(footer.subarray(4, 10))) bad(raw, footerAt, "stream footer CRC32 mismatch");
    const indexSize = (fv.getUint32(4, true) + 1) * 4;
    const indexStart = footerAt - indexSize;
    if (indexSize > MAX_INDEX || indexStart < HEADER_SIZE) bad(raw, footerAt + 4, `stream footer's index size ${withCommas(indexSize)} does not fit the file`);
    const records = parseIndex(raw, indexStart, readExactly(raw, indexStart, indexSize));
    let blocksBytes = 0;
    for (const [unpadded] of records) blocksBytes += Math.ceil(unpadded / 4) * 4;
    const start = indexStart - blocksBytes - HEADER_SIZE;
    if (start < 0) bad(raw, indexStart, "the index lists more block bytes than precede it");
    const header = readExactly(raw, start, HEADER_SIZE);
    if (!HEADER_MAGIC.every((m, i) => header[i] === m)) bad(raw, start, "no xz stream header where the index says the stream starts");
    if (header[6] !== footer[8] || header[7] !== footer[9]) bad(raw, start + 6, "stream flags of header and footer differ");
    const blocks: XzBlock[] = [];
    let at = start + HEADER_SIZE;
    for (const [unpadded, uncompressed] of records) {
      blocks.push({ compressed: at, decoded: 0, unpadded, uncompressed });
      at += Math.ceil(unpadded / 4) * 4;
    }
    streams.unshift({ start, flags: header.slice(6, 8), indexStart, end: pos, blocks });
    pos = start;
  }
  let decoded = 0;
  for (const s of streams) {
    for (const b of s.blocks) {
      b.decoded = decoded;
      decoded += b.uncompressed;
    }
  }
  return streams;
}

function build(raw: RandomAccessSource, opts: BuildOptions): CodecIndex {
  const spacing = Math.max(1, opts.spacing);
  const streams = readXzLayout(raw);
  const planned: SeekPoint[] = [];
  let lastPoint = -Infinity;
  let blockCount = 0;
  for (const s of streams) {
    s.blocks.forEach((b, k) => {
      blockCount++;
      if (b.decoded - lastPoint < spacing) return;
      lastPoint = b.decoded;
      if (k === 0) {
        planned.push({ decoded: b.decoded, compressed: s.start, bits: 0, window: EMPTY, extra: EMPTY });
        return;
      }
      const extra = new Uint8Array(EXTRA_SIZE);
      const v = new DataView(extra.buffer);
      extra.set(s.flags, 0);
      v.setUint32(2, s.indexStart >>> 0, true);
      v.setUint32(6, Math.floor(s.indexStart / 2 ** 32), true);
      v.setUint32(10, s.end >>> 0, true);
      v.setUint32(14, Math.floor(s.end / 2 ** 32), true);
      v.setUint32(18, k, true);
      // an xz block decodes on its own (its filters start afresh)
      planned.push({ decoded: b.decoded, compressed: b.compressed, bits: 0, window: EMPTY, extra, trusted: true });
    });
  }
  if (planned[0]?.decoded !== 0) planned.unshift({ decoded: 0, compressed: streams[0]?.start ?? 0, bits: 0, window: EMPTY, extra: EMPTY });
  const listed = streams.reduce((n, s) => n + s.blocks.reduce((m, b) => m + b.uncompressed, 0), 0);
  const { decodedSize, stretches } = decodeAll(raw, opts, planned, (input) => new LzmaDecoder(input, "xz"), listed, (expected, got) =>
    bad(raw, raw.size, `the index lists ${withCommas(expected)} decompressed bytes, the blocks hold ${withCommas(got)}`),
  );
  const index: CodecIndex = { decodedSize, points: planned, stretches };
  if (blockCount <= 1) index.notResumable = "the xz stream is one block (xz without -T0 or --block-size): reads decode it from the start";
  return index;
}

/**
 * The sequential pass for codecs whose points are known before decoding (from an index or the
 * frame layout): decode everything once from `input` (the compressed stream from its start), cutting
 * the stretch hashes at each planned point. Returns the decoded size and the stretch hashes; `mismatch`
 * is called when it is not `expectedSize` or a point lies past it.
 */
export function decodeAll(
  raw: RandomAccessSource,
  opts: BuildOptions,
  planned: SeekPoint[],
  makeDecoder: (input: PartsSource) => ChunkSource,
  expectedSize: number | undefined,
  mismatch: (expected: number, got: number) => never,
): { decodedSize: number; stretches: StretchHashes } {
  const verifier = new PointCollector();
  const input = rawFrom(raw, 0);
  const decoder = makeDecoder(input);
  const buf = new Uint8Array(1 << 20);
  let decoded = 0;
  let next = 0;
  try {
    for (;;) {
      const n = decoder.read(buf);
      let at = 0;
      while (next < planned.length && planned[next]!.decoded <= decoded + n) {
        const p = planned[next]!;
        verifier.feed(buf.subarray(at, p.decoded - decoded));
        at = p.decoded - decoded;
        verifier.add(p);
        next++;
      }
      if (n === 0) break;
      verifier.feed(buf.subarray(at, n));
      decoded += n;
      opts.onProgress?.(input.handedOut);
    }
  } finally {
    decoder.close();
  }
  if (next < planned.length) mismatch(planned[next]!.decoded, decoded);
  if (expectedSize !== undefined && expectedSize !== decoded) mismatch(expectedSize, decoded);
  const { points, stretches } = verifier.finish();
  planned.splice(0, planned.length, ...points);
  return { decodedSize: decoded, stretches };
}

/** A complete stream made of the blocks from one on: a header, those blocks, an index of them and a footer. */
function resumeBlock(raw: RandomAccessSource, point: SeekPoint): PartsSource {
  const v = new DataView(point.extra.buffer, point.extra.byteOffset, point.extra.byteLength);
  const flags = point.extra.subarray(0, 2);
  const indexStart = v.getUint32(2, true) + v.getUint32(6, true) * 2 ** 32;
  const streamEnd = v.getUint32(10, true) + v.getUint32(14, true) * 2 ** 32;
  const first = v.getUint32(18, true);
  const indexSize = streamEnd - FOOTER_SIZE - indexStart;
  if (indexSize < 8 || indexSize > MAX_INDEX || point.compressed >= indexStart) bad(raw, point.compressed, "xz seek point does not fit the stream");
  const records = parseIndex(raw, indexStart, readExactly(raw, indexStart, indexSize)).slice(first);
  if (records.length === 0) bad(raw, point.compressed, "xz seek point past the stream's last block");

  const header = new Uint8Array(HEADER_SIZE);
  header.set(HEADER_MAGIC);
  header.set(flags, 6);
  new DataView(header.buffer).setUint32(8, crc32(flags), true);

  const idx: number[] = [0x00];
  const vli = (x: number) => {
    while (x >= 0x80) {
      idx.push((x % 0x80) | 0x80);
      x = Math.floor(x / 0x80);
    }
    idx.push(x);
  };
  vli(records.length);
  for (const [u, d] of records) {
    vli(u);
    vli(d);
  }
  while (idx.length % 4 !== 0) idx.push(0);
  const index = new Uint8Array(idx.length + 4);
  index.set(idx);
  new DataView(index.buffer).setUint32(idx.length, crc32(index.subarray(0, idx.length)), true);

  const footer = new Uint8Array(FOOTER_SIZE);
  const fv = new DataView(footer.buffer);
  fv.setUint32(4, index.length / 4 - 1, true);
  footer.set(flags, 8);
  footer.set(FOOTER_MAGIC, 10);
  fv.setUint32(0, crc32(footer.subarray(4, 10)), true);

  const parts: Part[] = [
    { bytes: header, at: point.compressed },
    { start: point.compressed, end: indexStart },
    { bytes: index, at: indexStart },
    { bytes: footer, at: streamEnd - FOOTER_SIZE },
    { start: streamEnd, end: raw.size },
  ];
  return new PartsSource(raw, parts);
}

export const xzSeekCodec: SeekCodec = {
  compression: "xz",
  build,
  resume: (raw, point, inputBuffer) => new LzmaDecoder(point.extra.length === EXTRA_SIZE ? resumeBlock(raw, point) : rawFrom(raw, point.compressed), "xz", inputBuffer),
};

/** .lzma ("alone") has no blocks and no index: one pass for the size, no point past the start. */
export const lzmaSeekCodec: SeekCodec = {
  compression: "lzma",
  build(raw, opts) {
    const planned: SeekPoint[] = [{ decoded: 0, compressed: 0, bits: 0, window: EMPTY, extra: EMPTY }];
    const { decodedSize, stretches } = decodeAll(raw, opts, planned, (input) => new LzmaDecoder(input, "lzma"), undefined, () => {
      throw new ImageError(raw.locate(0), "truncated lzma data", "no decompressed bytes");
    });
    return { decodedSize, points: planned, stretches, notResumable: "a .lzma stream has no blocks: reads decode it from the start" };
  },
  resume: (raw, point, inputBuffer) => {
    if (point.compressed !== 0 || point.decoded !== 0) throw new ImageError(raw.locate(point.compressed), "a .lzma stream can only be decoded from its start");
    return new LzmaDecoder(rawFrom(raw, 0), "lzma", inputBuffer);
  },
};
