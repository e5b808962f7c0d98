import fs from "node:fs";
import nodePath from "node:path";
import { O_CREAT, O_DIRECTORY, O_EXCL, O_NOFOLLOW, O_RDONLY, O_WRONLY } from "../../native/libc.ts";
import { chmodAt, chownAt, linkAt, mkdirAt, mknodAt, openAt, setxattrAt, symlinkAt, unlinkAt, utimensAt } from "../../native/libc-at.ts";
import { UsageError, printable } from "../errors.ts";
import { type ProgressFactory, type ProgressReport, silentProgress } from "../progress.ts";
import { type FileSystem, FsError, type FsNode } from "./filesystem.ts";
import { splitPath } from "./path.ts";

/** One entry that could not be extracted: its path inside the file system and why. */
export interface Problem {
  path: Uint8Array;
  message: string;
  /** where in the volume the damage is, when it is damage */
  volumeOffset?: number;
}

export interface ExtractSummary {
  files: number;
  directories: number;
  symlinks: number;
  hardLinks: number;
  special: number;
  bytes: number;
  problems: number;
}

export interface ExtractOptions {
  /** DEST may exist and hold files (entries are still never overwritten) */
  force?: boolean;
  /** set owners (default: when running as root) */
  owners?: boolean;
  /** one line per entry that could not be extracted */
  onProblem: (p: Problem) => void;
  /** told of the bytes extracted so far (default: nobody) */
  progress?: ProgressFactory;
}

/** a file's data goes through a buffer this large: one that stays in the CPU's cache between the read that fills it and the write */
const COPY_CHUNK = 128 << 10;
const MAX_SYMLINK_HOPS = 40;

/**
 * Extract `sources` (paths inside the file system; "/" = its whole tree) into `dest`: directories
 * and files with modes, owners (root), atime/mtime, symlinks, hard links as links, devices and
 * fifos, holes kept. Everything is created with *at() calls on held directory fds, O_EXCL and
 * O_NOFOLLOW: nothing is written outside DEST and nothing existing is overwritten. Entries that
 * cannot be extracted are reported and skipped; the rest still comes out.
 */
export function extractTree(fsys: FileSystem, sources: Uint8Array[], dest: string, options: ExtractOptions): ExtractSummary {
  const rootFd = openDestination(dest, options.force === true);
  const x = new Extractor(fsys, rootFd, options);
  try {
    for (const source of sources) x.extractSource(source);
  } finally {
    fs.closeSync(rootFd);
    x.progress.finish(x.summary.bytes);
  }
  return x.summary;
}

