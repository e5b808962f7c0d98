import { ImageError, UsageError, withCommas } from "../../errors.ts";
import { decodeMemoryLimit, tooMuchMemory } from "../../../native/ffi.ts";
import { ZstdDecoder } from "../../../native/zstd.ts";
import type { ChunkSource, RandomAccessSource } from "../chunk-source.ts";
import type { BuildOptions, CodecIndex, SeekCodec, SeekPoint } from "./codec.ts";
import { SpliceSource } from "./splice.ts";
import { type CompressedInput, InputWindow, ZstdBlocks, frameAt } from "./zstd-blocks.ts";
import { resumeHeader } from "./zstd-frame.ts";
import { ChainedHash, StretchHasher } from "./stretch-hashes.ts";
import { readSeekTable } from "./zstd-seek-table.ts";
import { skimZstd } from "./zstd-ring.ts";
import type { VerifyJob, VerifyResult } from "./zstd-verify.ts";

/** Frames whose window is larger are not indexed (the build holds the window in memory). */
export const MAX_INDEXED_WINDOW = 64 << 20;
/** A frame start is a free point (no window); closer ones than this are not kept. */
const FRAME_POINT_SPACING = 1 << 20;
const INPUT_BYTES = 1 << 20;
const PROGRESS_EVERY = 32 << 20;
/** Compressed streams from this size on are read ahead of the pass by a worker (smaller ones take less than its start). */
const READ_AHEAD_FROM = 32 << 20;
/**
 * Points that need a window are taken no closer than `spacing`, and only while the windows kept so
 * far stay under this share of the compressed bytes read: where windows are large they thin out.
 */
export const WINDOW_BUDGET = 0.01;

/**
 * zstd: every frame start is a point (read from the seek table where the file has one, zstd's
 * seekable format; else found by the pass); inside a frame, block boundaries about `spacing` apart are
 * candidates, each resumed from a synthesized frame header with the original window descriptor
 * and the bytes before it as a prefix (ZSTD_DCtx_refPrefix), kept with the shortest prefix that
 * reproduces its probe span (about a window's worth; zstd-verify.ts, in a worker thread, while the
 * pass goes on). The pass records the stretch hashes readers check every decoded byte against
 * (stretch-hashes.ts). The pass and the probes decode through zstd-blocks.ts.
 */
export const zstdCodec: SeekCodec = {
  compression: "zstd",
  build: buildZstdIndex,
  resume: resumeZstd,
  skim: (raw, point, buffers) => skimZstd(raw, point, buffers),
};

/** What a point inside a frame carries in `extra`: the header to synthesize and where the frame's blocks end. */
function packExtra(header: Uint8Array, blocksEnd: number, frameEnd: number): Uint8Array {
  const out = new Uint8Array(1 + header.length + 16);
  const v = new DataView(out.buffer);
  out[0] = header.length;
  out.set(header, 1);
  v.setBigUint64(1 + header.length, BigInt(blocksEnd), true);
  v.setBigUint64(9 + header.length, BigInt(frameEnd), true);
  return out;
}

/** A point inside a frame: the header it resumes with and where its frame's blocks and the frame end, checked against the point and the image. */
export function unpackExtra(point: { compressed: number; extra: Uint8Array }, raw: RandomAccessSource): { header: Uint8Array; blocksEnd: number; frameEnd: number } {
  const { extra } = point;
  const bad = () => new ImageError(raw.locate(point.compressed), "corrupt seek index", "the state of the zstd point here does not parse");
  if (extra.length < 1) throw bad();
  const n = extra[0]!;
  if (n < 6 || n > 18 || extra.length !== 1 + n + 16) throw bad();
  const v = new DataView(extra.buffer, extra.byteOffset, extra.length);
  const blocksEnd = Number(v.getBigUint64(1 + n, true));
  const frameEnd = Number(v.getBigUint64(9 + n, true));
  if (blocksEnd > frameEnd || frameEnd > raw.size) throw bad();
  if (point.compressed > blocksEnd) throw new ImageError(raw.locate(point.compressed), "corrupt seek index", "the zstd point here lies past its frame's end");
  return { header: extra.slice(1, 1 + n), blocksEnd, frameEnd };
}

/** Frame starts at least FRAME_POINT_SPACING apart (the first always); none needs a window. */
function frameStartPoints(frames: { compressed: number; decoded: number }[]): SeekPoint[] {
  const points: SeekPoint[] = [];
  for (const f of frames) {
    if (points.length > 0 && f.decoded - points[points.length - 1]!.decoded < FRAME_POINT_SPACING) continue;
    points.push({ decoded: f.decoded, compressed: f.compressed, bits: 0, window: new Uint8Array(0), extra: new Uint8Array(0), trusted: true });
  }
  if (points.length === 0) points.push({ decoded: 0, compressed: 0, bits: 0, window: new Uint8Array(0), extra: new Uint8Array(0), trusted: true });
  return points;
}

function resumeZstd(raw: RandomAccessSource, point: SeekPoint, inputBuffer?: Uint8Array): ChunkSource {
  if (point.extra.length === 0) {
    return new ZstdDecoder(new SpliceSource(raw, [{ from: point.compressed, to: raw.size }]), undefined, inputBuffer);
  }
  const { header, blocksEnd, frameEnd } = unpackExtra(point, raw);
  const input = new SpliceSource(raw, [header, { from: point.compressed, to: blocksEnd }, { from: frameEnd, to: raw.size }]);
  return new ZstdDecoder(input, point.window, inputBuffer);
}

