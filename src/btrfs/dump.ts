import { ImageError, type Location } from "../errors.ts";
import { formatLocalTime } from "./local-time.ts";
import { OutputBuffer } from "./output-buffer.ts";
import { COMMAND_NAMES } from "./protocol.ts";
import type { SendCommand, SendStreamParser } from "./stream.ts";
import { uuidText } from "./uuid.ts";

/**
 * Which btrfs-progs' `receive --dump` text to reproduce (btrfs-progs cmds/receive-dump.c):
 * - "6.2": paths and symlink/link/rename targets escaped; clone `from=`, xattr names and xattr data
 *   printed raw as C strings (up to a NUL); encoded_write fields separated by ", ".
 * - "6.9.1": also escapes clone `from=`, xattr names and xattr data (all of its bytes; the `data=`
 *   label is gone), and separates encoded_write fields by spaces only.
 */
export type DumpFormat = "6.2" | "6.9.1";

/** PATH_MAX of btrfs-progs' path_cat_out, which refuses longer joined paths */
const PATH_MAX = 4096;
const SLASH = 0x2f;
const BACKSLASH = 0x5c;

/** what C's escape for each control character is, by byte; 0 where it prints octal */
const C_ESCAPES = new Uint8Array(256);
for (const [c, e] of [
  [7, "a"],
  [8, "b"],
  [27, "e"],
  [12, "f"],
  [10, "n"],
  [13, "r"],
  [9, "t"],
  [11, "v"],
  [32, " "],
  [92, "\\"],
] as const)
  C_ESCAPES[c] = e.charCodeAt(0);

/** "%-16s" of each command name */
const TITLES: Record<string, Uint8Array> = {};
for (const name of COMMAND_NAMES) if (name) TITLES[name] = new TextEncoder().encode(name.padEnd(16));

/** The C string a byte array holds: up to its first NUL, as strlen sees it. */
function cString(bytes: Uint8Array): Uint8Array {
  const nul = bytes.indexOf(0);
  return nul < 0 ? bytes : bytes.subarray(0, nul);
}

/**
 * Prints commands as `btrfs receive --dump` does: the title padded to 16, the escaped full path
 * padded to 32 (at least one space), then the command's fields.
 */
export class ReceiveDumpPrinter {
  /** "." then the current subvolume: every path is joined to it */
  private subvolPath: Uint8Array = new Uint8Array([0x2e]);
  private readonly rootPath = new Uint8Array([0x2e]);
  /** the escaped subvolume path and its slash, kept while the subvolume stays the same */
  private subvolPrefix = new Uint8Array(0);
  private subvolPrefixWidth = 0;
  private subvolPrefixOf: Uint8Array | undefined;

  constructor(
    readonly out: OutputBuffer,
    readonly format: DumpFormat = "6.2",
    /** where a command offset is, for errors (the parser's reader knows the file) */
    private readonly locate: (offset: number) => Location = (offset) => ({ file: "send stream", offset }),
  ) {}

  /** Print every command of a parser; stops with its error, after printing what came before. */
  printAll(parser: SendStreamParser): number {
    let n = 0;
    try {
      for (let c = parser.read(); c; c = parser.read()) {
        this.print(c);
        n++;
      }
    } finally {
      this.out.flush();
    }
    return n;
  }

