// Applying a btrfs send stream to an ordinary directory, as `btrfs receive` does on btrfs (the
// commands as progs/receive.c applies them; their encoding in stream.ts and protocol.ts).
import fs from "node:fs";
import path from "node:path";
import { ImageError, UsageError, describeLocation, printable, withCommas } from "../errors.ts";
import { MAX_IOV, writeAll } from "../output/writer.ts";
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
  chmodAt,
  chownAt,
  type EntryStat,
  linkAt,
  mkdirAt,
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
import { closeFd, FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE } from "../../native/libc-file.ts";
import { DecompressError, decompressExtent, MAX_COMPRESSED, MAX_UNCOMPRESSED } from "./decompress.ts";
import { uuidText } from "./uuid.ts";
import { EncodedCompression } from "./protocol.ts";
import { cloneRange, copyTree, punchOrZero } from "./range-copy.ts";
import { RECEIVED_INDEX, ReceivedIndex } from "./received-index.ts";
import type { SendCommand, SendStreamParser, U64 } from "./stream.ts";
import { mayBeAtOrBelow, PathRefusal, pathComponents, type Place, SubvolumeDir } from "./subvolume-dir.ts";

export interface ReceiveOptions {
  /** called when a subvolume or snapshot starts, as `btrfs receive` prints "At subvol NAME" */
  onSubvolume?: (kind: "subvol" | "snapshot", name: string) => void;
  /** one line, for what a plain directory cannot do (fs-verity) */
  warn?: (line: string) => void;
  /** now and then: how many bytes of the stream have been applied */
  onProgress?: (streamBytes: number) => void;
  /** resolve paths with an O_NOFOLLOW openat per directory, as on kernels without openat2 (for tests) */
  walkWithoutOpenat2?: boolean;
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
  parser.beforeRelease = () => receiver.flushWrites();
  try {
    let applied = 0;
    for (let command = parser.read(); command; command = parser.read()) {
      receiver.apply(command);
      if ((++applied & 1023) === 0) options.onProgress?.(parser.reader.position);
    }
    receiver.finishSubvolume();
    options.onProgress?.(parser.reader.position);
  } catch (e) {
    // the writes of the commands before the failing one are done first (a failure of theirs comes first)
    let first = e;
    try {
      receiver.flushWrites();
    } catch (earlier) {
      first = earlier;
    }
    if (first instanceof Error) first.message = `${first.message}; ${receiver.progress()}`;
    throw first;
  } finally {
    parser.beforeRelease = undefined;
    receiver.close();
  }
  return { subvolumes: receiver.finished, commands: parser.count, refusedXattrs: receiver.refusedXattrs };
}
// ---- the receiver ----

/**
 * Write commands not written yet: consecutive writes to the held file at contiguous offsets, each
 * already checked (crc, attributes, offset), their data still views into the parser's buffer.
 * Written as one pwritev before any other command, before the parser reuses its buffer, and at the end.
 */
interface PendingWrites {
  fd: number;
  start: number;
  end: number;
  data: Uint8Array[];
  commands: Extract<SendCommand, { type: "write" }>[];
}

interface CurrentSubvolume {
  name: Buffer;
  root: SubvolumeDir;
  receivedUuid: string;
  ctransid: string;
  parentUuid?: string;
  commands: number;
}

/**
 * The file of the last create or write, kept open for the commands that follow on it (btrfs
 * receive keeps it too): data, truncate, chown, chmod, utimes go to the fd while `key` is its path.
 */
interface WriteFile {
  fd: number;
  /** a stream path that names it now, and its components (when asked for); undefined once a rename or removal may have changed that */
  path: Uint8Array | undefined;
  components?: Uint8Array[];
  /** its inode, asked for when first needed */
  id?: { dev: bigint; ino: bigint };
}

