import fs from "node:fs";
import path from "node:path";
import { ImageError, UsageError, describeLocation, printable } from "../errors.ts";
import {
  libc,
  libcError,
  O_CLOEXEC,
  O_CREAT,
  O_DIRECTORY,
  O_EXCL,
  O_NOCTTY,
  O_NOFOLLOW,
  O_NONBLOCK,
  O_RDONLY,
  O_WRONLY,
  S_IFDIR,
  S_IFIFO,
  S_IFLNK,
  S_IFMT,
  S_IFREG,
  S_IFSOCK,
} from "../../native/libc.ts";
import {
  AT_REMOVEDIR,
  chmod,
  chmodAt,
  chownAt,
  type EntryStat,
  linkAt,
  listXattrs,
  lsetxattr,
  lutimesNs,
  mkdirAt,
  mknod,
  mknodAt,
  openAt,
  removexattrAt,
  renameAt,
  setxattrAt,
  statAt,
  symlinkAt,
  unlinkAt,
  utimensAt,
} from "../../native/libc-at.ts";
import { closeFd, FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, FICLONE, SEEK_DATA, SEEK_HOLE } from "../../native/libc-file.ts";
import { DecompressError, decompressExtent, MAX_COMPRESSED, MAX_UNCOMPRESSED } from "./decompress.ts";
import { uuidText } from "./dump.ts";
import { EncodedCompression } from "./protocol.ts";
import type { SendCommand, SendStreamParser, Timespec, U64 } from "./stream.ts";
import { PathRefusal, type Place, SubvolumeDir } from "./subvolume-dir.ts";

/** Which received subvolume (by the sender's uuid) lives in which directory of DIR. */
export const RECEIVED_INDEX = ".imgtool-received.json";
const INDEX_FORMAT = "imgtool-received/1";

export interface ReceiveOptions {
  /** called when a subvolume or snapshot starts, as `btrfs receive` prints "At subvol NAME" */
  onSubvolume?: (kind: "subvol" | "snapshot", name: string) => void;
  /** one line, for what a plain directory cannot do (fs-verity) */
  warn?: (line: string) => void;
  /** now and then: how many bytes of the stream have been applied */
  onProgress?: (streamBytes: number) => void;
}

export interface ReceivedSubvolume {
  /** directory name in DIR, as bytes */
  name: Uint8Array;
  receivedUuid: string;
  ctransid: string;
}

export interface ReceiveResult {
  /** subvolumes completed by an end command or the end of the input, in order */
  subvolumes: ReceivedSubvolume[];
  commands: number;
  /** xattrs the destination file system refused (each warned once per file through `warn`), and on how many files */
  refusedXattrs: { count: number; files: number };
}

/**
 * Apply a btrfs send stream to an ordinary directory, as `btrfs receive -f STREAM DIR` does on
 * btrfs: each subvolume becomes DIR/<name>, a snapshot starts as a copy of its parent (found
 * in DIR/.imgtool-received.json by the parent's received uuid). Every path is resolved from the
 * subvolume's directory fd as the directory is at that command (SubvolumeDir): nothing outside
 * DIR is read or written, whatever the stream renames, links or swaps.
 */
export function receiveSendStream(parser: SendStreamParser, dir: string, options: ReceiveOptions = {}): ReceiveResult {
  const receiver = new Receiver(parser, dir, options);
  try {
    let applied = 0;
    for (const command of parser) {
      receiver.apply(command);
      if ((++applied & 1023) === 0) options.onProgress?.(parser.reader.position);
    }
    receiver.finishSubvolume();
    options.onProgress?.(parser.reader.position);
  } catch (e) {
    if (e instanceof Error) e.message = `${e.message}; ${receiver.progress()}`;
    throw e;
  } finally {
    receiver.close();
  }
  return { subvolumes: receiver.finished, commands: parser.count, refusedXattrs: receiver.refusedXattrs };
}

// ---- copying file ranges: reflink where the file system can, holes kept where it cannot ----

const COPY_BUFFER = 1 << 20;
let copyBuffer: Buffer | undefined;

/** Next data offset at or after `from` (SEEK_DATA), or `end` when only a hole remains. */
function nextData(fd: number, from: number, end: number): number {
  const at = Number(libc().lseek(fd, from, SEEK_DATA));
  return at < 0 || at > end ? end : at;
}

function nextHole(fd: number, from: number, end: number): number {
  const at = Number(libc().lseek(fd, from, SEEK_HOLE));
  return at < 0 || at > end ? end : at;
}

