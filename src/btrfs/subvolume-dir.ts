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
}

let noOpenat2 = process.env.IMGTOOL_NO_OPENAT2 === "1";

const SLASH = 0x2f;
const DOT = 0x2e;

/**
 * One subvolume's directory, held open: every stream path is resolved from this fd, as the
 * directory is now. The kernel walks the directories with openat2 RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS
 * (an O_NOFOLLOW|O_DIRECTORY openat per component where the kernel has no openat2); a path with
 * `..`, an absolute path, or one whose directories include a symlink is refused. The path "" (or
 * "/") is the root itself, which callers must not remove, rename or replace.
 *
 * The directory of the last path is kept open for the next command with the same directory path
 * (btrfs send gives chown, chmod and utimes of one file in a row) only until the caller reports a
 * change of names (`changed`: any create, link, rename or removal); without one, resolving the
 * same path again gives the same directory, so nothing a rename or a new symlink makes can be
 * stale.
 */
export class SubvolumeDir {
  private held: { path: Buffer; fd: number } | undefined;
  /** how many `at` bodies are running: a nested one (rename's target) must not close the outer one's directory */
  private depth = 0;

  private constructor(
    /** O_RDONLY|O_DIRECTORY fd of the root: fchmod, fchown, futimens, fsetxattr work on it */
    readonly fd: number,
  ) {}

  /** Open the directory `name` (one component) of `parentFd`, refusing a symlink. */
  static open(parentFd: number, name: Uint8Array): SubvolumeDir {
    return new SubvolumeDir(openAt(parentFd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW, 0, name));
  }

  close(): void {
    this.changed();
    closeFd(this.fd);
  }

  /** Names under the root were created, linked, renamed or removed: every path is resolved afresh. */
  changed(): void {
    if (!this.held) return;
    closeFd(this.held.fd);
    this.held = undefined;
  }

  /** Run `body` with the place of `path`: the directory that holds its last component. */
  at<T>(path: Uint8Array, body: (place: Place) => T): T {
    const components = pathComponents(path);
    if (components.length === 0) return body({ dir: this.fd, name: null, path });
    const name = components[components.length - 1]!;
    if (components.length === 1) return body({ dir: this.fd, name, path });
    const directory = joinedPrefix(components, components.length - 1);
    if (this.held?.path.equals(directory)) return this.within(body, { dir: this.held.fd, name, path });
    const fd = this.openDirectory(components.slice(0, -1), directory, path);
    if (this.depth > 0) {
      try {
        return this.within(body, { dir: fd, name, path });
      } finally {
        closeFd(fd);
      }
    }
    this.changed();
    this.held = { path: directory, fd };
    return this.within(body, { dir: fd, name, path });
  }

  private within<T>(body: (place: Place) => T, place: Place): T {
    this.depth++;
    try {
      return body(place);
    } finally {
      this.depth--;
    }
  }

  /** What `path` names now, not following a final symlink; undefined when nothing is there. */
  stat(place: Place): EntryStat | undefined {
    return statAt(place.dir, place.name, place.path);
  }

  /** fd (O_PATH) of the directory `components` below the root; never through a symlink or out of the root. */
  private openDirectory(components: Uint8Array[], joined: Buffer, path: Uint8Array): number {
    if (!noOpenat2) {
      try {
        const fd = openat2(this.fd, joined, O_PATH | O_DIRECTORY | O_CLOEXEC, RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS, path);
        if (fd !== undefined) return fd;
        noOpenat2 = true;
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
  if (path.includes(0)) throw new PathRefusal("NUL byte in path");
  if (path.every((b) => b === SLASH)) return [];
  if (path[0] === SLASH) throw new PathRefusal("absolute path");
  const components: Uint8Array[] = [];
  let start = 0;
  for (let i = 0; i <= path.length; i++) {
    if (i < path.length && path[i] !== SLASH) continue;
    const c = path.subarray(start, i);
    start = i + 1;
    if (c.length === 0 || (c.length === 1 && c[0] === DOT)) continue;
    if (c.length === 2 && c[0] === DOT && c[1] === DOT) throw new PathRefusal("'..' in path");
    components.push(c);
  }
  return components;
}
