import { O_CLOEXEC, O_DIRECTORY, O_NOFOLLOW, O_PATH, O_RDONLY, S_IFDIR, S_IFLNK, S_IFMT } from "../../native/libc.ts";
import {
  type EntryStat,
  openAt,
  openat2,
  RESOLVE_BENEATH,
  RESOLVE_NO_MAGICLINKS,
  RESOLVE_NO_SYMLINKS,
  statAt,
} from "../../native/libc-at.ts";
import { closeFd } from "../../native/libc-file.ts";
import { printable } from "../errors.ts";

/** A stream path that cannot be resolved inside its subvolume; the receiver names the command. */
export class PathRefusal extends Error {
  override name = "PathRefusal";
}

/** Where a stream path leads: the directory that holds it and its last component, or the subvolume root. */
export interface Place {
  /** fd of the directory holding the entry (O_PATH), or of the root itself when `name` is null */
  dir: number;
  /** the last component; null for the subvolume root (the path "" or "/") */
  name: Uint8Array | null;
  /** the path as the stream gave it, for messages */
  path: Uint8Array;
  /** its components (pathComponents) */
  components: Uint8Array[];
}

interface HeldDirectory {
  fd: number;
  /** its path below the root, components joined by "/" */
  path: Buffer;
  components: Uint8Array[];
}

/** directories held open at once; at least 2 (a rename holds its source's and its target's) */
const HELD_DIRECTORIES = 16;
const SLASH = 0x2f;
const DOT = 0x2e;

/**
 * One subvolume's directory, held open: every stream path is resolved from this fd, as the
 * directory is now. The kernel walks the directories with openat2 RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS
 * (an O_NOFOLLOW|O_DIRECTORY openat per component where the kernel has no openat2 or the caller
 * asks for the walk); a path with `..`, an absolute path, or one whose directories include a
 * symlink is refused. The path "" (or "/") is the root itself, which callers must not remove,
 * rename or replace.
 *
 * The directories of the last paths stay open for the next commands in them (btrfs send gives a
 * file's create, rename, write, chown, chmod and utimes in a row, the files of one directory
 * together). A held directory is what its path resolves to until a name on that path is renamed,
 * replaced or removed: creating a name never changes where an existing path leads (the create
 * fails on an existing name), so the caller's `forget` of each renamed, unlinked or removed path
 * is what drops the directories at or below it. Paths are compared as a case-insensitive file
 * system could resolve them (samePlaceMaybe), so a held directory is never one that resolving
 * afresh would not give.
 */
export class SubvolumeDir {
  /** most recently used first */
  private readonly held: HeldDirectory[] = [];

  private constructor(
    /** O_RDONLY|O_DIRECTORY fd of the root: fchmod, fchown, futimens, fsetxattr work on it */
    readonly fd: number,
    private noOpenat2: boolean,
  ) {}

  /** Open the directory `name` (one component) of `parentFd`, refusing a symlink; `walk`: never use openat2. */
  static open(parentFd: number, name: Uint8Array, walk = false): SubvolumeDir {
    return new SubvolumeDir(openAt(parentFd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW, 0, name), walk);
  }

  close(): void {
    for (const { fd } of this.held) closeFd(fd);
    this.held.length = 0;
    closeFd(this.fd);
  }

  /**
   * `path` was renamed (as source or target), unlinked or removed: held directories at or below
   * it may now lead elsewhere, or nowhere.
   */
  forget(removed: Uint8Array[]): void {
    for (let i = this.held.length - 1; i >= 0; i--) {
      const d = this.held[i]!;
      if (removed.length === 0 || mayBeAtOrBelow(d.components, removed)) {
        closeFd(d.fd);
        this.held.splice(i, 1);
      }
    }
  }

  /** Run `body` with the place of `path`: the directory that holds its last component. */
  at<T>(path: Uint8Array, body: (place: Place) => T): T {
    return body(this.place(path));
  }

  /** The place of `path` as the directory is now; its `dir` stays open until `forget` or HELD_DIRECTORIES - 1 further places. */
  place(path: Uint8Array): Place {
    const components = pathComponents(path);
    if (components.length === 0) return { dir: this.fd, name: null, path, components };
    const name = components[components.length - 1]!;
    if (components.length === 1) return { dir: this.fd, name, path, components };
    // spelled canonically (no "", "." or trailing "/"): the directory's path is a prefix of the bytes
    const directory = joinedLength(components) === path.length ? path.subarray(0, path.length - name.length - 1) : joinedPrefix(components, components.length - 1);
    for (let i = 0; i < this.held.length; i++) {
      const d = this.held[i]!;
      if (d.path.equals(directory)) {
        if (i > 0) {
          this.held.splice(i, 1);
          this.held.unshift(d);
        }
        return { dir: d.fd, name, path, components };
      }
    }
    const parents = components.slice(0, -1);
    const copy = Buffer.from(directory);
    const fd = this.openDirectory(parents, copy, path);
    if (this.held.length >= HELD_DIRECTORIES) closeFd(this.held.pop()!.fd);
    this.held.unshift({ fd, path: copy, components: pathComponents(copy) });
    return { dir: fd, name, path, components };
  }