/** Copy bytes with read and pwrite; backwards when the ranges overlap in one file and the target is after the source. */
function copyBytes(src: number, srcOffset: number, dst: number, dstOffset: number, length: number, backwards: boolean): void {
  copyBuffer ??= Buffer.allocUnsafe(COPY_BUFFER);
  const buf = copyBuffer;
  let done = 0;
  while (done < length) {
    const n = Math.min(COPY_BUFFER, length - done);
    const at = backwards ? length - done - n : done;
    const got = fs.readSync(src, buf, 0, n, srcOffset + at);
    if (got === 0) return;
    fs.writeSync(dst, buf, 0, got, dstOffset + at);
    done += got;
  }
}

const copyOffsets = new BigInt64Array(2);

/** copy_file_range (a reflink on btrfs and XFS), falling back to read and write where it cannot. */
function copyData(src: number, srcOffset: number, dst: number, dstOffset: number, length: number, sameFile: boolean): void {
  let done = 0;
  while (done < length) {
    copyOffsets[0] = BigInt(srcOffset + done);
    copyOffsets[1] = BigInt(dstOffset + done);
    const n = Number(libc().copy_file_range(src, copyOffsets, dst, copyOffsets.subarray(1), length - done, 0));
    if (n === 0) return;
    if (n < 0) {
      const overlapping = sameFile && dstOffset + done > srcOffset + done && dstOffset + done < srcOffset + length;
      copyBytes(src, srcOffset + done, dst, dstOffset + done, length - done, overlapping);
      return;
    }
    done += n;
  }
}

/**
 * What BTRFS_IOC_CLONE_RANGE does to the bytes: [dstOffset, dstOffset+length) of dst becomes
 * [srcOffset, ...) of src, holes included; the file grows to cover the range.
 */
function cloneRange(src: number, srcOffset: number, dst: number, dstOffset: number, length: number, sameFile: boolean): void {
  const srcSize = fs.fstatSync(src).size;
  const end = Math.min(srcOffset + length, srcSize);
  let at = srcOffset;
  while (at < end) {
    const data = nextData(src, at, end);
    if (data > at) punchOrZero(dst, dstOffset + (at - srcOffset), data - at);
    if (data >= end) break;
    const hole = nextHole(src, data, end);
    copyData(src, data, dst, dstOffset + (data - srcOffset), hole - data, sameFile);
    at = hole;
  }
  const wanted = dstOffset + length;
  if (fs.fstatSync(dst).size < wanted) fs.ftruncateSync(dst, wanted);
}

/** Make a range read as zeros: a hole where the file system can punch one, written zeros where not. */
function punchOrZero(fd: number, offset: number, length: number): void {
  if (libc().fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length) === 0) return;
  const size = fs.fstatSync(fd).size;
  const end = Math.min(offset + length, size);
  const zeros = Buffer.alloc(Math.min(COPY_BUFFER, Math.max(end - offset, 0)));
  for (let at = offset; at < end; at += zeros.length) fs.writeSync(fd, zeros, 0, Math.min(zeros.length, end - at), at);
}

/** A whole regular file: one reflink where the file system can, else its data extents (holes stay holes). */
function copyFileContents(src: number, dst: number, size: number): void {
  if (libc().ioctl(dst, FICLONE, src) === 0) return;
  for (let at = 0; at < size; ) {
    const data = nextData(src, at, size);
    if (data >= size) break;
    const hole = nextHole(src, data, size);
    copyData(src, data, dst, data, hole - data, false);
    at = hole;
  }
  fs.ftruncateSync(dst, size);
}

// ---- a snapshot's starting point: a copy of its parent ----

/**
 * Copy a received subvolume to a new directory with everything `btrfs receive` can set: modes
 * (set-id, sticky), owners, xattrs, atime and mtime to the nanosecond, hard links, symlinks,
 * devices, fifos, sockets, holes; file data is reflinked where the file system can.
 */
