import type { DirEntry, FileSystem, FsNode } from "./filesystem.ts";

const utf8 = new TextDecoder("utf-8", { fatal: true });

/**
 * A name for `ls -l`: as `ls -b` shows it, backslash escapes for control bytes and for bytes
 * that are not UTF-8 (octal), the rest as is.
 */
export function escapeName(name: Uint8Array): string {
  let text: string | undefined;
  try {
    text = utf8.decode(name);
  } catch {
    text = undefined;
  }
  let out = "";
  if (text !== undefined) {
    for (const ch of text) {
      const c = ch.codePointAt(0)!;
      out += ch === "\\" ? "\\\\" : c < 0x20 || c === 0x7f || (c >= 0x80 && c < 0xa0) ? octal(c) : ch;
    }
    return out;
  }
  for (const b of name) out += b === 0x5c ? "\\\\" : b >= 0x20 && b < 0x7f ? String.fromCharCode(b) : octal(b);
  return out;
}

function octal(b: number): string {
  return `\\${b.toString(8).padStart(3, "0")}`;
}

const TYPE_CHAR: Record<FsNode["kind"], string> = {
  file: "-", directory: "d", symlink: "l", "char-device": "c", "block-device": "b", fifo: "p", socket: "s",
};

export function modeString(node: FsNode): string {
  const m = node.mode;
  const bit = (mask: number, c: string) => (m & mask ? c : "-");
  const exec = (x: number, special: number, set: string, unset: string) => (m & special ? (m & x ? set : unset) : m & x ? "x" : "-");
  return (
    TYPE_CHAR[node.kind] +
    bit(0o400, "r") + bit(0o200, "w") + exec(0o100, 0o4000, "s", "S") +
    bit(0o040, "r") + bit(0o020, "w") + exec(0o010, 0o2000, "s", "S") +
    bit(0o004, "r") + bit(0o002, "w") + exec(0o001, 0o1000, "t", "T")
  );
}

/** The time as `ls -l --time-style=long-iso` prints it, in the local time zone. */
export function timeString(sec: number): string {
  const d = new Date(sec * 1000);
  const p = (n: number) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ${p(d.getHours())}:${p(d.getMinutes())}`;
}

/**
 * One `ls -l` line: mode, links, owner, group, size (or major, minor), mtime, name[ -> target]; then
 * one indented line per extended attribute, as `getfattr -d` shows it (name="value").
 */
export function longLine(fsys: FileSystem, e: DirEntry, shownName: string): string {
  const n = e.node;
  const size = n.rdev ? `${n.rdev.major}, ${n.rdev.minor}` : String(n.size);
  let line = `${modeString(n)} ${String(n.links).padStart(3)} ${String(n.uid).padStart(5)} ${String(n.gid).padStart(5)} ${size.padStart(10)} ${timeString(n.mtime.sec)} ${shownName}`;
  if (n.kind === "symlink") line += ` -> ${escapeName(fsys.readlink(n))}`;
  if (fsys.xattrs && !e.damage) for (const x of fsys.xattrs(n)) line += `\n    ${escapeName(x.name)}="${escapeName(x.value)}"`;
  return line;
}

/** A name for JSON: the string when it is UTF-8, else base64 of the bytes. */
export function jsonName(name: Uint8Array): { name: string } | { name_base64: string } {
  try {
    return { name: utf8.decode(name) };
  } catch {
    return { name_base64: Buffer.from(name).toString("base64") };
  }
}

export function jsonEntry(fsys: FileSystem, path: Uint8Array, e: DirEntry): Record<string, unknown> {
  const n = e.node;
  const p = jsonName(path);
  const out: Record<string, unknown> = {
    ...("name" in p ? { path: p.name } : { path_base64: p.name_base64 }),
    ...jsonName(e.name),
    type: n.kind,
    mode: n.mode,
    uid: n.uid,
    gid: n.gid,
    size: n.size,
    links: n.links,
    mtime: n.mtime.sec + n.mtime.nsec / 1e9,
    mtime_ns: (BigInt(n.mtime.sec) * 1_000_000_000n + BigInt(n.mtime.nsec)).toString(),
  };
  if (n.rdev) out.rdev = n.rdev;
  if (n.kind === "symlink") {
    const t = jsonName(fsys.readlink(n));
    if ("name" in t) out.target = t.name;
    else out.target_base64 = t.name_base64;
  }
  if (fsys.xattrs && !e.damage) {
    const xattrs = [...fsys.xattrs(n)].map((x) => ({ ...jsonName(x.name), value_base64: Buffer.from(x.value).toString("base64") }));
    if (xattrs.length) out.xattrs = xattrs;
  }
  if (e.damage) out.damage = e.damage.problem;
  return out;
}
