import { ImageError } from "../errors.ts";
import type { Volume } from "../volume/volume.ts";

export type NodeKind = "file" | "directory" | "symlink" | "char-device" | "block-device" | "fifo" | "socket";

/** The kind of node a POSIX mode's file-type bits (S_IFMT) name; undefined for none. */
export function kindOfMode(mode: number): NodeKind | undefined {
  switch (mode & 0o170000) {
    case 0o100000: return "file";
    case 0o040000: return "directory";
    case 0o120000: return "symlink";
    case 0o020000: return "char-device";
    case 0o060000: return "block-device";
    case 0o010000: return "fifo";
    case 0o140000: return "socket";
    default: return undefined;
  }
}

/** Seconds and nanoseconds since the epoch, as the file system stores them (no float rounding). */
export interface Timestamp {
  sec: number;
  nsec: number;
}

/** One file-system object, as `ls -l` and `extract` need it. */
export interface FsNode {
  /** the file system's own number for it (inode, MFT record, FAT directory-entry position) */
  id: number;
  kind: NodeKind;
  /** permission bits (07777); file systems without them give what Linux's driver shows */
  mode: number;
  uid: number;
  gid: number;
  size: number;
  /** hard links, where the file system counts them */
  links: number;
  mtime: Timestamp;
  atime: Timestamp;
  ctime?: Timestamp;
  /** device number for char/block devices */
  rdev?: { major: number; minor: number };
}

/** One extended attribute: its full name with the namespace prefix, and its value. */
export interface Xattr {
  name: Uint8Array;
  value: Uint8Array;
}

/** A directory entry: a name as the bytes the file system holds (UTF-8 for NTFS/FAT long names). */
export interface DirEntry {
  name: Uint8Array;
  node: FsNode;
  /** the entry names something unreadable (a bad inode): `node` holds only what the entry says */
  damage?: FsError;
}

/**
 * Damage inside a file system: the volume offset of the bad structure and what is wrong with it.
 * Readers do not know paths; the walker (ls, extract) names the path with `describeFsError`.
 */
export class FsError extends ImageError {
  constructor(
    readonly volumeName: string,
    readonly volumeOffset: number | undefined,
    readonly problem: string,
  ) {
    super({ file: volumeName, offset: volumeOffset }, problem);
    this.name = "FsError";
  }
}

/**
 * A read-only file system inside a Volume. Paths are byte strings split on "/"; nothing here
 * follows a symlink on its own (the caller decides). Damage throws FsError naming the path.
 */
export interface FileSystem {
  /** "ext4", "vfat", "ntfs", ... */
  readonly type: string;
  readonly volume: Volume;
  root(): FsNode;
  /** the node a path names, walking from the root without following symlinks; undefined if absent */
  lookup(path: Uint8Array): FsNode | undefined;
  /**
   * The entries of a directory, without "." and "..". Damage to part of it (one bad directory
   * block) goes to `onDamage` and the rest is still listed; without `onDamage` it throws.
   */
  list(dir: FsNode, onDamage?: (e: FsError) => void): Iterable<DirEntry>;
  /** file bytes [offset, offset + into.length) into `into`; returns how many (short only at the end) */
  readFile(file: FsNode, offset: number, into: Uint8Array): number;
  /** the data (not hole) runs of a file, ascending, for sparse extraction */
  fileExtents(file: FsNode): Iterable<{ offset: number; length: number }>;
  readlink(link: FsNode): Uint8Array;
  /** what the user should know before trusting the tree (a journal not replayed), one line each */
  readonly warnings?: readonly string[];
  /** extra named data streams (NTFS alternate data streams), listed by `ls -l` */
  streams?(file: FsNode): Iterable<{ name: Uint8Array; size: number }>;
  /** extended attributes ("user.comment", "security.selinux", ...), listed by `ls -l` and restored by `extract` */
  xattrs?(node: FsNode): Iterable<Xattr>;
  close(): void;
}
