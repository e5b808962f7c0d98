// NTFS through libntfs-3g (native/ntfs3g.ts), shown as ntfs-3g's FUSE driver shows it with its default
// options (ntfs-3g 2022.10 src/ntfs-3g.c: ntfs_fuse_getattr, ntfs_fuse_filldir): DOS names and the
// system files below record 16 hidden, every mode 0777, owned by whoever reads, Interix files as
// symlinks, fifos, sockets and devices, symlink and junction reparse points as symlinks.
import type { Pointer } from "bun:ffi";
import { AT_DATA, FILE_FIRST_USER, FILE_ROOT, MFT_RECORD_IS_DIRECTORY, NtfsCallError, type NtfsInodeFacts, NtfsMount } from "../../native/ntfs3g.ts";
import { ImageError } from "../errors.ts";
import type { Volume } from "../volume/volume.ts";
import { type DirEntry, type FileSystem, FsError, type FsNode, type Timestamp } from "./filesystem.ts";

const AT_INDEX_ALLOCATION = 0xa0;
const I30 = new Uint16Array([0x24, 0x49, 0x33, 0x30]);
const FILE_ATTR_HIDDEN = 0x2;
const FILE_ATTR_SYSTEM = 0x4;
const FILE_ATTR_REPARSE_POINT = 0x400;
const FILE_NAME_DOS = 2;
const ATTR_IS_COMPRESSED = 0x1;
const ATTR_IS_ENCRYPTED = 0x4000;
// Interix special files (layout.h INTX_FILE): an 8-byte magic, then major/minor (le64 each) or a UTF-16 target
const INTX_SYMBOLIC_LINK = "IntxLNK\x01";
const INTX_CHARACTER_DEVICE = "IntxCHR\0";
const INTX_BLOCK_DEVICE = "IntxBLK\0";
const INTX_DEVICE_SIZE = 24;
const PATH_MAX = 4096;
/** 100 ns intervals between 1601-01-01 and 1970-01-01 */
const NTFS_EPOCH_OFFSET = 116444736000000000n;

// bun-types lists only "utf-8" as a TextDecoder label; Bun decodes UTF-16LE all the same
const utf16 = new TextDecoder("utf-16le" as "utf-8", { fatal: true });
const utf8 = new TextEncoder();

/** What getattr needs beyond the node: the symlink target, read once when the node is described. */
interface NtfsNode extends FsNode {
  target?: Uint8Array;
}

export interface NtfsOptions {
  /** what absolute symlink and junction targets are made relative to, as ntfs-3g's mount point */
  mountPoint?: string;
}

export function detectNtfs(boot: Uint8Array): boolean {
  return boot.length >= 11 && String.fromCharCode(...boot.subarray(3, 11)) === "NTFS    ";
}

export function openNtfs(volume: Volume, opts: NtfsOptions = {}): FileSystem {
  return new NtfsFileSystem(volume, opts.mountPoint ?? "");
}

class NtfsFileSystem implements FileSystem {
  readonly type = "ntfs";
  private readonly mount: NtfsMount;
  private readonly clusterSize: number;
  private readonly owner = { uid: process.getuid?.() ?? 0, gid: process.getgid?.() ?? 0 };
  private readonly rootNode: NtfsNode;

  constructor(
    readonly volume: Volume,
    private readonly mountPoint: string,
  ) {
    const boot = volume.read(0, Math.min(512, volume.size));
    if (!detectNtfs(boot)) throw new FsError(volume.name, 3, "not an NTFS file system (no NTFS boot sector)");
    const bytesPerSector = boot[11]! | (boot[12]! << 8);
    const spc = boot[13]!;
    this.clusterSize = bytesPerSector * (spc > 0x80 ? 2 ** (256 - spc) : spc);
    this.mount = this.mountVolume();
    this.rootNode = this.describe(FILE_ROOT, "/");
  }

  private mountVolume(): NtfsMount {
    const { volume } = this;
    try {
      return new NtfsMount(volume.name, (into, offset) => {
        if (offset < 0 || offset + into.length > volume.size) throw new ImageError({ file: volume.name, offset }, `read of ${into.length} bytes past the end of the volume`);
        into.set(volume.read(offset, into.length));
      });
    } catch (e) {
      throw this.damage("/", e, "cannot be opened as NTFS");
    }
  }

  root(): FsNode {
    return this.rootNode;
  }

  lookup(path: Uint8Array): FsNode | undefined {
    let node: FsNode = this.rootNode;
    for (const part of new TextDecoder().decode(path).split("/")) {
      if (part === "" || part === ".") continue;
      if (node.kind !== "directory" || part === "..") return undefined;
      const want = utf8.encode(part);
      // only the entry named is described (opened): a directory of thousands costs one inode
      const found = this.names(node, "searched").find((e) => equalBytes(e.name, want));
      if (!found) return undefined;
      node = this.describe(found.mftNo, found.text);
    }
    return node;
  }