/** DEST: created fresh (its parent must exist), or an existing empty directory, or any directory with --force. */
function openDestination(dest: string, force: boolean): number {
  const absolute = nodePath.resolve(dest);
  let st: fs.Stats | undefined;
  try {
    st = fs.lstatSync(absolute);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== "ENOENT") throw e;
  }
  if (!st) {
    try {
      fs.mkdirSync(absolute, { mode: 0o755 });
    } catch (e) {
      throw new UsageError(`${dest}: cannot create the destination directory: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
    }
  } else {
    if (st.isSymbolicLink()) throw new UsageError(`${dest}: is a symlink; name the directory itself`);
    if (!st.isDirectory()) throw new UsageError(`${dest}: exists and is not a directory`);
    if (!force && fs.readdirSync(absolute).length > 0) throw new UsageError(`${dest}: directory is not empty (use --force to extract into it anyway; nothing existing is overwritten)`);
  }
  return openAt(-100, Buffer.from(absolute), O_RDONLY | O_DIRECTORY | O_NOFOLLOW, 0, Buffer.from(absolute));
}

class Extractor {
  readonly summary: ExtractSummary = { files: 0, directories: 0, symlinks: 0, hardLinks: 0, special: 0, bytes: 0, problems: 0 };
  readonly progress: ProgressReport;
  private readonly owners: boolean;
  /** hard-linked nodes already extracted: node id → the DEST-relative path components of the first one */
  private readonly linked = new Map<number, Uint8Array[]>();
  /** directories being extracted (node ids): meeting one again is a loop */
  private readonly activeDirs = new Set<number>();
  /** every directory extracted so far: meeting one again is a cross-link */
  private readonly seenDirs = new Set<number>();
  private readonly buffer = new Uint8Array(COPY_CHUNK);

  constructor(
    private readonly fsys: FileSystem,
    private readonly rootFd: number,
    private readonly options: ExtractOptions,
  ) {
    this.owners = options.owners ?? process.getuid?.() === 0;
    this.progress = (options.progress ?? silentProgress)(undefined, "extract");
  }

  private problem(path: Uint8Array, message: string, volumeOffset?: number): void {
    this.summary.problems++;
    this.options.onProblem({ path, message, volumeOffset });
  }

  extractSource(source: Uint8Array): void {
    const rootFd = this.rootFd;
    const parts = splitPath(source);
    if (parts.some((p) => p.length === 2 && p[0] === 0x2e && p[1] === 0x2e)) throw new UsageError(`${printable(source)}: a path inside the image may not hold ".."`);
    const display = joinPath(parts);
    let node: FsNode | undefined;
    try {
      node = this.fsys.lookup(source);
    } catch (e) {
      if (!(e instanceof FsError)) throw e;
      this.problem(display, e.problem, e.volumeOffset);
      return;
    }
    if (!node) throw new UsageError(`${printable(display)}: no such file or directory in the image`);
    if (parts.length === 0) {
      this.directoryContents(node, rootFd, display, []);
      return;
    }
    this.entry(parts[parts.length - 1]!, node, rootFd, display, []);
  }

  /** The entries of `dir` into the open directory `dirFd` (DEST-relative path `at`). */
  private directoryContents(dir: FsNode, dirFd: number, path: Uint8Array, at: Uint8Array[]): void {
    this.activeDirs.add(dir.id);
    this.seenDirs.add(dir.id);
    try {
      for (const e of this.fsys.list(dir, (err) => this.problem(path, err.problem, err.volumeOffset))) {
        const childPath = joinPath([path, e.name]);
        if (e.damage) {
          this.problem(childPath, e.damage.problem, e.damage.volumeOffset);
          continue;
        }
        this.entry(e.name, e.node, dirFd, childPath, at);
      }
    } catch (e) {
      if (!(e instanceof FsError)) throw e;
      this.problem(path, `${e.problem}; the rest of this directory is skipped`, e.volumeOffset);
    } finally {
      this.activeDirs.delete(dir.id);
    }
  }

  private entry(name: Uint8Array, node: FsNode, dirFd: number, path: Uint8Array, at: Uint8Array[]): void {
    const bad = badName(name);
    if (bad) {
      this.problem(path, `${bad}; skipped`);
      return;
    }
    try {
      switch (node.kind) {
        case "directory":
          this.directory(name, node, dirFd, path, at);
          return;
        case "file":
          if (node.links > 1 && this.hardLink(name, node, dirFd, at)) return;
          this.file(name, node, dirFd, path);
          this.summary.files++;
          if (node.links > 1) this.linked.set(node.id, [...at, name]);
          return;
        case "symlink":
          if (node.links > 1 && this.hardLink(name, node, dirFd, at)) return;
          {
            const target = this.fsys.readlink(node);
            if (target.includes(0)) {
              this.problem(path, `the symlink target '${printable(target)}' contains a NUL byte; skipped`);
              return;
            }
            symlinkAt(target, dirFd, name, name);
          }
          this.summary.symlinks++;
          break;
        default:
          if (node.links > 1 && this.hardLink(name, node, dirFd, at)) return;
          mknodAt(dirFd, name, typeBits(node) | 0o600, node.rdev ? makedev(node.rdev.major, node.rdev.minor) : 0, name);
          this.summary.special++;
      }
      if (node.links > 1) this.linked.set(node.id, [...at, name]);
      this.xattrs(dirFd, name, node, path);
      this.attributes(dirFd, name, node);
    } catch (e) {
      this.reportError(path, e);
    }
  }

  private reportError(path: Uint8Array, e: unknown): void {
    if (e instanceof FsError) {
      this.problem(path, e.problem, e.volumeOffset);
      return;
    }
    const err = e as NodeJS.ErrnoException;
    const creating = /^E\w+: (openat|mkdirat|symlinkat|mknodat|linkat) /.test(err.message);
    switch (creating ? err.code : undefined) {
      case "ENAMETOOLONG":
        this.problem(path, "the name is too long for the local file system; skipped");
        return;
      case "EILSEQ":
      case "EINVAL":
        this.problem(path, `the local file system cannot hold this name (${err.code}); skipped`);
        return;
      case "EEXIST":
        this.problem(path, "already exists in the destination; not overwritten");
        return;
    }
    if (err.code === "EPERM" && err.message.includes(": mknodat ")) {
      this.problem(path, "creating a device node needs root (EPERM); skipped");
      return;
    }
    switch (err.code) {
      case "EPERM":
      case "EACCES":
      case "ENOTSUP":
      case "EOPNOTSUPP":
        this.problem(path, `not permitted here (${err.code}: ${err.message.split(":")[1]?.trim() ?? ""}); skipped`);
        return;
    }
    if (typeof err.code === "string" && /^E[A-Z]+$/.test(err.code) && err.code !== "ENOSPC" && err.code !== "EIO" && err.code !== "EDQUOT" && err.code !== "EROFS") {
      this.problem(path, `${err.message}; skipped`);
      return;
    }
    throw e;
  }

  private directory(name: Uint8Array, node: FsNode, parentFd: number, path: Uint8Array, at: Uint8Array[]): void {
    if (this.activeDirs.has(node.id)) {
      this.problem(path, `directory (inode ${node.id}) contains itself: a loop in the directory entries; not followed`);
      return;
    }
    if (this.seenDirs.has(node.id)) {
      this.problem(path, `directory (inode ${node.id}) was already extracted under another name: a cross-linked directory; not followed`);
      return;
    }
    let fd: number;
    try {
      mkdirAt(parentFd, name, 0o700, name);
      fd = openAt(parentFd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW, 0, name);
    } catch (e) {
      this.reportError(path, e);
      return;
    }
    this.summary.directories++;
    try {
      this.directoryContents(node, fd, path, [...at, name]);
      this.xattrs(fd, null, node, path);
      this.attributes(fd, new Uint8Array(0), node);
    } catch (e) {
      this.reportError(path, e);
    } finally {
      fs.closeSync(fd);
    }
  }

  /** A regular file: the size set first (holes stay holes), then only its data runs written. */
  private file(name: Uint8Array, node: FsNode, dirFd: number, path: Uint8Array): void {
    const fd = openAt(dirFd, name, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW, 0o600, name);
    let complete = false;
    try {
      fs.ftruncateSync(fd, node.size);
      for (const run of this.fsys.fileExtents(node)) {
        for (let pos = run.offset; pos < run.offset + run.length; ) {
          const want = Math.min(this.buffer.length, run.offset + run.length - pos);
          const n = this.fsys.readFile(node, pos, this.buffer.subarray(0, want));
          if (n === 0) break;
          writeAll(fd, this.buffer.subarray(0, n), pos);
          pos += n;
          this.summary.bytes += n;
          this.progress.update(this.summary.bytes);
        }
      }
      complete = true;
    } finally {
      if (!complete) {
        // never leave a partial file that looks complete
        fs.closeSync(fd);
        try {
          unlinkAt(dirFd, name, 0, name);
        } catch {
          this.problem(path, "could not remove the partial file");
        }
      }
    }
    try {
      if (this.owners) chownAt(fd, null, node.uid, node.gid, name);
      this.xattrs(fd, null, node, path);
      chmodAt(fd, null, node.mode, name);
      utimensAt(fd, null, node.atime, node.mtime, name);
    } finally {
      fs.closeSync(fd);
    }
  }

  /** A second name of a node already extracted: a hard link to the first; false when there is none yet. */
  private hardLink(name: Uint8Array, node: FsNode, dirFd: number, at: Uint8Array[]): boolean {
    const first = this.linked.get(node.id);
    if (!first) return false;
    const parentFd = this.openDirectoryAt(first.slice(0, -1), dirFd, at);
    try {
      linkAt(parentFd, first[first.length - 1]!, dirFd, name, name);
    } finally {
      if (parentFd !== dirFd) fs.closeSync(parentFd);
    }
    this.summary.hardLinks++;
    return true;
  }

  /** The directory at DEST-relative `components`, opened one level at a time from DEST without following symlinks. */
  private openDirectoryAt(components: Uint8Array[], currentFd: number, currentAt: Uint8Array[]): number {
    if (components.length === currentAt.length && components.every((c, i) => c === currentAt[i])) return currentFd;
    let fd = openAt(this.rootFd, new Uint8Array([0x2e]), O_RDONLY | O_DIRECTORY | O_NOFOLLOW, 0, new Uint8Array([0x2e]));
    for (const c of components) {
      const next = openAt(fd, c, O_RDONLY | O_DIRECTORY | O_NOFOLLOW, 0, c);
      fs.closeSync(fd);
      fd = next;
    }
    return fd;
  }

  /**
   * The node's extended attributes, set on `name` in dirFd (or on dirFd itself): one the destination
   * refuses (no user xattrs on tmpfs, security.* without root) is a problem, and the rest are still set.
   */
  private xattrs(dirFd: number, name: Uint8Array | null, node: FsNode, path: Uint8Array): void {
    if (!this.fsys.xattrs) return;
    for (const x of this.fsys.xattrs(node)) {
      try {
        setxattrAt(dirFd, name, x.name, x.value, name ?? path);
      } catch (e) {
        const code = (e as NodeJS.ErrnoException).code;
        if (code !== "ENOTSUP" && code !== "EOPNOTSUPP" && code !== "EPERM" && code !== "EACCES" && code !== "ERANGE" && code !== "ENOSPC" && code !== "E2BIG") throw e;
        this.problem(path, `the destination refused the extended attribute ${printable(x.name)} (${code})`);
      }
    }
  }

  private attributes(dirFd: number, name: Uint8Array, node: FsNode): void {
    const self = name.length === 0 ? null : name;
    if (this.owners) chownAt(dirFd, self, node.uid, node.gid, name);
    if (node.kind === "directory") chmodAt(dirFd, null, node.mode, name);
    else if (node.kind !== "symlink" && self) chmodAt(dirFd, self, node.mode, name);
    utimensAt(dirFd, self, node.atime, node.mtime, name);
  }
}

function writeAll(fd: number, data: Uint8Array, position: number): void {
  for (let done = 0; done < data.length; ) done += fs.writeSync(fd, data, done, data.length - done, position + done);
}

/** Why a name from the image cannot be a file name here, or undefined. */
export function badName(name: Uint8Array): string | undefined {
  if (name.length === 0) return "an empty name";
  if (name.includes(0x2f)) return `the name '${printable(name)}' contains "/"`;
  if (name.includes(0)) return `the name '${printable(name)}' contains a NUL byte`;
  if (name.length === 1 && name[0] === 0x2e) return 'an entry named "."';
  if (name.length === 2 && name[0] === 0x2e && name[1] === 0x2e) return 'an entry named ".."';
  if (name.length > 255) return `the name is ${name.length} bytes long, more than the 255 Linux file systems hold`;
  return undefined;
}

export function joinPath(parts: Uint8Array[]): Uint8Array {
  const nonEmpty = parts.filter((p) => p.length > 0 && !(p.length === 1 && p[0] === 0x2f));
  let length = 1;
  for (const p of nonEmpty) length += p.length + 1;
  const out = new Uint8Array(Math.max(1, length - 1));
  out[0] = 0x2f;
  let at = 1;
  for (const [i, p] of nonEmpty.entries()) {
    const part = p[0] === 0x2f ? p.subarray(1) : p;
    if (i > 0) out[at++] = 0x2f;
    out.set(part, at);
    at += part.length;
  }
  return out.subarray(0, at);
}

function typeBits(node: FsNode): number {
  switch (node.kind) {
    case "char-device": return 0o020000;
    case "block-device": return 0o060000;
    case "fifo": return 0o010000;
    case "socket": return 0o140000;
    default: throw new Error(`typeBits: ${node.kind}`);
  }
}

/** glibc's makedev: the 64-bit dev_t of a major and minor number. */
function makedev(major: number, minor: number): number {
  return ((major & 0xfff) << 8) + (minor & 0xff) + (minor >>> 8) * 2 ** 20 + Math.floor(major / 4096) * 2 ** 32;
}

/** Follow a symlink path inside the file system (for `get`): at most 40 hops, never leaving the root. */
export function resolveFollowing(fsys: FileSystem, path: Uint8Array): FsNode | undefined {
  let parts = splitPath(path).map((p) => p.slice());
  let hops = 0;
  for (;;) {
    let node = fsys.root();
    const stack: FsNode[] = [node];
    let restarted = false;
    for (let i = 0; i < parts.length; i++) {
      const part = parts[i]!;
      if (part.length === 2 && part[0] === 0x2e && part[1] === 0x2e) {
        if (stack.length > 1) stack.pop();
        node = stack[stack.length - 1]!;
        continue;
      }
      if (node.kind !== "directory") return undefined;
      let found: FsNode | undefined;
      for (const e of fsys.list(node)) {
        if (e.name.length === part.length && e.name.every((b, j) => b === part[j])) {
          if (e.damage) throw e.damage;
          found = e.node;
          break;
        }
      }
      if (!found) return undefined;
      if (found.kind === "symlink") {
        if (++hops > MAX_SYMLINK_HOPS) throw new FsError(fsys.volume.name, undefined, "too many levels of symbolic links");
        const target = fsys.readlink(found);
        const rest = parts.slice(i + 1);
        const base = target[0] === 0x2f ? [] : parts.slice(0, i);
        parts = [...base, ...splitPath(target).map((p) => p.slice()), ...rest];
        restarted = true;
        break;
      }
      node = found;
      stack.push(node);
    }
    if (!restarted) return node;
  }
}
