import fs from "node:fs";
import path from "node:path";
import { UsageError, withCommas } from "../errors.ts";
import { humanSize } from "../formats/units.ts";
import { verifyImage } from "../formats/verify.ts";
import type { Image } from "../formats/image.ts";
import { partimageSetName, partimageVolumeSet } from "../formats/partimage.ts";
import type { ProgressFactory } from "../progress.ts";
import { splitSetName } from "../source/split.ts";
import { imageIdentity, imageVolume, type Volume } from "../volume/volume.ts";
import type { Input, InputFacts, VerifyReport } from "./input.ts";

/**
 * A partclone, partimage or ntfsclone image (plain, compressed, split; a file or stdin) as an Input.
 * `name` is what the user typed; `reopen` opens the same image again for random access (through its
 * seek index), where the first open reads in order.
 */
export class ImageInput implements Input {
  readonly kind = "image";
  readonly files: readonly string[];
  readonly warnings: readonly string[] = [];
  private randomAccess: Image | undefined;

  constructor(
    readonly name: string,
    readonly image: Image,
    private readonly reopen: (() => Image) | undefined,
    /** the command, for messages ("serve needs a regular file ...") */
    private readonly command: string,
  ) {
    this.files = name === "-" ? ["-"] : [...new Set([...partimageVolumeSet(image.info.pieces), name])];
  }

  get size(): number {
    return this.image.info.deviceSize;
  }

  dataBytes(): number {
    return this.image.info.usedBlocks * this.image.info.blockSize;
  }

  dataBatches(opts: { verify: boolean }) {
    return this.image.dataBatches(opts);
  }

  openVolume(): Volume {
    let image = this.image;
    if (!image.read && this.reopen) {
      this.randomAccess ??= this.reopen();
      image = this.randomAccess;
    }
    refuseWithoutRandomAccess(image, this.name, this.command);
    // the block index is built now, so that a damaged image fails before anything starts
    image.read!(0, 0);
    const volume = imageVolume(image, image.info.pieces[0] ?? this.name);
    // the image belongs to this input: closing the volume leaves it to close()
    return { ...volume, read: volume.read, extents: volume.extents, close() {} };
  }

  identity() {
    const { deviceSize, blockSize, pieces } = this.image.info;
    return { name: pieces[0] ?? this.name, size: deviceSize, blockSize, identity: this.name === "-" ? undefined : imageIdentity(this.image) };
  }

  verify(progress?: ProgressFactory): VerifyReport {
    const { info } = this.image;
    const r = verifyImage(this.image, progress);
    // a btrfs image from partclone.btrfs before its fix may lack tree blocks the file system points to
    const btrfs = r.ok && this.name !== "-" && /btrfs/i.test(info.fsType);
    const missing = btrfs ? (require("../fs/btrfs/btrfs.ts") as typeof import("../fs/btrfs/btrfs.ts")).missingTreeBlocksOf(this.image, () => this.openVolume()) : [];
    const checked = r.ok && missing.length === 0 ? [`${info.format}, ${info.checksum === "NONE" ? "no data checksums" : `${info.checksum} checksums`}, ${withCommas(info.usedBlocks)} used blocks, ${humanSize(r.dataBytes)} of data`] : [];
    return { checksumProblems: r.problems, otherProblems: missing, checked, dataBytes: r.dataBytes };
  }

  describe(): InputFacts {
    return { kind: "image", image: this.image.info };
  }

  /** The image's own name, without a split suffix or a partimage volume number. */
  baseName(): string {
    const { format, pieces } = this.image.info;
    if (pieces.length === 0) return this.name;
    return path.basename(format === "partimage" ? partimageSetName(pieces[0]!) : splitSetName(pieces));
  }

  close(): void {
    this.randomAccess?.close();
    this.image.close();
  }
}

/** Say why an image cannot be read at any offset, and what to do instead; nothing when it can. */
export function refuseWithoutRandomAccess(image: Image, input: string, command: string): void {
  if (image.read) return;
  const { compression, format } = image.info;
  if (input === "-" || !fs.statSync(image.info.pieces[0]!).isFile()) {
    throw new UsageError(`${input}: ${command} needs a regular file it can read at any offset, not a pipe; save the image to a file first or use imgtool restore`);
  }
  if (compression.length > 0) {
    // every compressor named here decompresses with -d; the seek index modules load only for this message
    const { seekCodecOf } = require("../source/seek-index/codecs.ts") as typeof import("../source/seek-index/codecs.ts");
    const why =
      !seekCodecOf(compression[0]!) ? `imgtool has no seek index for ${compression[0]} data yet`
      : compression.length > 1 ? `it is compressed ${compression.length} times over`
      : `a ${format} image inside ${compression[0]} data is not read at any offset yet`;
    throw new UsageError(`${input}: ${command} cannot read this ${compression.join(" inside ")} image at any offset (${why}); decompress it first (${compression[0]} -d) or use imgtool restore`);
  }
  throw new UsageError(`${input}: this ${format} image cannot be read at any offset (block size ${image.info.blockSize}); use imgtool restore`);
}
