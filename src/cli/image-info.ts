import { withCommas } from "../errors.ts";
import type { ImageInfo, NtfscloneInfo, PartcloneInfo, PartimageInfo } from "../formats/image.ts";
import { PARTIMAGE_COMPRESSION_MODES, type PartimageFsInfo } from "../formats/partimage.ts";
import { humanSize } from "../formats/units.ts";

/** One line of an image's `info`: label and printed value; key and value are its --json `header` entry. */
interface InfoLine {
  key: string;
  label: string;
  text: string;
  value: string | number | boolean | null;
  /** printed after the value, e.g. "used block count based on bitmap" */
  note?: string;
}

function line(key: string, label: string, text: string, value: InfoLine["value"], note?: string): InfoLine {
  return { key, label, text, value, note };
}

/** "1,168,685 (17.8 GB)" */
function countWithSize(count: number, bytesEach: number): string {
  return `${withCommas(count)} (${humanSize(count * bytesEach)})`;
}

function sizeText(bytes: number): string {
  return `${withCommas(bytes)} (${humanSize(bytes)})`;
}

function hex32(v: number): string {
  return `0x${(v >>> 0).toString(16).padStart(8, "0")}`;
}

/** where the data starts, as partclone.info says it of a plain file */
function streamWhere(info: ImageInfo): string {
  return info.compression.length ? `of the ${info.compression.join("+")}-decompressed stream` : "in img file";
}

function partcloneLines(info: PartcloneInfo): InfoLine[] {
  const h = info.header;
  const bs = h.blockSize;
  const noChecksum = h.checksum === "NONE";
  const lines = [
    line("partcloneVersion", "partclone version", h.partcloneVersion ?? "n/a (image format 0001)", h.partcloneVersion ?? null),
    line("fsType", "fs type", h.fsType, h.fsType),
    line("deviceSize", "fs total size", sizeText(h.deviceSize), h.deviceSize),
    line("totalBlocks", "fs total blocks", withCommas(h.totalBlocks), h.totalBlocks),
    line("superBlockUsedBlocks", "fs used blocks", countWithSize(h.superBlockUsedBlocks, bs), h.superBlockUsedBlocks, "used block count based on super-block"),
    line("usedBlocks", "fs_used_bitmap", countWithSize(info.usedBlocks, bs), info.usedBlocks, "used block count based on bitmap"),
    line("blockSize", "fs block size", String(bs), bs),
    line("imageVersion", "image version", String(h.imageVersion), h.imageVersion),
    line("cpuBits", "cpu bits", h.cpuBits === undefined ? "n/a" : String(h.cpuBits), h.cpuBits ?? null),
    line("checksumMode", "checksum mode", h.checksum, h.checksum),
    line("checksumSize", "checksum size", noChecksum ? "n/a" : String(info.checksumBytes), noChecksum ? null : info.checksumBytes),
    line("blocksPerChecksum", "checksum blocks", noChecksum ? "n/a" : String(h.blocksPerChecksum), noChecksum ? null : h.blocksPerChecksum),
    line("reseedChecksum", "checksum reseed", noChecksum ? "n/a" : h.reseedChecksum ? "True" : "False", noChecksum ? null : h.reseedChecksum),
    line("bitmapMode", "bitmap mode", h.bitmapMode, h.bitmapMode),
  ];
  if (h.headerCrc !== undefined) lines.push(line("headerCrc32", "header_crc32", hex32(h.headerCrc), hex32(h.headerCrc)));
  lines.push(line("bitmapBytes", "bitmap", `${withCommas(info.bitmapBytes)} bytes (${humanSize(info.bitmapBytes)})`, info.bitmapBytes));
  if (info.bitmapCrc !== undefined) lines.push(line("bitmapCrc32", "bitmap_crc32", hex32(info.bitmapCrc), hex32(info.bitmapCrc)));
  lines.push(line("blocksSection", "blocks_section", `at ${withCommas(info.dataStart)} ${streamWhere(info)}`, info.dataStart));
  return lines;
}