  print(c: SendCommand): void {
    const out = this.out;
    switch (c.type) {
      case "subvol":
      case "snapshot": {
        this.subvolPath = this.join(c, this.rootPath, c.path);
        this.head(c, this.subvolPath);
        out.ascii(`uuid=${uuidText(c.uuid)} transid=${c.ctransid}`);
        if (c.type === "snapshot") out.ascii(` parent_uuid=${uuidText(c.parentUuid)} parent_transid=${c.parentCtransid}`);
        break;
      }
      case "mkfile":
      case "mkdir":
      case "mkfifo":
      case "mksock":
      case "unlink":
      case "rmdir":
        this.lineInSubvol(c, c.path);
        break;
      case "mknod":
        this.headInSubvol(c, c.path);
        out.ascii(`mode=${c.mode.toString(8)} dev=0x${c.rdev.toString(16)}`);
        break;
      case "symlink":
      case "link":
        this.headInSubvol(c, c.path);
        out.ascii("dest=");
        this.escaped(cString(c.target));
        break;
      case "rename": {
        const to = this.join(c, this.subvolPath, c.to);
        this.headInSubvol(c, c.path);
        out.ascii("dest=");
        this.escaped(to);
        break;
      }
      case "write":
        this.headInSubvol(c, c.path);
        out.ascii("offset=");
        out.decimal(c.fileOffset);
        out.ascii(" len=");
        out.decimal(c.data.length);
        break;
      case "clone": {
        const from = this.join(c, this.subvolPath, c.clonePath);
        this.headInSubvol(c, c.path);
        // receive keeps the length in a C int, so it prints the low 32 bits sign-extended
        out.ascii(`offset=${c.fileOffset} len=${BigInt.asUintN(64, BigInt.asIntN(32, BigInt(c.length)))} from=`);
        if (this.format === "6.2") out.bytes(from);
        else this.escaped(from);
        out.ascii(` clone_offset=${c.cloneOffset}`);
        break;
      }
      case "set_xattr":
        this.headInSubvol(c, c.path);
        out.ascii("name=");
        if (this.format === "6.2") {
          out.bytes(cString(c.name));
          out.ascii(" data=");
          out.bytes(cString(c.data));
        } else {
          this.escaped(cString(c.name));
          out.byte(0x20);
          this.escaped(c.data);
        }
        out.ascii(` len=${c.data.length}`);
        break;
      case "remove_xattr":
        this.headInSubvol(c, c.path);
        out.ascii("name=");
        if (this.format === "6.2") out.bytes(cString(c.name));
        else this.escaped(cString(c.name));
        break;
      case "truncate":
        this.headInSubvol(c, c.path);
        out.ascii(`size=${c.size}`);
        break;
      case "chmod":
        this.headInSubvol(c, c.path);
        out.ascii(`mode=${c.mode.toString(8)}`);
        break;
      case "chown":
        this.headInSubvol(c, c.path);
        out.ascii("gid=");
        out.decimal(c.gid);
        out.ascii(" uid=");
        out.decimal(c.uid);
        break;
      case "utimes": {
        const at = this.time(c, c.atime.sec);
        const mt = this.time(c, c.mtime.sec);
        const ct = this.time(c, c.ctime.sec);
        this.headInSubvol(c, c.path);
        out.ascii("atime=");
        out.ascii(at);
        out.ascii(" mtime=");
        out.ascii(mt);
        out.ascii(" ctime=");
        out.ascii(ct);
        break;
      }
      case "update_extent":
        this.headInSubvol(c, c.path);
        out.ascii(`offset=${c.fileOffset} len=${c.size}`);
        break;
      case "encoded_write": {
        this.headInSubvol(c, c.path);
        const sep = this.format === "6.2" ? ", " : " ";
        out.ascii(
          `offset=${c.fileOffset} len=${c.data.length}${sep}unencoded_file_len=${c.unencodedFileLen}${sep}` +
            `unencoded_len=${c.unencodedLen}${sep}unencoded_offset=${c.unencodedOffset}${sep}` +
            `compression=${c.compression}${sep}encryption=${c.encryption}`,
        );
        break;
      }
      case "fallocate":
        this.headInSubvol(c, c.path);
        out.ascii(`mode=${c.mode | 0} offset=${c.fileOffset} len=${c.size}`);
        break;
      case "fileattr":
        // sic: btrfs-progs prints "0x" then the value in decimal
        this.headInSubvol(c, c.path);
        out.ascii(`fileattr=0x${c.fileattr}`);
        break;
      case "enable_verity":
        this.headInSubvol(c, c.path);
        out.ascii(`algorithm=${c.algorithm} block_size=${c.blockSize} salt_len=${c.salt.length} sig_len=${c.signature.length}`);
        break;
      case "end":
      case "unknown":
        return;
    }
    if (c.type !== "mkfile" && c.type !== "mkdir" && c.type !== "mkfifo" && c.type !== "mksock" && c.type !== "unlink" && c.type !== "rmdir") {
      out.byte(0x0a);
    }
    out.maybeFlush();
  }

  /** Title, escaped path in the subvolume, newline: the lines without fields. */
  private lineInSubvol(c: SendCommand, path: Uint8Array): void {
    this.checkJoin(c, this.subvolPath, cString(path));
    this.out.bytes(TITLES[c.type]!);
    this.inSubvol(path);
    this.out.byte(0x0a);
  }