function buildZstdIndex(raw: RandomAccessSource, opts: BuildOptions): CodecIndex {
  const table = readSeekTable(raw);
  if (table) {
    opts.onProgress?.(raw.size);
    return { decodedSize: table.decodedSize, points: frameStartPoints(table.frames), fromSeekTable: true };
  }
  // what only the build needs is loaded here: a reader (a decode worker above all) starts without it
  const { createVerifier, zstdWorkerUrl } = require("./zstd-verify.ts") as typeof import("./zstd-verify.ts");
  const { ReadAheadInput } = require("./read-ahead.ts") as typeof import("./read-ahead.ts");
  const ahead = opts.pieces && raw.size >= READ_AHEAD_FROM ? ReadAheadInput.start(zstdWorkerUrl(), raw, INPUT_BYTES) : undefined;
  const input: CompressedInput = ahead ?? new InputWindow(raw, INPUT_BYTES);
  // each block is hashed as it lands, while it is still in the processor's cache
  const stretches = new StretchHasher();
  const blocks = new ZstdBlocks(raw, input);
  const probeHash = new ChainedHash();
  const digest = new Uint8Array(8);
  const points: SeekPoint[] = [];
  const verifier = createVerifier(raw, opts.pieces !== undefined);
  /** candidates sent to the verifier, in order, with the frame they are in */
  const sent: { job: Omit<VerifyJob, "window">; frameIndex: number }[] = [];
  const frameEnds: { blocksEnd: number; frameEnd: number }[] = [];
  let pos = 0;
  let decoded = 0;
  let lastPoint = -Infinity;
  let nextProgress = PROGRESS_EVERY;
  let frameIndex = -1;

  try {
    while (pos < raw.size) {
      const found = frameAt(raw, input, pos);
      if ("skip" in found) {
        pos += found.skip;
        continue;
      }
      const { frame } = found;
      frameIndex++;
      if (frame.windowSize > MAX_INDEXED_WINDOW) {
        // decoding it here would hold the whole window in memory (zstd --long=27 and up)
        throw new UsageError(
          `${raw.locate(pos).file}: the zstd frame at offset ${withCommas(pos)} has a ${withCommas(frame.windowSize)}-byte window; imgtool indexes windows up to ${MAX_INDEXED_WINDOW >> 20} MiB; use imgtool restore`,
        );
      }
      // a frame start is always a good point; after a frame with points inside, keep it
      const previousInside = sent.length > 0 && sent[sent.length - 1]!.frameIndex === frameIndex - 1;
      if (decoded - lastPoint >= FRAME_POINT_SPACING || previousInside || points.length === 0) {
        stretches.cut();
        points.push({ decoded, compressed: pos, bits: 0, window: new Uint8Array(0), extra: new Uint8Array(0), trusted: true });
        lastPoint = decoded;
      }
      const header = resumeHeader(frame.windowDescriptor);
      /** the candidate whose probe is being hashed, and where its probe may end */
      let probe: { decoded: number; compressed: number; window: Uint8Array; endAt: number } | undefined;
      let lastCandidate = decoded;
      const closeProbe = () => {
        if (!probe) return;
        if (probe.decoded === decoded) {
          // an empty last block: nothing to resume to
          probe = undefined;
          return;
        }
        probeHash.digestInto(digest);
        const job: VerifyJob = { decoded: probe.decoded, compressed: probe.compressed, header, window: probe.window, spanEnd: decoded, spanHash: digest.slice() };
        verifier.submit(job);
        const { window: _w, ...kept } = job;
        sent.push({ job: kept, frameIndex });
        probe = undefined;
      };

      if (frame.windowSize > decodeMemoryLimit().window) throw tooMuchMemory(raw.locate(pos), "zstd", `the frame's window is larger than ${decodeMemoryLimit().text}`);
      if (!blocks.startFrame(pos, frame.windowSize)) throw new Error("zstd index: the pass's ring does not hold the frame's window");
      for (;;) {
        if (probe && decoded >= probe.endAt && blocks.atBlockBoundary()) closeProbe();
        if (blocks.atBlockBoundary() && decoded - lastCandidate >= opts.spacing && verifier.packedBytes <= WINDOW_BUDGET * blocks.pos) {
          closeProbe();
          probeHash.reset(decoded);
          stretches.cut();
          probe = {
            decoded,
            compressed: blocks.pos,
            window: blocks.historyInto(verifier.windowBuffer(Math.min(frame.windowSize, blocks.decoded))),
            endAt: decoded + frame.windowSize,
          };
          lastCandidate = decoded;
        }
        const out = blocks.next();
        if (out.length === 0) break;
        stretches.feed(out);
        if (probe) probeHash.update(out);
        decoded += out.length;
        if (blocks.pos >= nextProgress) {
          opts.onProgress?.(blocks.pos);
          nextProgress = blocks.pos + PROGRESS_EVERY;
        }
      }
      pos = blocks.pos;
      closeProbe();
      frameEnds[frameIndex] = { blocksEnd: blocks.blocksEnd, frameEnd: pos };
    }
    opts.onProgress?.(pos);
    const results = verifier.finish();
    let rejected = 0;
    for (const [i, { job, frameIndex: f }] of sent.entries()) {
      const r: VerifyResult = results[i]!;
      if (r.windowLength < 0) {
        rejected++;
        continue;
      }
      const { blocksEnd, frameEnd } = frameEnds[f]!;
      points.push({
        decoded: job.decoded,
        compressed: job.compressed,
        bits: 0,
        window: r.packedWindow ?? new Uint8Array(0),
        packedWindowSize: r.windowLength,
        extra: packExtra(job.header, blocksEnd, frameEnd),
      });
    }
    points.sort((a, b) => a.decoded - b.decoded || a.compressed - b.compressed);
    return { decodedSize: decoded, points, rejected, stretches: stretches.finish() };
  } finally {
    verifier.close();
    blocks.close();
    ahead?.close();
  }
}