function copyTree(from: Buffer, to: Buffer): void {
  const linked = new Map<string, Buffer>();
  const directories: [source: Buffer, target: Buffer, fs.BigIntStats][] = [];
  const copyMetadata = (target: Buffer, st: fs.BigIntStats, source: Buffer) => {
    fs.lchownSync(target, Number(st.uid), Number(st.gid));
    const mode = Number(st.mode);
    if ((mode & S_IFMT) !== S_IFLNK) chmod(target, mode & 0o7777);
    for (const [name, value] of listXattrs(source)) lsetxattr(target, name, value);
  };
  const walk = (source: Buffer, target: Buffer) => {
    const st = fs.lstatSync(source, { bigint: true });
    directories.push([source, target, st]);
    for (const name of fs.readdirSync(source, { encoding: "buffer" }) as Uint8Array[]) {
      const s = Buffer.concat([source, SLASH, name]);
      const t = Buffer.concat([target, SLASH, name]);
      const est = fs.lstatSync(s, { bigint: true });
      const kind = Number(est.mode) & S_IFMT;
      if (kind === S_IFDIR) {
        fs.mkdirSync(t, 0o700);
        walk(s, t);
        continue;
      }
      const inode = `${est.dev}:${est.ino}`;
      const first = est.nlink > 1n ? linked.get(inode) : undefined;
      if (first) {
        fs.linkSync(first, t);
        continue;
      }
      if (est.nlink > 1n) linked.set(inode, t);
      if (est.isFile()) {
        const src = fs.openSync(s, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW);
        try {
          const dst = fs.openSync(t, fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_EXCL, 0o600);
          try {
            copyFileContents(src, dst, Number(est.size));
          } finally {
            fs.closeSync(dst);
          }
        } finally {
          fs.closeSync(src);
        }
      } else if (est.isSymbolicLink()) {
        fs.symlinkSync(fs.readlinkSync(s, { encoding: "buffer" }), t);
      } else {
        mknod(t, kind, est.rdev);
      }
      copyMetadata(t, est, s);
      lutimesNs(t, timespecOf(est.atimeNs), timespecOf(est.mtimeNs));
    }
  };
  fs.mkdirSync(to, 0o700);
  walk(from, to);
  // a directory's times last: creating its entries changed them
  for (const [source, target, st] of directories) {
    copyMetadata(target, st, source);
    lutimesNs(target, timespecOf(st.atimeNs), timespecOf(st.mtimeNs));
  }
}

function timespecOf(ns: bigint): Timespec {
  const sec = ns / 1_000_000_000n;
  const nsec = ns - sec * 1_000_000_000n;
  return nsec < 0n ? { sec: sec - 1n, nsec: Number(nsec + 1_000_000_000n) } : { sec, nsec: Number(nsec) };
}

const SLASH = Buffer.from("/");


// ---- DIR/.imgtool-received.json ----

interface IndexEntry {
  /** the directory name when it is valid UTF-8 */
  name?: string;
  /** otherwise its bytes in hex */
  nameHex?: string;
  receivedUuid: string;
  ctransid: string;
  parentUuid?: string;
}

function entryName(e: IndexEntry): Buffer {
  return e.name !== undefined ? Buffer.from(e.name, "utf8") : Buffer.from(e.nameHex ?? "", "hex");
}

class ReceivedIndex {
  private readonly file: string;
  readonly entries: IndexEntry[];

  constructor(readonly dir: string) {
    this.file = path.join(dir, RECEIVED_INDEX);
    this.entries = this.load();
  }

  private load(): IndexEntry[] {
    let text: string;
    try {
      text = fs.readFileSync(this.file, "utf8");
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === "ENOENT") return [];
      throw e;
    }
    const parsed = JSON.parse(text) as { format?: string; subvolumes?: IndexEntry[] };
    if (parsed.format !== INDEX_FORMAT || !Array.isArray(parsed.subvolumes)) {
      throw new UsageError(`${this.file}: not an imgtool received-subvolume index (format ${JSON.stringify(parsed.format)})`);
    }
    return parsed.subvolumes;
  }

  /** The directory received from the sender's subvolume `uuid`, preferring the same ctransid; the newest first. */
  find(uuid: string, ctransid: string): Buffer | undefined {
    let fallback: Buffer | undefined;
    for (let i = this.entries.length - 1; i >= 0; i--) {
      const e = this.entries[i]!;
      if (e.receivedUuid !== uuid) continue;
      const name = entryName(e);
      if (!fs.existsSync(Buffer.concat([Buffer.from(this.dir), SLASH, name]))) continue;
      if (e.ctransid === ctransid) return name;
      fallback ??= name;
    }
    return fallback;
  }

  add(name: Uint8Array, receivedUuid: string, ctransid: string, parentUuid?: string): void {
    const utf8 = Buffer.from(name).toString("utf8");
    const named = Buffer.from(utf8, "utf8").equals(name) ? { name: utf8 } : { nameHex: Buffer.from(name).toString("hex") };
    const entry: IndexEntry = { ...named, receivedUuid, ctransid, ...(parentUuid ? { parentUuid } : {}) };
    this.entries.push(entry);
    const temporary = `${this.file}.tmp`;
    fs.writeFileSync(temporary, `${JSON.stringify({ format: INDEX_FORMAT, subvolumes: this.entries }, null, 1)}\n`);
    fs.renameSync(temporary, this.file);
  }
}