function ntfscloneLines(info: NtfscloneInfo): InfoLine[] {
  const h = info.header;
  const cs = h.clusterSize;
  const version = `${h.majorVersion}.${h.minorVersion}`;
  const scanned = info.scannedClusters;
  // only 10.x headers store offset_to_image_data
  const oldFormat = h.storedDataOffset === undefined ? "old format (before 10.0)" : undefined;
  return [
    line("imageVersion", "image version", version, version, oldFormat),
    line("clusterSize", "cluster size", String(cs), cs),
    line("nrClusters", "volume clusters", withCommas(h.nrClusters), h.nrClusters),
    line("volumeSize", "volume size", sizeText(h.nrClusters * cs), h.nrClusters * cs),
    line("deviceSize", "device size", sizeText(h.deviceSize), h.deviceSize),
    line("inuse", "inuse", countWithSize(h.inuse, cs), h.inuse, "used cluster count based on the header"),
    scanned === undefined
      ? line("usedClusters", "used clusters", "n/a", null, "known after the data of a pipe is read")
      : line("usedClusters", "used clusters", countWithSize(scanned, cs), scanned, "clusters in the image, backup boot sector's included"),
    line("dataOffset", "offset_to_data", `${withCommas(h.dataOffset)} ${streamWhere(info)}`, h.dataOffset),
    line("restoredSize", "restored size", sizeText(info.deviceSize), info.deviceSize, "as ntfsclone --restore-image -O writes it"),
  ];
}

function partimageLines(info: PartimageInfo): InfoLine[] {
  const { volumeHeader: volume, mainHeader: main, localHeader: local } = info;
  const bs = local.blockSize;
  const system = `${main.uname.sysname} ${main.uname.release} ${main.uname.machine}`.trim();
  const identificator = `0x${volume.identificator.toString(16).padStart(16, "0")}`;
  const where = info.compression.length ? `of the ${info.compression.join("+")}-decompressed volumes` : "of the volumes joined";
  return [
    line("imageFormat", "image format", volume.version, volume.version),
    line("partimageVersion", "partimage", main.version, main.version, "version in the main header"),
    line("fileSystem", "file system", main.fileSystem, main.fileSystem),
    line("partitionSize", "partition size", sizeText(main.partitionSize), main.partitionSize),
    line("originalDevice", "original device", main.originalDevice, main.originalDevice),
    line("description", "description", main.description || "(none)", main.description),
    line("label", "label", local.label || "(none)", local.label),
    line("created", "created", main.created, main.created, "local time of the saving machine"),
    line("hostname", "hostname", main.hostname, main.hostname),
    line("system", "system", system, system),
    line("compressionMode", "compression mode", PARTIMAGE_COMPRESSION_MODES[main.compression] ?? `unknown (${main.compression})`, main.compression),
    line("volumes", "volumes", String(info.pieces.length), info.pieces.length),
    line("identificator", "identificator", identificator, identificator),
    line("mbrCount", "MBRs saved", String(main.mbrCount), main.mbrCount),
    line("blockSize", "block size", String(bs), bs),
    line("totalBlocks", "total blocks", withCommas(local.blocksCount), local.blocksCount),
    line("headerUsedBlocks", "used blocks", countWithSize(local.usedBlocks, bs), local.usedBlocks, "used block count based on the header"),
    line("usedBlocks", "used in bitmap", countWithSize(info.usedBlocks, bs), info.usedBlocks, "used block count based on bitmap"),
    line("badBlocks", "bad blocks", withCommas(local.badBlocks), local.badBlocks),
    line("bitmapBytes", "bitmap", `${withCommas(local.bitmapSize)} bytes (${humanSize(local.bitmapSize)})`, local.bitmapSize),
    ...(info.fsInfo ? fsInfoLines(info.fsInfo) : []),
    line("mainHeaderChecksum", "main header sum", hex32(main.checksum), hex32(main.checksum)),
    line("localHeaderChecksum", "local header sum", hex32(local.checksum), hex32(local.checksum)),
    line("infoChecksum", "fs info sum", hex32(info.fsInfoChecksum), hex32(info.fsInfoChecksum)),
    line("blocksSection", "blocks_section", `at ${withCommas(info.dataStart)} ${where}`, info.dataStart),
  ];
}