  /** head() of a path in the current subvolume, written without building the joined path. */
  private headInSubvol(c: SendCommand, path: Uint8Array): void {
    this.checkJoin(c, this.subvolPath, cString(path));
    this.out.bytes(TITLES[c.type]!);
    this.out.spaces(Math.max(1, 32 - this.inSubvol(path)));
  }

  /** The escaped join of the subvolume path and `path` (checked by the caller); returns the characters printed. */
  private inSubvol(path: Uint8Array): number {
    const p2 = cString(path);
    if (this.subvolPrefixOf !== this.subvolPath) {
      // room first, so escaping cannot flush between here and the slice
      this.out.reserve(this.subvolPath.length * 4 + 1);
      const start = this.out.pos;
      const base = this.subvolPath;
      this.subvolPrefixWidth = this.escaped(base.subarray(0, base.length && base[base.length - 1] === SLASH ? base.length - 1 : base.length)) + 1;
      this.out.byte(SLASH);
      this.subvolPrefix = this.out.buf.slice(start, this.out.pos);
      this.out.pos = start;
      this.subvolPrefixOf = base;
    }
    this.out.bytes(this.subvolPrefix);
    return this.subvolPrefixWidth + this.escaped(p2.length && p2[p2.length - 1] === SLASH ? p2.subarray(0, p2.length - 1) : p2);
  }

  /** Title, escaped path, then spaces up to column 48 (16 + 32), at least one. */
  private head(c: SendCommand, path: Uint8Array): void {
    this.out.bytes(TITLES[c.type]!);
    this.out.spaces(Math.max(1, 32 - this.escaped(path)));
  }

  /** C-style escape of every byte that could break the line; returns the characters printed. */
  private escaped(bytes: Uint8Array): number {
    const out = this.out;
    out.reserve(bytes.length * 4);
    const b = out.buf;
    let p = out.pos;
    for (let i = 0; i < bytes.length; i++) {
      const c = bytes[i]!;
      if (c > 0x20 && c < 0x7f && c !== BACKSLASH) {
        b[p++] = c;
      } else if (C_ESCAPES[c]) {
        b[p++] = BACKSLASH;
        b[p++] = C_ESCAPES[c]!;
      } else {
        b[p++] = BACKSLASH;
        b[p++] = 0x30 + (c >> 6);
        b[p++] = 0x30 + ((c >> 3) & 7);
        b[p++] = 0x30 + (c & 7);
      }
    }
    const printed = p - out.pos;
    out.pos = p;
    return printed;
  }

  /** path_cat_out of btrfs-progs common/path-utils.c: one trailing slash off each, joined by one. */
  private join(c: SendCommand, base: Uint8Array, path: Uint8Array): Uint8Array {
    const p2 = cString(path);
    this.checkJoin(c, base, p2);
    const l1 = base.length && base[base.length - 1] === SLASH ? base.length - 1 : base.length;
    const l2 = p2.length && p2[p2.length - 1] === SLASH ? p2.length - 1 : p2.length;
    const joined = new Uint8Array(l1 + 1 + l2);
    joined.set(base.subarray(0, l1));
    joined[l1] = SLASH;
    joined.set(p2.subarray(0, l2), l1 + 1);
    return joined;
  }

  private checkJoin(c: SendCommand, base: Uint8Array, p2: Uint8Array): void {
    if (base.length + p2.length + 2 >= PATH_MAX) {
      this.fail(c, "path too long", `joined to ${base.length} bytes of subvolume path it exceeds PATH_MAX ${PATH_MAX}, where btrfs receive --dump stops`);
    }
  }

  private time(c: SendCommand, seconds: number | bigint): string {
    const text = formatLocalTime(seconds);
    if (text === undefined) this.fail(c, "time out of range", `${seconds} seconds since the epoch is beyond what localtime() converts`);
    return text;
  }

  private fail(c: SendCommand, what: string, detail: string): never {
    throw new ImageError(this.locate(c.offset), `command #${c.index} (${c.type}): ${what}`, detail);
  }
}

/** Print a whole stream as `btrfs receive --dump` would; the output is flushed even on error. */
export function dumpSendStream(parser: SendStreamParser, out = new OutputBuffer(), format: DumpFormat = "6.2"): number {
  return new ReceiveDumpPrinter(out, format, (offset) => parser.reader.locate(offset)).printAll(parser);
}
