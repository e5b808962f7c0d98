import { ImageError } from "../errors.ts";
import { type OpenOptions, openStream, type OpenedStream } from "../source/open.ts";
import { pieceAfter } from "../source/split.ts";
import type { BitmapLimits } from "./bitmap.ts";
import type { Image } from "./image.ts";
import { detectNtfsclone, openNtfsclone } from "./ntfsclone.ts";
import { detectPartclone, openPartclone } from "./partclone.ts";
import { detectPartimage, openPartimage } from "./partimage.ts";

/** One entry per format: recognise the first bytes of the decoded stream, then open it. */
interface FormatHandler {
  name: string;
  detect(head: Uint8Array): boolean;
  open(stream: OpenedStream, limits: BitmapLimits): Image;
}

export const formats: FormatHandler[] = [
  { name: "partclone", detect: detectPartclone, open: openPartclone },
  { name: "partimage", detect: detectPartimage, open: openPartimage },
  { name: "ntfsclone", detect: detectNtfsclone, open: openNtfsclone },
];

const HEAD_BYTES = 2048;

export interface OpenImageOptions extends OpenOptions, BitmapLimits {
  /**
   * For a command that reads only the header (info): when the input is a compressed split set
   * that may have lost pieces after its full-size last one, decode it to the end once so that a
   * missing piece is named rather than the header printed. Commands that read all the data find
   * out on the way and need not.
   */
  confirmWholeSet?: boolean;
}

/**
 * Open a disk image (partclone, partimage or ntfsclone) from a path, "-" (stdin) or an fd.
 * `opts.seekIndex` makes a compressed one readable at any offset (serve, mount, cat).
 */
export function openImage(input: string | number, opts: OpenImageOptions = {}): Image {
  const stream = openStream(input, opts);
  try {
    const head = stream.reader.peek(HEAD_BYTES);
    const handler = formats.find((f) => f.detect(head));
    if (!handler) {
      throw new ImageError(stream.reader.locate(0), "not a partclone, partimage or ntfsclone image", describeContent(head, stream));
    }
    const image = handler.open(stream, opts);
    if (opts.confirmWholeSet) confirmSetComplete(stream);
    return image;
  } catch (e) {
    stream.reader.close();
    // every length is checked before it is allocated; should one still get through, the user
    // learns which file and where, not only the runtime's "Out of memory"
    if (e instanceof RangeError) throw new ImageError(stream.reader.locate(), "the input asks for more memory than can be had", e.message);
    throw e;
  }
}

/**
 * A compressed split set whose last piece is full-size may have lost the pieces after it, and
 * nothing before the end of the stream tells: decode it to the end once, so that `info` too
 * names a missing piece (the decoder reports it as such; see SplitSource.missingPiece).
 */
function confirmSetComplete(stream: OpenedStream): void {
  // a lone .aa is the common case of a set that fitted in one piece: not decoded twice for it
  if (stream.compression.length === 0 || stream.pieces.length < 2 || !pieceAfter(stream.pieces)) return;
  const again = openStream(stream.pieces[0]!, { threads: false });
  try {
    const buf = new Uint8Array(1 << 20);
    while (again.reader.source.read(buf) > 0);
  } finally {
    again.reader.close();
  }
}

/** What the first bytes look like, for the "not an image" message. */
export function describeContent(head: Uint8Array, stream?: Pick<OpenedStream, "compression">): string {
  const inside = stream?.compression.length ? ` inside ${stream.compression.join("+")} data` : "";
  const at = (off: number, s: string) => s.split("").every((c, i) => head[off + i] === c.charCodeAt(0));
  let what: string;
  if (head.length === 0) what = "it is empty";
  else if (at(0, "btrfs-stream")) what = "looks like a btrfs send stream (use btrfs-dump)";
  else if (head.length >= 1082 && head[1080] === 0x53 && head[1081] === 0xef) what = "looks like an ext2/3/4 file system";
  else if (at(3, "NTFS    ")) what = "looks like an NTFS file system";
  else if (at(0x36, "FAT") || at(0x52, "FAT32")) what = "looks like a FAT file system";
  else if (at(0, "QFI\xfb")) what = "looks like a qcow2 disk image";
  else if (head.length >= 512 && head[510] === 0x55 && head[511] === 0xaa) what = "looks like a disk with a partition table or boot sector";
  else if (at(0, "PK\x03\x04")) what = "looks like a ZIP archive";
  else if (at(257, "ustar")) what = "looks like a tar archive";
  else {
    const printable = head.subarray(0, 16).every((b) => b === 9 || b === 10 || b === 13 || (b >= 32 && b < 127));
    what = printable ? "looks like text" : `starts with ${Array.from(head.subarray(0, 8), (b) => b.toString(16).padStart(2, "0")).join(" ")}`;
  }
  return what + inside;
}
