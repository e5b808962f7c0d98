import fs from "node:fs";
import path from "node:path";
import { ImageError, UsageError, describeLocation, printable } from "../errors.ts";
import {
  chmod,
  FALLOC_FL_KEEP_SIZE,
  FALLOC_FL_PUNCH_HOLE,
  FICLONE,
  libc,
  libcError,
  listXattrs,
  lremovexattr,
  lsetxattr,
  lutimesNs,
  mknod,
  S_IFDIR,
  S_IFIFO,
  S_IFLNK,
  S_IFMT,
  S_IFSOCK,
  SEEK_DATA,
  SEEK_HOLE,
} from "../../native/libc.ts";
import { DecompressError, decompressExtent } from "./decompress.ts";
import { uuidText } from "./dump.ts";
import { EncodedCompression } from "./protocol.ts";
import type { SendCommand, SendStreamParser, Timespec, U64 } from "./stream.ts";

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
}

/**
 * Apply a btrfs send stream to an ordinary directory, as `btrfs receive -f STREAM DIR` does on
 * btrfs: each subvolume becomes DIR/<name>, a snapshot starts as a copy of its parent (found
 * in DIR/.imgtool-received.json by the parent's received uuid). Paths never leave the
 * subvolume: `..`, absolute paths and paths through symlinks are refused.
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
  return { subvolumes: receiver.finished, commands: parser.count };
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

// ---- paths inside one subvolume ----

/**
 * Stream paths resolved under a subvolume's directory. A path may not be absolute, hold `..`
 * or go through a symlink; directories already checked are remembered (by their path) until a
 * rename or rmdir moves them.
 */
class SubvolumePaths {
  private readonly checkedDirectories = new Set<string>();

  constructor(readonly root: Buffer) {}

  /** The absolute path of `relative`, or why it is refused. */
  resolve(relative: Uint8Array): Buffer | string {
    let end = relative.length;
    while (end > 0 && relative[end - 1] === 0x2f) end--;
    if (end === 0) return this.root;
    const rel = relative.subarray(0, end);
    if (rel[0] === 0x2f) return "absolute path";
    if (rel.includes(0)) return "NUL byte in path";
    let start = 0;
    for (let i = 0; i <= rel.length; i++) {
      if (i < rel.length && rel[i] !== 0x2f) continue;
      const component = rel.subarray(start, i);
      if (component.length === 2 && component[0] === 0x2e && component[1] === 0x2e) return "'..' in path";
      if (i < rel.length && component.length > 0) {
        const refusal = this.checkDirectory(rel.subarray(0, i));
        if (refusal) return refusal;
      }
      start = i + 1;
    }
    return Buffer.concat([this.root, SLASH, rel]);
  }

  private checkDirectory(prefix: Uint8Array): string | undefined {
    const key = Buffer.from(prefix).toString("latin1");
    if (this.checkedDirectories.has(key)) return undefined;
    let st: fs.Stats;
    try {
      st = fs.lstatSync(Buffer.concat([this.root, SLASH, prefix]));
    } catch {
      // missing: the operation itself fails with ENOENT
      return undefined;
    }
    if (st.isSymbolicLink()) return `path goes through the symlink '${printable(prefix)}'`;
    if (st.isDirectory()) this.checkedDirectories.add(key);
    return undefined;
  }

  /** `relative` (a directory or not) no longer is where it was. */
  moved(relative: Uint8Array): void {
    let end = relative.length;
    while (end > 0 && relative[end - 1] === 0x2f) end--;
    const key = Buffer.from(relative.subarray(0, end)).toString("latin1");
    if (!this.checkedDirectories.delete(key)) return;
    const below = `${key}/`;
    for (const k of this.checkedDirectories) if (k.startsWith(below)) this.checkedDirectories.delete(k);
  }
}

// ---- the receiver ----

interface CurrentSubvolume {
  name: Buffer;
  paths: SubvolumePaths;
  receivedUuid: string;
  ctransid: string;
  parentUuid?: string;
  commands: number;
}