// ---- the receiver ----

interface CurrentSubvolume {
  name: Buffer;
  root: SubvolumeDir;
  receivedUuid: string;
  ctransid: string;
  parentUuid?: string;
  commands: number;
}

/** The file of the last write, kept open for the next one (btrfs receive does the same); known by its inode, not its path. */
interface WriteFile {
  fd: number;
  dev: bigint;
  ino: bigint;
}

const NO_PLACE_DETAIL = "a received path must stay inside its subvolume";
/** the commands that create, link, rename or remove names: after each, every path is resolved afresh */
const NAMESPACE_COMMANDS = new Set<SendCommand["type"]>(["mkfile", "mkdir", "mknod", "mkfifo", "mksock", "symlink", "rename", "link", "unlink", "rmdir"]);
const WRITE_FLAGS = O_WRONLY | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY;
const READ_FLAGS = O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY;
/** uid_t and gid_t are 32 bits, and (uid_t)-1 means "leave unchanged" to chown */
const MAX_ID = 0xfffffffe;

class Receiver {
  readonly finished: ReceivedSubvolume[] = [];
  /** xattrs the destination file system refused (ENOSPC, E2BIG, EOPNOTSUPP), and on how many files */
  readonly refusedXattrs = { count: 0, files: 0 };
  private readonly index: ReceivedIndex;
  private readonly dirBytes: Buffer;
  private readonly dirFd: number;
  private current: CurrentSubvolume | undefined;
  private write: WriteFile | undefined;
  private command: SendCommand | undefined;
  /** per file (dev:ino) whose xattrs were refused: the names refused, so that their removal is not an error */
  private readonly refusedXattrNames = new Map<string, Set<string>>();
  /** the decoded bytes of one encoded_write: at most BTRFS_MAX_UNCOMPRESSED, reused */
  private readonly unencoded = new Uint8Array(MAX_UNCOMPRESSED);