  list(dir: FsNode, onDamage?: (e: FsError) => void): Iterable<DirEntry> {
    try {
      return this.entries(dir);
    } catch (e) {
      if (!onDamage || !(e instanceof FsError)) throw e;
      onDamage(e);
      return [];
    }
  }

  readFile(file: FsNode, offset: number, into: Uint8Array): number {
    if (offset >= file.size || into.length === 0) return 0;
    const want = into.subarray(0, Math.min(into.length, file.size - offset));
    return this.withData(file, (na) => {
      let done = 0;
      while (done < want.length) {
        const n = this.mount.pread(na, offset + done, want.subarray(done));
        if (n <= 0) break;
        done += n;
      }
      return done;
    });
  }

  fileExtents(file: FsNode): Iterable<{ offset: number; length: number }> {
    if (file.size === 0) return [];
    return this.withData(file, (na) => {
      const facts = this.mount.attrFacts(na, true);
      if (!facts.runs || facts.dataFlags & (ATTR_IS_COMPRESSED | ATTR_IS_ENCRYPTED)) return [{ offset: 0, length: file.size }];
      const end = Math.min(file.size, facts.initializedSize);
      const out: { offset: number; length: number }[] = [];
      for (const [vcn, lcn, clusters] of facts.runs) {
        if (lcn < 0) continue;
        const from = vcn * this.clusterSize;
        const to = Math.min(end, (vcn + clusters) * this.clusterSize);
        if (to <= from) continue;
        const last = out[out.length - 1];
        if (last && last.offset + last.length === from) last.length += to - from;
        else out.push({ offset: from, length: to - from });
      }
      return out;
    });
  }

  readlink(link: FsNode): Uint8Array {
    const target = (link as NtfsNode).target;
    if (link.kind !== "symlink" || !target) throw this.damage(`inode ${link.id}`, undefined, "is not a symbolic link");
    return target;
  }

  streams(file: FsNode): Iterable<{ name: Uint8Array; size: number }> {
    return this.mount.withInode(file.id, (ni) => this.mount.namedStreams(ni)).map((s) => ({ name: utf8.encode(utf16.decode(s.name)), size: s.size }));
  }

  close(): void {
    this.mount.close();
    this.volume.close();
  }

  /** The names ntfs-3g lists: no DOS names, no "." or "..", no system files but the root's own. */
  private names(dir: FsNode, what: string): { name: Uint8Array; text: string; mftNo: number }[] {
    let raw;
    try {
      raw = this.mount.readdir(dir.id);
    } catch (e) {
      throw this.damage(`directory inode ${dir.id}`, e, `cannot be ${what}`);
    }
    const out: { name: Uint8Array; text: string; mftNo: number }[] = [];
    for (const e of raw) {
      if (e.nameType === FILE_NAME_DOS) continue;
      if (e.mftNo < FILE_FIRST_USER && e.mftNo !== FILE_ROOT) continue;
      let text: string;
      try {
        text = utf16.decode(e.name);
      } catch {
        throw this.damage(`directory inode ${dir.id}`, undefined, `holds a name that is not valid UTF-16 (inode ${e.mftNo})`);
      }
      if (text === "." || text === "..") continue;
      out.push({ name: utf8.encode(text), text, mftNo: e.mftNo });
    }
    return out;
  }

  /** The named entries, each described; an inode that cannot be read is that entry's damage. */
  private entries(dir: FsNode): DirEntry[] {
    return this.names(dir, "listed").map(({ name, text, mftNo }) => {
      try {
        return { name, node: this.describe(mftNo, text) };
      } catch (err) {
        if (!(err instanceof FsError)) throw err;
        return { name, node: this.unreadable(mftNo), damage: err };
      }
    });
  }

  /** ntfs_fuse_getattr, for one inode. */
  private describe(mftNo: number, what: string): NtfsNode {
    try {
      return this.mount.withInode(mftNo, (ni) => {
        const facts = this.mount.inodeFacts(ni, mftNo);
        const [, mtime, ctime, atime] = facts.times.map(ntfsTime) as [Timestamp, Timestamp, Timestamp, Timestamp];
        const node: NtfsNode = { id: mftNo, kind: "file", mode: 0o777, ...this.owner, size: 0, links: 1, mtime, atime, ctime };
        this.fill(ni, facts, node);
        return node;
      });
    } catch (e) {
      if (e instanceof FsError) throw e;
      throw this.damage(`${what} (inode ${mftNo})`, e, "cannot be read");
    }
  }