class Receiver {
  readonly finished: ReceivedSubvolume[] = [];
  private readonly index: ReceivedIndex;
  private readonly dirBytes: Buffer;
  private current: CurrentSubvolume | undefined;
  /** the file of the last write, kept open for the next one (btrfs receive does the same) */
  private writeFd = -1;
  private writePath: Buffer | undefined;
  private readonly otherSubvolumes = new Map<string, SubvolumePaths>();
  private command: SendCommand | undefined;

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
  }

  progress(): string {
    const done = this.finished.length ? `received ${this.finished.map((s) => printable(s.name)).join(", ")}; ` : "";
    const partial = this.current ? `${printable(this.current.name)} is incomplete after ${this.current.commands} commands` : "no subvolume in progress";
    return `${done}${partial} (${this.parser.count} commands read)`;
  }

  close(): void {
    this.closeWriteFile();
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

  private at(relative: Uint8Array): Buffer {
    const resolved = this.subvolume().paths.resolve(relative);
    if (typeof resolved === "string") this.refuse(`${resolved}: '${printable(relative)}'`, "a received path must stay inside its subvolume");
    return resolved;
  }

  private offset(value: U64, what: string): number {
    if (typeof value === "bigint" || value > Number.MAX_SAFE_INTEGER) this.refuse(`${what} ${value} is too large`);
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
    switch (cmd.type) {
      case "subvol":
        return this.startSubvolume(cmd.path, uuidText(cmd.uuid), String(cmd.ctransid));
      case "snapshot":
        return this.startSubvolume(cmd.path, uuidText(cmd.uuid), String(cmd.ctransid), {
          uuid: uuidText(cmd.parentUuid),
          ctransid: String(cmd.parentCtransid),
        });
      case "mkfile": {
        const p = this.at(cmd.path);
        this.closeWriteFile();
        // kept open: its data, size and mode come next (after a rename from its orphan name)
        this.writeFd = fs.openSync(p, fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_EXCL, 0o600);
        this.writePath = p;
        return;
      }
      case "mkdir":
        fs.mkdirSync(this.at(cmd.path), 0o700);
        return;
      case "mknod":
        return mknod(this.at(cmd.path), Number(cmd.mode) & S_IFMT, cmd.rdev);
      case "mkfifo":
        return mknod(this.at(cmd.path), S_IFIFO | 0o600, 0);
      case "mksock":
        return mknod(this.at(cmd.path), S_IFSOCK | 0o600, 0);
      case "symlink":
        fs.symlinkSync(Buffer.from(cmd.target), this.at(cmd.path));
        return;
      case "rename": {
        const from = this.at(cmd.path);
        const to = this.at(cmd.to);
        fs.renameSync(from, to);
        this.subvolume().paths.moved(cmd.path);
        this.renamedWriteFile(from, to);
        return;
      }
      case "link":
        fs.linkSync(this.at(cmd.target), this.at(cmd.path));
        return;
      case "unlink": {
        const p = this.at(cmd.path);
        if (this.writePath?.equals(p)) this.closeWriteFile();
        fs.unlinkSync(p);
        return;
      }
      case "rmdir":
        fs.rmdirSync(this.at(cmd.path));
        this.subvolume().paths.moved(cmd.path);
        return;
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
      case "chmod":
        return this.chmod(cmd.path, Number(cmd.mode) & 0o7777);
      case "chown":
        fs.lchownSync(this.at(cmd.path), Number(cmd.uid), Number(cmd.gid));
        return;
      case "utimes":
        return lutimesNs(this.at(cmd.path), cmd.atime, cmd.mtime);
      case "set_xattr":
        return lsetxattr(this.at(cmd.path), cmd.name, cmd.data);
      case "remove_xattr":
        return lremovexattr(this.at(cmd.path), cmd.name);
      case "fallocate":
        return this.fallocate(cmd.path, cmd.mode, this.offset(cmd.fileOffset, "offset"), this.offset(cmd.size, "size"));
      case "update_extent":
        // a --no-data stream: the data is not in it (btrfs receive does nothing either)
        return;
      case "fileattr":
        // btrfs receive ignores it too: the value is btrfs inode flags, not chattr flags
        return;
      case "enable_verity":
        this.at(cmd.path);
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
    const target = Buffer.concat([this.dirBytes, SLASH, nameBytes]);
    if (fs.existsSync(target) || isSymlink(target)) throw new UsageError(`${printable(target)} already exists`);
    if (parent) {
      const parentName = this.index.find(parent.uuid, parent.ctransid);
      if (!parentName) {
        throw new UsageError(
          `cannot find the parent subvolume of snapshot '${printable(name)}' (uuid ${parent.uuid}, ctransid ${parent.ctransid}) in ${path.join(this.index.dir, RECEIVED_INDEX)}: receive the stream that made it into this directory first`,
        );
      }
      this.options.onSubvolume?.("snapshot", printable(name));
      copyTree(Buffer.concat([this.dirBytes, SLASH, parentName]), target);
    } else {
      this.options.onSubvolume?.("subvol", printable(name));
      fs.mkdirSync(target, 0o755);
    }
    this.current = { name: nameBytes, paths: new SubvolumePaths(target), receivedUuid, ctransid, parentUuid: parent?.uuid, commands: 0 };
  }

  /** Record the current subvolume as received (btrfs receive sets its received uuid then). */
  finishSubvolume(): void {
    this.closeWriteFile();
    const s = this.current;
    if (!s) return;
    this.current = undefined;
    this.index.add(s.name, s.receivedUuid, s.ctransid, s.parentUuid);
    this.finished.push({ name: s.name, receivedUuid: s.receivedUuid, ctransid: s.ctransid });
  }

  private closeWriteFile(): void {
    if (this.writeFd < 0) return;
    fs.closeSync(this.writeFd);
    this.writeFd = -1;
    this.writePath = undefined;
  }

  /** The open file at `relative`, never through a symlink. */
  private writeFile(relative: Uint8Array): number {
    const p = this.at(relative);
    if (this.writeFd >= 0 && this.writePath!.equals(p)) return this.writeFd;
    this.closeWriteFile();
    this.writeFd = fs.openSync(p, fs.constants.O_WRONLY | fs.constants.O_NOFOLLOW);
    this.writePath = p;
    return this.writeFd;
  }

  private writeAt(fd: number, data: Uint8Array, position: number): void {
    for (let done = 0; done < data.length; ) done += fs.writeSync(fd, data, done, data.length - done, position + done);
  }

  /** The open write file keeps its inode across a rename; a file renamed over it, or a directory above it, does not. */
  private renamedWriteFile(from: Buffer, to: Buffer): void {
    const open = this.writePath;
    if (!open) return;
    if (open.equals(from)) this.writePath = to;
    else if (open.equals(to) || (open.length > from.length && open[from.length] === 0x2f && open.subarray(0, from.length).equals(from))) {
      this.closeWriteFile();
    }
  }

  /** chmod(2) follows a symlink: refused for one, as it would change the file it points to. */
  private chmod(relative: Uint8Array, mode: number): void {
    const p = this.at(relative);
    if (this.writePath?.equals(p)) {
      if (libc().fchmod(this.writeFd, mode) !== 0) throw libcError("fchmod", p);
      return;
    }
    if (isSymlink(p)) this.refuse(`'${printable(relative)}' is a symlink`, "it would change the file it points to");
    chmod(p, mode);
  }

  private encodedWrite(cmd: Extract<SendCommand, { type: "encoded_write" }>): void {
    if (cmd.encryption !== 0) this.refuse(`encryption ${cmd.encryption} is not supported`, "btrfs receive cannot either");
    const fd = this.writeFile(cmd.path);
    const offset = this.offset(cmd.fileOffset, "offset");
    const fileLength = this.offset(cmd.unencodedFileLen, "unencoded_file_len");
    const unencodedLength = this.offset(cmd.unencodedLen, "unencoded_len");
    const unencodedOffset = this.offset(cmd.unencodedOffset, "unencoded_offset");
    if (unencodedOffset + fileLength > unencodedLength) {
      this.refuse(`unencoded_offset ${unencodedOffset} + unencoded_file_len ${fileLength} exceed unencoded_len ${unencodedLength}`);
    }
    let unencoded: { bytes: Uint8Array; produced: number };
    if (cmd.compression === EncodedCompression.NONE) {
      unencoded = { bytes: cmd.data, produced: cmd.data.length };
    } else {
      try {
        unencoded = decompressExtent(cmd.compression, cmd.data, unencodedLength);
      } catch (e) {
        if (e instanceof DecompressError) this.refuse(`cannot decompress ${cmd.data.length} bytes of compression ${cmd.compression}`, e.message);
        throw e;
      }
    }
    if (unencoded.produced < unencodedOffset + fileLength) {
      this.refuse(
        `extent decompresses to ${unencoded.produced} bytes`,
        `unencoded_offset ${unencodedOffset} + unencoded_file_len ${fileLength} need ${unencodedOffset + fileLength}`,
      );
    }
    this.writeAt(fd, unencoded.bytes.subarray(unencodedOffset, unencodedOffset + fileLength), offset);
  }

  private clone(cmd: Extract<SendCommand, { type: "clone" }>): void {
    const dst = this.writeFile(cmd.path);
    const s = this.subvolume();
    const uuid = uuidText(cmd.cloneUuid);
    let paths: SubvolumePaths;
    if (uuid === s.receivedUuid) {
      paths = s.paths;
    } else {
      const name = this.index.find(uuid, String(cmd.cloneCtransid));
      if (!name) this.refuse(`clone source subvolume ${uuid} (ctransid ${cmd.cloneCtransid}) was not received into this directory`);
      const key = name.toString("latin1");
      paths = this.otherSubvolumes.get(key) ?? new SubvolumePaths(Buffer.concat([this.dirBytes, SLASH, name]));
      this.otherSubvolumes.set(key, paths);
    }
    const source = paths.resolve(cmd.clonePath);
    if (typeof source === "string") this.refuse(`clone source: ${source}: '${printable(cmd.clonePath)}'`, "a received path must stay inside its subvolume");
    const src = fs.openSync(source, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW);
    try {
      const sameFile = fs.fstatSync(src).ino === fs.fstatSync(dst).ino;
      const srcOffset = this.offset(cmd.cloneOffset, "clone offset");
      let length = this.offset(cmd.length, "length");
      // BTRFS_IOC_CLONE_RANGE: a length of 0 means up to the end of the source
      if (length === 0) length = Math.max(fs.fstatSync(src).size - srcOffset, 0);
      cloneRange(src, srcOffset, dst, this.offset(cmd.fileOffset, "offset"), length, sameFile);
    } finally {
      fs.closeSync(src);
    }
  }

  private fallocate(relative: Uint8Array, mode: number, offset: number, length: number): void {
    const fd = this.writeFile(relative);
    if (libc().fallocate(fd, mode, offset, length) === 0) return;
    const err = libcError("fallocate", this.at(relative));
    if (err.code !== "EOPNOTSUPP" && err.code !== "ENOTSUP") throw err;
    // a file system without fallocate: the same bytes, without the allocation
    if (mode & FALLOC_FL_PUNCH_HOLE) punchOrZero(fd, offset, length);
    else if (!(mode & FALLOC_FL_KEEP_SIZE) && fs.fstatSync(fd).size < offset + length) fs.ftruncateSync(fd, offset + length);
  }
}

function commandName(cmd: SendCommand): string {
  return cmd.type === "unknown" ? `number ${cmd.number}` : cmd.type;
}

function isSymlink(p: Buffer): boolean {
  try {
    return fs.lstatSync(p).isSymbolicLink();
  } catch {
    return false;
  }
}