  constructor(
    private readonly parser: SendStreamParser,
    dir: string,
    private readonly options: ReceiveOptions,
  ) {
    let st: fs.Stats;
    try {
      st = fs.statSync(dir);
    } catch {
      throw new UsageError(`${dir}: no such directory`);
    }
    if (!st.isDirectory()) throw new UsageError(`${dir}: not a directory`);
    this.index = new ReceivedIndex(dir);
    this.dirBytes = Buffer.from(path.resolve(dir));
    this.dirFd = fs.openSync(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  }

  progress(): string {
    const done = this.finished.length ? `received ${this.finished.map((s) => printable(s.name)).join(", ")}; ` : "";
    const partial = this.current ? `${printable(this.current.name)} is incomplete after ${this.current.commands} commands` : "no subvolume in progress";
    return `${done}${partial} (${this.parser.count} commands read)`;
  }

  close(): void {
    this.closeWriteFile();
    this.current?.root.close();
    this.current = undefined;
    fs.closeSync(this.dirFd);
  }

  /** An ImageError at the current command: the stream asks for something that cannot be done. */
  private refuse(what: string, detail?: string): never {
    const cmd = this.command!;
    throw new ImageError(this.parser.reader.locate(cmd.offset), `command #${cmd.index} (${commandName(cmd)}): ${what}`, detail);
  }

  /** A failed file operation, named with the command and its place in the stream. */
  private failed(e: unknown): never {
    if (e instanceof ImageError || e instanceof UsageError) throw e;
    const cmd = this.command!;
    const err = e as NodeJS.ErrnoException;
    const where = describeLocation(this.parser.reader.locate(cmd.offset));
    const wrapped = new Error(`${where}: command #${cmd.index} (${commandName(cmd)}): ${err.message}`) as NodeJS.ErrnoException;
    wrapped.code = err.code;
    throw wrapped;
  }

  private subvolume(): CurrentSubvolume {
    if (!this.current) this.refuse("no subvol or snapshot command before it");
    return this.current;
  }

  /** Run `body` at the place of `relative` in `root` (the current subvolume by default), as it is now. */
  private at<T>(relative: Uint8Array, body: (place: Place) => T, root = this.subvolume().root, what = ""): T {
    try {
      return root.at(relative, body);
    } catch (e) {
      if (e instanceof PathRefusal) this.refuse(`${what}${e.message}: '${printable(relative)}'`, NO_PLACE_DETAIL);
      throw e;
    }
  }

  /** The last component of a place that must not be the subvolume root (which is never removed, renamed or replaced). */
  private entry(place: Place, verb: string): Uint8Array {
    if (place.name === null) this.refuse(`the subvolume root cannot be ${verb}: '${printable(place.path)}'`, NO_PLACE_DETAIL);
    return place.name;
  }

  private offset(value: U64, what: string): number {
    if (typeof value === "bigint" || value > Number.MAX_SAFE_INTEGER) this.refuse(`${what} ${value} is too large`);
    return value;
  }

  private id(value: U64, what: string): number {
    if (typeof value === "bigint" || value > MAX_ID) this.refuse(`${what} ${value} is out of range (0 to ${MAX_ID})`);
    return value;
  }

  apply(command: SendCommand): void {
    this.command = command;
    if (this.current) this.current.commands++;
    try {
      this.dispatch(command);
    } catch (e) {
      this.failed(e);
    }
  }

  private dispatch(cmd: SendCommand): void {
    if (NAMESPACE_COMMANDS.has(cmd.type)) {
      try {
        return this.applyCommand(cmd);
      } finally {
        this.current?.root.changed();
      }
    }
    return this.applyCommand(cmd);
  }

  private applyCommand(cmd: SendCommand): void {
    switch (cmd.type) {
      case "subvol":
        return this.startSubvolume(cmd.path, uuidText(cmd.uuid), String(cmd.ctransid));
      case "snapshot":
        return this.startSubvolume(cmd.path, uuidText(cmd.uuid), String(cmd.ctransid), {
          uuid: uuidText(cmd.parentUuid),
          ctransid: String(cmd.parentCtransid),
        });
      case "mkfile":
        return this.at(cmd.path, (place) => {
          const name = this.entry(place, "replaced");
          this.closeWriteFile();
          // kept open: its data, size and mode come next (after a rename from its orphan name)
          this.holdWriteFile(openAt(place.dir, name, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW, 0o600, place.path));
        });
      case "mkdir":
        return this.at(cmd.path, (place) => mkdirAt(place.dir, this.entry(place, "replaced"), 0o700, place.path));
      case "mknod":
        return this.at(cmd.path, (place) => mknodAt(place.dir, this.entry(place, "replaced"), Number(cmd.mode) & S_IFMT, cmd.rdev, place.path));
      case "mkfifo":
      case "mksock": {
        const kind = cmd.type === "mkfifo" ? S_IFIFO : S_IFSOCK;
        return this.at(cmd.path, (place) => mknodAt(place.dir, this.entry(place, "replaced"), kind | 0o600, 0, place.path));
      }
      case "symlink":
        return this.at(cmd.path, (place) => symlinkAt(cmd.target, place.dir, this.entry(place, "replaced"), place.path));
      case "rename":
        return this.at(cmd.path, (from) => {
          const fromName = this.entry(from, "renamed");
          this.at(cmd.to, (to) => renameAt(from.dir, fromName, to.dir, this.entry(to, "replaced"), from.path));
        });
      case "link":
        return this.at(cmd.path, (link) => {
          const linkName = this.entry(link, "replaced");
          this.at(cmd.target, (target) => linkAt(target.dir, this.entry(target, "linked"), link.dir, linkName, link.path));
        });
      case "unlink":
        return this.at(cmd.path, (place) => unlinkAt(place.dir, this.entry(place, "removed"), 0, place.path));
      case "rmdir":
        return this.at(cmd.path, (place) => unlinkAt(place.dir, this.entry(place, "removed"), AT_REMOVEDIR, place.path));
      case "write":
        this.writeAt(this.writeFile(cmd.path), cmd.data, this.offset(cmd.fileOffset, "offset"));
        return;
      case "encoded_write":
        return this.encodedWrite(cmd);
      case "clone":
        return this.clone(cmd);
      case "truncate":
        fs.ftruncateSync(this.writeFile(cmd.path), this.offset(cmd.size, "size"));
        return;
      case "chmod": {
        const mode = Number(cmd.mode) & 0o7777;
        // false for a symlink: Linux cannot change its mode, and chmod(2) would change what it points to
        this.at(cmd.path, (place) => chmodAt(place.dir, place.name, mode, place.path));
        return;
      }
      case "chown": {
        const uid = this.id(cmd.uid, "uid");
        const gid = this.id(cmd.gid, "gid");
        return this.at(cmd.path, (place) => chownAt(place.dir, place.name, uid, gid, place.path));
      }
      case "utimes":
        return this.at(cmd.path, (place) => utimensAt(place.dir, place.name, cmd.atime, cmd.mtime, place.path));
      case "set_xattr":
        return this.at(cmd.path, (place) => this.setXattr(place, cmd.name, cmd.data));
      case "remove_xattr":
        return this.at(cmd.path, (place) => this.removeXattr(place, cmd.name));
      case "fallocate":
        return this.fallocate(cmd.path, cmd.mode, this.offset(cmd.fileOffset, "offset"), this.offset(cmd.size, "size"));
      case "update_extent":
        // a --no-data stream: the data is not in it (btrfs receive does nothing either); the path is still checked
        return this.at(cmd.path, () => undefined);
      case "fileattr":
        // btrfs receive ignores it too: the value is btrfs inode flags, not chattr flags
        return this.at(cmd.path, () => undefined);
      case "enable_verity":
        this.at(cmd.path, () => undefined);
        this.options.warn?.(
          `command #${cmd.index} (enable_verity): fs-verity not enabled on '${printable(cmd.path)}' (a plain directory cannot hold it); going on`,
        );
        return;
      case "end":
        return this.finishSubvolume();
      case "unknown":
        // btrfs receive skips commands it does not know
        return;
    }
  }

  private startSubvolume(name: Uint8Array, receivedUuid: string, ctransid: string, parent?: { uuid: string; ctransid: string }): void {
    this.finishSubvolume();
    if (name.length === 0 || name.includes(0x2f) || name.includes(0) || (name[0] === 0x2e && (name.length === 1 || (name.length === 2 && name[1] === 0x2e)))) {
      this.refuse(`subvolume name '${printable(name)}' is not a single path component`);
    }
    const nameBytes = Buffer.from(name);
    if (nameBytes.toString("latin1").startsWith(RECEIVED_INDEX)) this.refuse(`subvolume name '${printable(name)}' is the name of imgtool's index of received subvolumes`);
    const target = Buffer.concat([this.dirBytes, SLASH, nameBytes]);
    if (statAt(this.dirFd, nameBytes, target)) throw new UsageError(`${printable(target)} already exists`);
    if (parent) {
      const parentName = this.index.find(parent.uuid, parent.ctransid);
      if (!parentName) {
        throw new UsageError(
          `cannot find the parent subvolume of snapshot '${printable(name)}' (uuid ${parent.uuid}, ctransid ${parent.ctransid}) in ${path.join(this.index.dir, RECEIVED_INDEX)}: receive the stream that made it into this directory first`,
        );
      }
      const parentPath = Buffer.concat([this.dirBytes, SLASH, parentName]);
      if (!fs.lstatSync(parentPath).isDirectory()) throw new UsageError(`${printable(parentPath)}: the parent subvolume is not a directory`);
      this.options.onSubvolume?.("snapshot", printable(name));
      copyTree(parentPath, target);
    } else {
      this.options.onSubvolume?.("subvol", printable(name));
      mkdirAt(this.dirFd, nameBytes, 0o755, target);
    }
    const root = SubvolumeDir.open(this.dirFd, nameBytes);
    this.current = { name: nameBytes, root, receivedUuid, ctransid, parentUuid: parent?.uuid, commands: 0 };
  }

  /** Record the current subvolume as received (btrfs receive sets its received uuid then). */
  finishSubvolume(): void {
    this.closeWriteFile();
    const s = this.current;
    if (!s) return;
    this.current = undefined;
    s.root.close();
    this.index.add(s.name, s.receivedUuid, s.ctransid, s.parentUuid);
    this.finished.push({ name: s.name, receivedUuid: s.receivedUuid, ctransid: s.ctransid });
  }

  private closeWriteFile(): void {
    if (!this.write) return;
    closeFd(this.write.fd);
    this.write = undefined;
  }

  private holdWriteFile(fd: number): number {
    const st = statAt(fd, null, EMPTY)!;
    this.write = { fd, dev: st.dev, ino: st.ino };
    return fd;
  }

  /**
   * Open the regular file at `place` (never a symlink, device, fifo or socket: their open has
   * effects outside DIR), checked before the open and again on the fd.
   */
  private openRegular(place: Place, flags: number): { fd: number; st: EntryStat } {
    if (place.name === null) throw new PathRefusal("the subvolume root is not a regular file");
    const st = statAt(place.dir, place.name, place.path);
    if (!st) throw errnoError("ENOENT", `no such file '${printable(place.path)}'`);
    if ((st.mode & S_IFMT) !== S_IFREG) throw new PathRefusal(`not a regular file (${kindName(st.mode)})`);
    if (this.write && this.write.ino === st.ino && this.write.dev === st.dev && flags === WRITE_FLAGS) return { fd: this.write.fd, st };
    const fd = openAt(place.dir, place.name, flags, 0, place.path);
    const opened = statAt(fd, null, place.path)!;
    if ((opened.mode & S_IFMT) !== S_IFREG) {
      closeFd(fd);
      throw new PathRefusal(`not a regular file (${kindName(opened.mode)})`);
    }
    return { fd, st: opened };
  }

  /** The open regular file at `relative`, resolved now (the one held open when it is the same inode). */
  private writeFile(relative: Uint8Array): number {
    return this.at(relative, (place) => {
      const { fd } = this.openRegular(place, WRITE_FLAGS);
      if (this.write?.fd === fd) return fd;
      this.closeWriteFile();
      return this.holdWriteFile(fd);
    });
  }

  private writeAt(fd: number, data: Uint8Array, position: number): void {
    for (let done = 0; done < data.length; ) done += fs.writeSync(fd, data, done, data.length - done, position + done);
  }

  /**
   * An xattr the destination file system cannot hold (ext4 keeps about 4 KB per inode; some
   * file systems none) does not stop the receive: warned once per file, counted, reported at the end.
   */
  private setXattr(place: Place, name: Uint8Array, value: Uint8Array): void {
    try {
      setxattrAt(place.dir, place.name, name, value, place.path);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code !== "ENOSPC" && code !== "E2BIG" && code !== "EOPNOTSUPP" && code !== "ENOTSUP" && code !== "ERANGE") throw e;
      const key = this.fileKey(place);
      let names = this.refusedXattrNames.get(key);
      if (!names) {
        names = new Set();
        this.refusedXattrNames.set(key, names);
        this.refusedXattrs.files++;
        this.options.warn?.(
          `command #${this.command!.index} (set_xattr): '${printable(place.path)}': the file system refused the xattr '${printable(name)}' (${value.length} bytes, ${code}); going on (further refused xattrs of this file are only counted)`,
        );
      }
      names.add(Buffer.from(name).toString("latin1"));
      this.refusedXattrs.count++;
    }
  }

