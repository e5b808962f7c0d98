import { ImageError } from "../errors.ts";
import type { Volume } from "../volume/volume.ts";
import type { BtrfsOptions } from "./btrfs/btrfs.ts";
import type { ExfatOptions } from "./exfat.ts";
import type { FatOptions } from "./fat.ts";
import type { FileSystem } from "./filesystem.ts";

// each reader is loaded when a volume is first tried against it: restore and verify load none
const btrfs = () => require("./btrfs/btrfs.ts") as typeof import("./btrfs/btrfs.ts");
const ext4 = () => require("./ext4.ts") as typeof import("./ext4.ts");
const exfat = () => require("./exfat.ts") as typeof import("./exfat.ts");
const fat = () => require("./fat.ts") as typeof import("./fat.ts");
const ntfs = () => require("./ntfs.ts") as typeof import("./ntfs.ts");
const xfs = () => require("./xfs.ts") as typeof import("./xfs.ts");

export interface OpenFsOptions {
  fat?: FatOptions;
  exfat?: ExfatOptions;
  btrfs?: BtrfsOptions;
}

/** Enough of the volume's start for every signature below (btrfs's superblock is at 64 KiB). */
export const HEAD_BYTES = 0x10000 + 0x1000;

interface FsKind {
  name: string;
  detect(head: Uint8Array): boolean;
  /** absent: recognised but not readable by imgtool */
  open?(volume: Volume, options: OpenFsOptions): FileSystem;
}

const ascii = (head: Uint8Array, at: number, text: string) => head.length >= at + text.length && [...text].every((c, i) => head[at + i] === c.charCodeAt(0));

/** One line per file system, most specific signatures first (NTFS and exFAT boot sectors look like FAT's). */
const FILE_SYSTEMS: FsKind[] = [
  { name: "NTFS", detect: (h) => ntfs().detectNtfs(h), open: (v) => ntfs().openNtfs(v) },
  { name: "exFAT", detect: (h) => exfat().detectExfat(h), open: (v, o) => exfat().openExfat(v, o.exfat) },
  { name: "ext2/3/4", detect: (h) => ext4().detectExt(h), open: (v) => ext4().openExt(v) },
  { name: "vfat", detect: (h) => fat().detectFat(h), open: (v, o) => fat().openFat(v, o.fat) },
  { name: "btrfs", detect: (h) => btrfs().detectBtrfs(h), open: (v, o) => btrfs().openBtrfs(v, o.btrfs) },
  { name: "xfs", detect: (h) => xfs().detectXfs(h), open: (v) => xfs().openXfs(v) },
  { name: "f2fs", detect: (h) => h.length > 0x404 && h[0x400] === 0x10 && h[0x401] === 0x20 && h[0x402] === 0xf5 && h[0x403] === 0xf2 },
  { name: "reiserfs", detect: (h) => ascii(h, 0x10034, "ReIsEr") },
  { name: "jfs", detect: (h) => ascii(h, 0x8000, "JFS1") },
  { name: "HFS+", detect: (h) => ascii(h, 0x400, "H+") || ascii(h, 0x400, "HX") },
  { name: "ISO 9660", detect: (h) => ascii(h, 0x8001, "CD001") },
  { name: "squashfs", detect: (h) => ascii(h, 0, "hsqs") },
  { name: "LUKS (encrypted)", detect: (h) => ascii(h, 0, "LUKS\xba\xbe") },
  { name: "LVM physical volume", detect: (h) => ascii(h, 0x218, "LVM2 001") },
  { name: "Linux swap", detect: (h) => ascii(h, 4086, "SWAPSPACE2") || ascii(h, 4086, "SWAP-SPACE") },
];

/** The file system on a volume, ready for ls/get/extract; one clear line for what cannot be read. */
export function openFileSystem(volume: Volume, options: OpenFsOptions = {}): FileSystem {
  const head = volume.read(0, Math.min(HEAD_BYTES, volume.size));
  const kind = FILE_SYSTEMS.find((k) => k.detect(head));
  if (!kind) throw new ImageError({ file: volume.name, offset: 0 }, "no file system imgtool recognises on this volume");
  if (!kind.open) {
    throw new ImageError(
      { file: volume.name },
      `the volume holds ${kind.name}; imgtool cannot read ${kind.name}: show the volume with \`imgtool mount IMG DIR\`, then mount DIR/*.raw read-only through the kernel (mount -o ro,loop)`,
    );
  }
  return kind.open(volume, options);
}

/** The name of the file system whose signature the volume's first HEAD_BYTES hold, if any. */
export function fileSystemName(head: Uint8Array): string | undefined {
  return FILE_SYSTEMS.find((k) => k.detect(head))?.name;
}