const NO_PLACE_DETAIL = "a received path must stay inside its subvolume";
/**
 * Errors of a command that are the stream's doing on any destination: a path it never made or
 * already made, a name or offset no file system takes (btrfs has the same 255-byte names), a
 * directory it filled and removes, an argument no call accepts, an xattr it never set.
 */
const STREAM_ERRNOS = new Set(["ENOENT", "EEXIST", "ENOTDIR", "EISDIR", "ENOTEMPTY", "ELOOP", "ENAMETOOLONG", "EFBIG", "EINVAL", "EMLINK", "ENODATA"]);
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
  /** a mkfile or mkdir not done yet (createLater): the command and its path, copied */
  private pendingFile: { command: SendCommand; path: Uint8Array } | undefined;
  private command: SendCommand | undefined;
  private pendingWrites: PendingWrites | undefined;
  /** the commands read when the failing command was: set when a write fails after later commands were read */
  private readWhenFailed: number | undefined;
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
    return `${done}${partial} (${this.readWhenFailed ?? this.parser.count} commands read)`;
  }

  close(): void {
    this.pendingWrites = undefined;
    this.pendingFile = undefined;
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
  /**
   * A failed file operation, named with the command and its place in the stream: an ImageError
   * (bad input) when what the stream asks cannot be (STREAM_ERRNOS), another failure when the
   * destination could not do what can be (out of space, I/O error, read-only, not permitted).
   */
  private failed(e: unknown): never {
    if (e instanceof ImageError || e instanceof UsageError) throw e;
    const cmd = this.command!;
    const err = e as NodeJS.ErrnoException;
    const what = `command #${cmd.index} (${commandName(cmd)}): ${err.message}`;
    if (err.code !== undefined && STREAM_ERRNOS.has(err.code)) throw new ImageError(this.parser.reader.locate(cmd.offset), what);
    const wrapped = new Error(`${describeLocation(this.parser.reader.locate(cmd.offset))}: ${what}`) as NodeJS.ErrnoException;
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
    if (command.type === "write" && this.addToPendingWrites(command)) return;
    this.flushWrites();
    if (this.pendingFile) {
      if (this.createRenamed(command)) return;
      this.makePendingFile();
    }
    this.command = command;
    if (this.current) this.current.commands++;
    try {
      this.applyCommand(command);
    } catch (e) {
      this.failed(e);
    }
  }

  /**
   * When `command` renames the pending file, make it at the new name (one create where the stream
   * asks for a create and a rename: btrfs send gives every new file a temporary name first); true
   * when done. Where that create fails (the name exists: the rename replaces it), false: the two
   * are done as the stream gives them.
   */
  private createRenamed(command: SendCommand): boolean {
    const pending = this.pendingFile!;
    if (command.type !== "rename" || !sameBytes(command.path, pending.path)) return false;
    this.command = command;
    try {
      return this.at(command.to, (to) => {
        const name = this.entry(to, "replaced");
        try {
          this.create(pending.command.type, to.dir, name, to);
        } catch {
          return false;
        }
        this.pendingFile = undefined;
        this.current!.commands++;
        return true;
      });
    } catch (e) {
      // the file is made first, as it would have been, then the rename's refusal reported
      this.makePendingFile();
      this.command = command;
      this.current!.commands++;
      return this.failed(e);
    }
  }

  /** Make the pending file or directory at the name its command gave; a failure is that command's. */
  private makePendingFile(): void {
    const pending = this.pendingFile!;
    this.pendingFile = undefined;
    this.command = pending.command;
    try {
      this.at(pending.path, (place) => this.create(pending.command.type, place.dir, place.name!, place));
    } catch (e) {
      this.failed(e);
    }
  }

  /** mkfile (the file kept open: its data, owner, mode and times come next) or mkdir of `name` in `dir`. */
  private create(type: SendCommand["type"], dir: number, name: Uint8Array, place: Place): void {
    if (type === "mkdir") return mkdirAt(dir, name, 0o700, place.path);
    this.holdFile(openAt(dir, name, WRITE_FLAGS | O_CREAT | O_EXCL, 0o600, place.path), place);
  }

  /**
   * mkfile or mkdir: made with the next command, at the name a rename then gives it (createRenamed),
   * else here; at once where the name exists (to fail as the stream's error).
   */
  private createLater(cmd: Extract<SendCommand, { type: "mkfile" | "mkdir" | "mkfifo" | "mksock" }>): void {
    this.at(cmd.path, (place) => {
      const name = this.entry(place, "replaced");
      if (cmd.type === "mkfile") this.closeWriteFile();
      if (statAt(place.dir, name, place.path) !== undefined) return this.create(cmd.type, place.dir, name, place);
      const path = new Uint8Array(cmd.path);
      this.pendingFile = { command: { index: cmd.index, offset: cmd.offset, stream: cmd.stream, type: cmd.type, path, ino: cmd.ino }, path };
    });
  }

  /**
   * `place` was renamed (either side), unlinked or removed: what was resolved at or below it is
   * resolved afresh. Only after success: a failed command ends the receive.
   */
  private forget(place: Place): void {
    this.subvolume().root.forget(place.components);
    const w = this.write;
    if (w?.path !== undefined && mayBeAtOrBelow((w.components ??= pathComponents(w.path)), place.components)) w.path = undefined;
  }

  private holdFile(fd: number, place: Place, id?: WriteFile["id"]): void {
    // copied: the place's bytes are a view of the parser's buffer
    this.write = { fd, path: new Uint8Array(place.path), id };
  }

  /**
   * The held file's fd when `path` names it, spelled as it was: no resolution needed, as `forget`
   * drops the path whenever a rename or removal may have changed what it names.
   */
  private heldFile(path: Uint8Array): number | undefined {
    const held = this.write?.path;
    return held !== undefined && sameBytes(held, path) ? this.write!.fd : undefined;
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
      case "mkdir":
        return this.createLater(cmd);
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
          this.at(cmd.to, (to) => {
            renameAt(from.dir, fromName, to.dir, this.entry(to, "replaced"), from.path);
            const held = this.heldFile(from.path);
            this.forget(from);
            this.forget(to);
            // the held file moved with its name
            if (held !== undefined) this.holdFile(held, to, this.write!.id);
          });
        });
      case "link":
        return this.at(cmd.path, (link) => {
          const linkName = this.entry(link, "replaced");
          this.at(cmd.target, (target) => linkAt(target.dir, this.entry(target, "linked"), link.dir, linkName, link.path));
        });
      case "unlink":
      case "rmdir":
        return this.at(cmd.path, (place) => {
          unlinkAt(place.dir, this.entry(place, "removed"), cmd.type === "rmdir" ? AT_REMOVEDIR : 0, place.path);
          this.forget(place);
        });
      case "write": {
        const fd = this.writeFile(cmd.path);
        const start = this.offset(cmd.fileOffset, "offset");
        this.pendingWrites = { fd, start, end: start + cmd.data.length, data: [cmd.data], commands: [cmd] };
        return;
      }
      case "encoded_write":
        return this.encodedWrite(cmd);
      case "clone":
        return this.clone(cmd);
      case "truncate":
        fs.ftruncateSync(this.writeFile(cmd.path), this.offset(cmd.size, "size"));
        return;
      case "chmod": {
        const mode = Number(cmd.mode) & 0o7777;
        const held = this.heldFile(cmd.path);
        if (held !== undefined) chmodAt(held, null, mode, cmd.path);
        // false for a symlink: Linux cannot change its mode, and chmod(2) would change what it points to
        else this.at(cmd.path, (place) => chmodAt(place.dir, place.name, mode, place.path));
        return;
      }
      case "chown": {
        const uid = this.id(cmd.uid, "uid");
        const gid = this.id(cmd.gid, "gid");
        const held = this.heldFile(cmd.path);
        if (held !== undefined) return chownAt(held, null, uid, gid, cmd.path);
        return this.at(cmd.path, (place) => chownAt(place.dir, place.name, uid, gid, place.path));
      }
      case "utimes": {
        const held = this.heldFile(cmd.path);
        if (held !== undefined) return utimensAt(held, null, cmd.atime, cmd.mtime, cmd.path);
        return this.at(cmd.path, (place) => utimensAt(place.dir, place.name, cmd.atime, cmd.mtime, place.path));
      }
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
    const root = SubvolumeDir.open(this.dirFd, nameBytes, this.options.walkWithoutOpenat2);
    this.current = { name: nameBytes, root, receivedUuid, ctransid, parentUuid: parent?.uuid, commands: 0 };
  }

  /** Record the current subvolume as received (btrfs receive sets its received uuid then). */
  finishSubvolume(): void {
    this.flushWrites();
    if (this.pendingFile) this.makePendingFile();
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

  /** The held file's inode. */
  private writeFileId(w: WriteFile): { dev: bigint; ino: bigint } {
    if (!w.id) {
      const st = statAt(w.fd, null, EMPTY)!;
      w.id = { dev: st.dev, ino: st.ino };
    }
    return w.id;
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
    if (flags === WRITE_FLAGS && this.write) {
      const held = this.writeFileId(this.write);
      if (held.ino === st.ino && held.dev === st.dev) return { fd: this.write.fd, st };
    }
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
    const held = this.heldFile(relative);
    if (held !== undefined) return held;
    return this.at(relative, (place) => {
      const { fd, st } = this.openRegular(place, WRITE_FLAGS);
      if (this.write?.fd === fd) {
        this.holdFile(fd, place, this.write.id);
        return fd;
      }
      this.closeWriteFile();
      this.holdFile(fd, place, { dev: st.dev, ino: st.ino });
      return fd;
    });
  }

  /** A write that continues the pending ones (same held file, the next offset) joins them; true when it did. */
  private addToPendingWrites(cmd: Extract<SendCommand, { type: "write" }>): boolean {
    const p = this.pendingWrites;
    if (!p || p.data.length === MAX_IOV || cmd.fileOffset !== p.end || this.heldFile(cmd.path) !== p.fd) return false;
    p.data.push(cmd.data);
    p.commands.push(cmd);
    p.end += cmd.data.length;
    this.current!.commands++;
    return true;
  }

  /** Write the pending writes; a failure is the command whose bytes could not be written. */
  flushWrites(): void {
    const p = this.pendingWrites;
    if (!p) return;
    this.pendingWrites = undefined;
    try {
      writeAll(p.fd, p.data, p.end - p.start, p.start);
    } catch (e) {
      const done = (e as { written?: number }).written ?? 0;
      let i = 0;
      let at = p.start;
      for (; i < p.data.length - 1 && at + p.data[i]!.length <= p.start + done; i++) at += p.data[i]!.length;
      const cmd = p.commands[i]! as Extract<SendCommand, { type: "write" }>;
      this.command = cmd;
      this.readWhenFailed = cmd.index;
      if (this.current) this.current.commands -= p.commands.length - 1 - i;
      // the write call names no file: say which, and where in it
      const err = e as NodeJS.ErrnoException;
      this.failed(Object.assign(new Error(`${err.message} '${printable(cmd.path)}' at file offset ${withCommas(p.start + done)}`), { code: err.code }));
    }
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
      root = SubvolumeDir.open(this.dirFd, name, this.options.walkWithoutOpenat2);
    }
    try {
      this.at(
        cmd.clonePath,
        (place) => {
          const { fd: src, st } = this.openRegular(place, READ_FLAGS);
          try {
            const held = this.write && this.writeFileId(this.write);
            const sameFile = held !== undefined && st.ino === held.ino && st.dev === held.dev;
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

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}
const SLASH = Buffer.from("/");

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