/** Labels of partimage's file-system info block, in print order; the --json key is the prefix and the field's name. */
const FS_INFO_LABELS: { [F in PartimageFsInfo as F["fs"]]: { prefix: string; labels: { [K in Exclude<keyof F, "fs">]: string } } } = {
  ext2: {
    prefix: "ext2",
    labels: {
      groups: "ext2 groups",
      firstBlock: "ext2 first block",
      blockSize: "ext2 block size",
      blocksPerGroup: "ext2 blocks/group",
      featureCompat: "ext2 compat",
      featureIncompat: "ext2 incompat",
      featureRoCompat: "ext2 ro_compat",
      revLevel: "ext2 revision",
      uuid: "ext2 uuid",
    },
  },
  fat: {
    prefix: "fat",
    labels: {
      totalSectors: "fat sectors",
      clusters: "fat clusters",
      sectorsPerFat: "fat sectors/FAT",
      usedClusters: "fat used clusters",
      bytesPerSector: "fat bytes/sector",
      sectorsPerCluster: "fat sectors/clus",
      count: "fat FATs",
    },
  },
  ntfs: { prefix: "ntfs", labels: { totalSectors: "ntfs sectors", mftLcn: "ntfs $MFT lcn", clusterSize: "ntfs cluster size", bytesPerSector: "ntfs bytes/sector" } },
  reiserfs: { prefix: "reiser", labels: { version: "reiserfs version" } },
};

/** feature masks, printed in hex */
const FS_INFO_MASKS = new Set(["featureCompat", "featureIncompat", "featureRoCompat"]);

function fsInfoLines(fs: PartimageFsInfo): InfoLine[] {
  const { prefix, labels } = FS_INFO_LABELS[fs.fs];
  return Object.entries(labels).map(([field, label]) => {
    const key = `${prefix}${field[0]!.toUpperCase()}${field.slice(1)}`;
    const value = fs[field as keyof typeof fs] as number | string;
    if (typeof value === "string") return line(key, label, value, value);
    return FS_INFO_MASKS.has(field) ? line(key, label, hex32(value), hex32(value)) : line(key, label, withCommas(value), value);
  });
}

function formatLines(info: ImageInfo): InfoLine[] {
  switch (info.format) {
    case "partclone":
      return partcloneLines(info);
    case "ntfsclone":
      return ntfscloneLines(info);
    case "partimage":
      return partimageLines(info);
  }
}

const TITLES: Record<ImageInfo["format"], string> = {
  partclone: "Partclone Header",
  partimage: "Partimage Header",
  ntfsclone: "Ntfsclone Header",
};

/** `imgtool info` of an image, as text: partclone.info's layout for partclone, the same style for the others. */
export function imageInfoText(info: ImageInfo): string {
  const title = TITLES[info.format];
  const lines = [title, "=".repeat(title.length)];
  for (const f of formatLines(info)) lines.push(`${f.label.padEnd(17)} ${f.note ? `${f.text.padEnd(21)} ${f.note}` : f.text}`.trimEnd());
  lines.push(`${"compression".padEnd(17)} ${info.compression.length ? info.compression.join(" inside ") : "none"}`);
  lines.push(`${(info.pieces.length > 1 ? "pieces" : "file").padEnd(17)} ${info.pieces.join(" ")}`);
  return `${lines.join("\n")}\n`;
}

/** `imgtool info --json` of an image: the facts every format has, and the format's header lines by key. */
export function imageInfoJson(info: ImageInfo): Record<string, unknown> {
  const header: Record<string, unknown> = {};
  for (const f of formatLines(info)) header[f.key] = f.value;
  const { format, fsType, blockSize, totalBlocks, usedBlocks, deviceSize, checksum, compression, pieces } = info;
  return { format, fsType, blockSize, totalBlocks, usedBlocks, deviceSize, checksum, compression, pieces, header };
}
