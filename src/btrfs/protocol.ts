/** Numbers of the btrfs send stream format (btrfs-progs kernel-shared/send.h, protocol v1–v3). */

export const STREAM_MAGIC = "btrfs-stream";
/** magic with its NUL (13 bytes), then the le32 version */
export const STREAM_HEADER_BYTES = 17;
/** le32 length of the attributes, le16 command, le32 crc32c */
export const COMMAND_HEADER_BYTES = 10;
/** the newest protocol this parser knows */
export const MAX_PROTOCOL_VERSION = 3;

export const Cmd = {
  SUBVOL: 1,
  SNAPSHOT: 2,
  MKFILE: 3,
  MKDIR: 4,
  MKNOD: 5,
  MKFIFO: 6,
  MKSOCK: 7,
  SYMLINK: 8,
  RENAME: 9,
  LINK: 10,
  UNLINK: 11,
  RMDIR: 12,
  SET_XATTR: 13,
  REMOVE_XATTR: 14,
  WRITE: 15,
  CLONE: 16,
  TRUNCATE: 17,
  CHMOD: 18,
  CHOWN: 19,
  UTIMES: 20,
  END: 21,
  UPDATE_EXTENT: 22,
  // v2
  FALLOCATE: 23,
  FILEATTR: 24,
  ENCODED_WRITE: 25,
  // v3
  ENABLE_VERITY: 26,
} as const;

export const Attr = {
  UUID: 1,
  CTRANSID: 2,
  INO: 3,
  SIZE: 4,
  MODE: 5,
  UID: 6,
  GID: 7,
  RDEV: 8,
  CTIME: 9,
  MTIME: 10,
  ATIME: 11,
  OTIME: 12,
  XATTR_NAME: 13,
  XATTR_DATA: 14,
  PATH: 15,
  PATH_TO: 16,
  PATH_LINK: 17,
  FILE_OFFSET: 18,
  /** from v2 on: no length field, it runs to the end of the command */
  DATA: 19,
  CLONE_UUID: 20,
  CLONE_CTRANSID: 21,
  CLONE_PATH: 22,
  CLONE_OFFSET: 23,
  CLONE_LEN: 24,
  // v2
  FALLOCATE_MODE: 25,
  FILEATTR: 26,
  UNENCODED_FILE_LEN: 27,
  UNENCODED_LEN: 28,
  UNENCODED_OFFSET: 29,
  COMPRESSION: 30,
  ENCRYPTION: 31,
  // v3
  VERITY_ALGORITHM: 32,
  VERITY_BLOCK_SIZE: 33,
  VERITY_SALT_DATA: 34,
  VERITY_SIG_DATA: 35,
} as const;

export const MAX_ATTR = 35;

/** encoded_write compression values (btrfs-progs kernel-shared/uapi/btrfs.h BTRFS_ENCODED_IO_COMPRESSION_*) */
export const EncodedCompression = {
  NONE: 0,
  ZLIB: 1,
  ZSTD: 2,
  LZO_4K: 3,
  LZO_8K: 4,
  LZO_16K: 5,
  LZO_32K: 6,
  LZO_64K: 7,
} as const;

/** The command names btrfs receive --dump prints, by number. */
export const COMMAND_NAMES: readonly string[] = (() => {
  const names: string[] = [];
  for (const [name, n] of Object.entries(Cmd)) names[n] = name.toLowerCase();
  return names;
})();

export const ATTRIBUTE_NAMES: readonly string[] = (() => {
  const names: string[] = [];
  for (const [name, n] of Object.entries(Attr)) names[n] = name.toLowerCase();
  return names;
})();