  /** What `path` names now, not following a final symlink; undefined when nothing is there. */
  stat(place: Place): EntryStat | undefined {
    return statAt(place.dir, place.name, place.path);
  }

  /** fd (O_PATH) of the directory `components` below the root; never through a symlink or out of the root. */
  private openDirectory(components: Uint8Array[], joined: Buffer, path: Uint8Array): number {
    if (!this.noOpenat2) {
      try {
        const fd = openat2(this.fd, joined, O_PATH | O_DIRECTORY | O_CLOEXEC, RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS, path);
        if (fd !== undefined) return fd;
        this.noOpenat2 = true;
      } catch (e) {
        // which component is wrong: found by the walk below, which fails there too
        const code = (e as NodeJS.ErrnoException).code;
        if (code !== "ELOOP" && code !== "ENOTDIR" && code !== "ENOENT" && code !== "EXDEV") throw e;
      }
    }
    let fd = this.fd;
    try {
      for (let i = 0; i < components.length; i++) {
        const prefix = joinedPrefix(components, i + 1);
        const st = statAt(fd, components[i]!, prefix);
        if (st === undefined) throw errnoError("ENOENT", `no such directory '${printable(prefix)}'`);
        if ((st.mode & S_IFMT) === S_IFLNK) throw new PathRefusal(`path goes through the symlink '${printable(prefix)}'`);
        if ((st.mode & S_IFMT) !== S_IFDIR) throw errnoError("ENOTDIR", `'${printable(prefix)}' is not a directory`);
        // O_NOFOLLOW|O_DIRECTORY: a symlink swapped in after the statx fails here (ENOTDIR), it is not followed
        const next = openAt(fd, components[i]!, O_PATH | O_DIRECTORY | O_NOFOLLOW, 0, prefix);
        if (fd !== this.fd) closeFd(fd);
        fd = next;
      }
    } catch (e) {
      if (fd !== this.fd) closeFd(fd);
      throw e;
    }
    return fd;
  }
}

/**
 * Whether the path of components `path` may name the one of `removed` or something below it, on
 * any file system (the root, no components, is above everything).
 */
export function mayBeAtOrBelow(path: Uint8Array[], removed: Uint8Array[]): boolean {
  if (path.length < removed.length) return false;
  for (let i = 0; i < removed.length; i++) if (!samePlaceMaybe(path[i]!, removed[i]!)) return false;
  return true;
}

/**
 * Whether two components may name one entry: equal but for ASCII case (a case-insensitive
 * directory), or either holds a byte beyond ASCII (Unicode case folding and normalisation can
 * match it to anything).
 */
function samePlaceMaybe(a: Uint8Array, b: Uint8Array): boolean {
  // indexed loops: for-of over a typed array is several times slower under Bun
  for (let i = 0; i < a.length; i++) if (a[i]! >= 0x80) return true;
  for (let i = 0; i < b.length; i++) if (b[i]! >= 0x80) return true;
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if ((a[i]! | 0x20) !== (b[i]! | 0x20) && a[i] !== b[i]) return false;
  return true;
}

function joinedLength(components: Uint8Array[]): number {
  let length = components.length - 1;
  for (let i = 0; i < components.length; i++) length += components[i]!.length;
  return length;
}

function errnoError(code: string, message: string): NodeJS.ErrnoException {
  const err = new Error(`${code}: ${message}`) as NodeJS.ErrnoException;
  err.code = code;
  return err;
}

/** The first `count` components joined by "/". */
function joinedPrefix(components: Uint8Array[], count: number): Buffer {
  let length = count - 1;
  for (let i = 0; i < count; i++) length += components[i]!.length;
  const out = Buffer.allocUnsafe(length);
  let at = 0;
  for (let i = 0; i < count; i++) {
    if (i) out[at++] = SLASH;
    out.set(components[i]!, at);
    at += components[i]!.length;
  }
  return out;
}

/**
 * The components of a stream path, "" and "." dropped: `d`, `./d` and `d/` are one path. No
 * components: the root ("" or slashes only). Refused: NUL, an absolute path, `..`.
 */
export function pathComponents(path: Uint8Array): Uint8Array[] {
  if (path.indexOf(0) >= 0) throw new PathRefusal("NUL byte in path");
  if (path[0] === SLASH) {
    for (let i = 1; i < path.length; i++) if (path[i] !== SLASH) throw new PathRefusal("absolute path");
    return [];
  }
  const components: Uint8Array[] = [];
  let start = 0;
  for (let i = 0; i <= path.length; i++) {
    if (i < path.length && path[i] !== SLASH) continue;
    const length = i - start;
    const first = path[start];
    if (length === 0 || (length === 1 && first === DOT)) {
      start = i + 1;
      continue;
    }
    if (length === 2 && first === DOT && path[start + 1] === DOT) throw new PathRefusal("'..' in path");
    components.push(length === path.length ? path : path.subarray(start, i));
    start = i + 1;
  }
  return components;
}