  private removeXattr(place: Place, name: Uint8Array): void {
    try {
      removexattrAt(place.dir, place.name, name, place.path);
    } catch (e) {
      // never set because the file system refused it: nothing to remove
      if ((e as NodeJS.ErrnoException).code === "ENODATA" && this.refusedXattrNames.get(this.fileKey(place))?.delete(Buffer.from(name).toString("latin1"))) return;
      throw e;
    }
  }

  private fileKey(place: Place): string {
    const st = statAt(place.dir, place.name, place.path);
    return st ? `${st.dev}:${st.ino}` : `path:${Buffer.from(place.path).toString("latin1")}`;
  }

  private encodedWrite(cmd: Extract<SendCommand, { type: "encoded_write" }>): void {
    if (cmd.encryption !== 0) this.refuse(`encryption ${cmd.encryption} is not supported`, "btrfs receive cannot either");
    const offset = this.offset(cmd.fileOffset, "offset");
    const fileLength = this.offset(cmd.unencodedFileLen, "unencoded_file_len");
    const unencodedLength = this.offset(cmd.unencodedLen, "unencoded_len");
    const unencodedOffset = this.offset(cmd.unencodedOffset, "unencoded_offset");
    // every length checked before anything is decoded: the buffer is bounded, as the kernel bounds an extent
    if (unencodedLength > MAX_UNCOMPRESSED) this.refuse(`unencoded_len ${unencodedLength} exceeds ${MAX_UNCOMPRESSED}`, "BTRFS_MAX_UNCOMPRESSED");
    if (cmd.data.length > MAX_COMPRESSED) this.refuse(`${cmd.data.length} bytes of encoded data exceed ${MAX_COMPRESSED}`, "BTRFS_MAX_COMPRESSED");
    if (unencodedOffset + fileLength > unencodedLength) {
      this.refuse(`unencoded_offset ${unencodedOffset} + unencoded_file_len ${fileLength} exceed unencoded_len ${unencodedLength}`);
    }
    const fd = this.writeFile(cmd.path);
    let unencoded: Uint8Array;
    let produced: number;
    if (cmd.compression === EncodedCompression.NONE) {
      unencoded = cmd.data;
      produced = cmd.data.length;
    } else {
      unencoded = this.unencoded.subarray(0, unencodedLength);
      try {
        produced = decompressExtent(cmd.compression, cmd.data, unencoded);
      } catch (e) {
        if (e instanceof DecompressError) this.refuse(`cannot decompress ${cmd.data.length} bytes of compression ${cmd.compression}`, e.message);
        throw e;
      }
    }
    if (produced < unencodedOffset + fileLength) {
      this.refuse(`extent decompresses to ${produced} bytes`, `unencoded_offset ${unencodedOffset} + unencoded_file_len ${fileLength} need ${unencodedOffset + fileLength}`);
    }
    this.writeAt(fd, unencoded.subarray(unencodedOffset, unencodedOffset + fileLength), offset);
  }