  /** The kind, size, links and target of an open inode, as ntfs_fuse_getattr finds them. */
  private fill(ni: Pointer, facts: NtfsInodeFacts, node: NtfsNode): void {
    if (facts.fileAttributes & FILE_ATTR_REPARSE_POINT) {
      const target = this.mount.reparseTarget(ni, this.mountPoint);
      if (target !== undefined) {
        node.kind = "symlink";
        node.target = utf8.encode(target);
        node.size = node.target.length;
        return;
      }
    }
    if (facts.recordFlags & MFT_RECORD_IS_DIRECTORY) {
      node.kind = "directory";
      node.size = this.mount.withAttr(ni, AT_INDEX_ALLOCATION, I30, (na) => this.mount.attrFacts(na, false).dataSize) ?? 0;
      return;
    }
    node.links = facts.linkCount;
    const data = this.mount.withAttr(ni, AT_DATA, new Uint16Array(0), (na) => {
      const size = this.mount.attrFacts(na, false).dataSize;
      const interix = facts.fileAttributes & FILE_ATTR_SYSTEM && size > 8 && size <= 8 + 2 * PATH_MAX;
      const head = interix ? new Uint8Array(size) : undefined;
      if (head && this.mount.pread(na, 0, head) !== size) throw new Error("short read of an Interix file");
      return { size, head };
    });
    node.size = data?.size ?? 0;
    if (!data || !(facts.fileAttributes & FILE_ATTR_SYSTEM)) return;
    if (!(facts.fileAttributes & FILE_ATTR_HIDDEN) && data.size <= 1) node.kind = data.size === 0 ? "fifo" : "socket";
    if (!data.head) return;
    const magic = String.fromCharCode(...data.head.subarray(0, 8));
    const dv = new DataView(data.head.buffer);
    if ((magic === INTX_BLOCK_DEVICE || magic === INTX_CHARACTER_DEVICE) && data.size === INTX_DEVICE_SIZE) {
      node.kind = magic === INTX_BLOCK_DEVICE ? "block-device" : "char-device";
      node.rdev = { major: Number(dv.getBigUint64(8, true)), minor: Number(dv.getBigUint64(16, true)) };
    } else if (magic === INTX_SYMBOLIC_LINK) {
      node.kind = "symlink";
      node.target = utf8.encode(utf16.decode(data.head.subarray(8, 8 + ((data.size - 8) & ~1))));
      node.size = node.target.length;
    }
  }

  /** What a directory entry alone says of an inode that cannot be read. */
  private unreadable(mftNo: number): FsNode {
    const zero = { sec: 0, nsec: 0 };
    return { id: mftNo, kind: "file", mode: 0, ...this.owner, size: 0, links: 1, mtime: zero, atime: zero };
  }

  private withData<T>(file: FsNode, fn: (na: Pointer) => T): T {
    try {
      const out = this.mount.withInode(file.id, (ni) => this.mount.withAttr(ni, AT_DATA, new Uint16Array(0), fn));
      if (out === undefined) throw new Error("no data attribute");
      return out;
    } catch (e) {
      if (e instanceof FsError) throw e;
      throw this.damage(`inode ${file.id}`, e, "data cannot be read");
    }
  }

  /** An FsError for damage found by libntfs-3g (or by a read of the volume under it). */
  private damage(what: string, cause: unknown, problem: string): FsError {
    const read = cause instanceof NtfsCallError ? cause.readError : undefined;
    const detail = read instanceof Error ? read.message : cause instanceof NtfsCallError ? `${cause.call}: ${errnoName(cause.errno)}` : cause instanceof Error ? cause.message : "";
    return new FsError(this.volume.name, read instanceof ImageError ? read.where.offset : undefined, `${what} ${problem}${detail ? ` (${detail})` : ""}`);
  }
}

function ntfsTime(t: bigint): Timestamp {
  const unix = t - NTFS_EPOCH_OFFSET;
  let sec = unix / 10_000_000n;
  let rest = unix % 10_000_000n;
  if (rest < 0n) {
    rest += 10_000_000n;
    sec -= 1n;
  }
  return { sec: Number(sec), nsec: Number(rest) * 100 };
}

function equalBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

const ERRNO_NAMES: Record<number, string> = { 2: "ENOENT", 5: "EIO", 12: "ENOMEM", 13: "EACCES", 22: "EINVAL", 95: "EOPNOTSUPP", 74: "EBADMSG", 117: "EUCLEAN" };
function errnoName(n: number): string {
  return ERRNO_NAMES[n] ?? `errno ${n}`;
}