  /** BTRFS_IOC_CLONE_RANGE's effect; the source resolved inside its own subvolume as every other path. */
  private clone(cmd: Extract<SendCommand, { type: "clone" }>): void {
    const dst = this.writeFile(cmd.path);
    const srcOffset = this.offset(cmd.cloneOffset, "clone offset");
    const dstOffset = this.offset(cmd.fileOffset, "offset");
    let length = this.offset(cmd.length, "length");
    const s = this.subvolume();
    const uuid = uuidText(cmd.cloneUuid);
    let root = s.root;
    if (uuid !== s.receivedUuid) {
      const name = this.index.find(uuid, String(cmd.cloneCtransid));
      if (!name) this.refuse(`clone source subvolume ${uuid} (ctransid ${cmd.cloneCtransid}) was not received into this directory`);
      root = SubvolumeDir.open(this.dirFd, name);
    }
    try {
      this.at(
        cmd.clonePath,
        (place) => {
          const { fd: src, st } = this.openRegular(place, READ_FLAGS);
          try {
            const sameFile = this.write !== undefined && st.ino === this.write.ino && st.dev === this.write.dev;
            // BTRFS_IOC_CLONE_RANGE: a length of 0 means up to the end of the source
            if (length === 0) length = Math.max(fs.fstatSync(src).size - srcOffset, 0);
            cloneRange(src, srcOffset, dst, dstOffset, length, sameFile);
          } finally {
            closeFd(src);
          }
        },
        root,
        "clone source: ",
      );
    } finally {
      if (root !== s.root) root.close();
    }
  }

  private fallocate(relative: Uint8Array, mode: number, offset: number, length: number): void {
    const fd = this.writeFile(relative);
    if (libc().fallocate(fd, mode, offset, length) === 0) return;
    const err = libcError("fallocate", relative);
    if (err.code !== "EOPNOTSUPP" && err.code !== "ENOTSUP") throw err;
    // a file system without fallocate: the same bytes, without the allocation
    if (mode & FALLOC_FL_PUNCH_HOLE) punchOrZero(fd, offset, length);
    else if (!(mode & FALLOC_FL_KEEP_SIZE) && fs.fstatSync(fd).size < offset + length) fs.ftruncateSync(fd, offset + length);
  }
}

const EMPTY = new Uint8Array(0);

function commandName(cmd: SendCommand): string {
  return cmd.type === "unknown" ? `number ${cmd.number}` : cmd.type;
}

function kindName(mode: number): string {
  switch (mode & S_IFMT) {
    case S_IFLNK:
      return "a symlink";
    case S_IFDIR:
      return "a directory";
    case S_IFIFO:
      return "a fifo";
    case S_IFSOCK:
      return "a socket";
    case 0o020000:
      return "a character device";
    case 0o060000:
      return "a block device";
    default:
      return `mode ${mode.toString(8)}`;
  }
}

function errnoError(code: string, message: string): NodeJS.ErrnoException {
  const err = new Error(`${code}: ${message}`) as NodeJS.ErrnoException;
  err.code = code;
  return err;
}
