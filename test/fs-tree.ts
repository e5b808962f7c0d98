// The tree listing of ../shared/fixtures/clonezilla/*.tree.txt (path, type, mode, uid:gid, size, mtime in
// ns, nlink, sha256 or link target), from a FileSystem of ours or from a directory the kernel mounted.
import fs from "node:fs";
import path from "node:path";
import { listXattrs } from "../native/libc-at.ts";
import type { FileSystem, FsNode } from "../src/fs/filesystem.ts";

const TYPE: Record<FsNode["kind"], string> = {
  file: "f", directory: "d", symlink: "l", "char-device": "c", "block-device": "b", fifo: "p", socket: "s",
};
const decoder = new TextDecoder();

function line(p: string, type: string, mode: number, uid: number, gid: number, size: number | string, mtimeNs: bigint, nlink: number, content: string): string {
  return [p, type, (mode & 0o7777).toString(8).padStart(4, "0"), `${uid}:${gid}`, size, mtimeNs, nlink, content].join("\t");
}

/** The xattrs column of lstree.py: name=value sorted by name, a value over 64 bytes as its sha256 and length; "-" for none. */
export function xattrColumn(xattrs: Iterable<{ name: Uint8Array; value: Uint8Array }>): string {
  const escape = (b: Uint8Array) => [...b].map((c) => (c === 0x5c ? "\\\\" : c >= 0x20 && c < 0x7f ? String.fromCharCode(c) : `\\x${c.toString(16).padStart(2, "0")}`)).join("");
  const items = [...xattrs].map((x) => ({ name: escape(x.name), value: x.value.length <= 64 ? escape(x.value) : `sha256:${new Bun.CryptoHasher("sha256").update(x.value).digest("hex")},len:${x.value.length}` }));
  items.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  return items.map((x) => `${x.name}=${x.value}`).join(";") || "-";
}

/**
 * Every node under the root of `fsys`, sorted by path; directories' sizes as 0 (they differ by driver).
 * With `xattrs`, a ninth column as lstree.py writes it.
 */
export function treeOf(fsys: FileSystem, options: { xattrs?: boolean } = {}): string[] {
  const out: string[] = [];
  const walk = (dir: FsNode, prefix: string) => {
    for (const { name, node } of fsys.list(dir)) {
      const p = prefix + decoder.decode(name);
      let content = "-";
      if (node.kind === "file") {
        const h = new Bun.CryptoHasher("sha256");
        const buf = new Uint8Array(1 << 20);
        for (let at = 0; at < node.size; ) {
          const n = fsys.readFile(node, at, buf);
          if (n === 0) throw new Error(`${p}: short read at ${at}`);
          h.update(buf.subarray(0, n));
          at += n;
        }
        content = h.digest("hex");
      } else if (node.kind === "symlink") content = decoder.decode(fsys.readlink(node));
      const size = node.kind === "directory" ? 0 : node.kind === "char-device" || node.kind === "block-device" ? `${node.rdev?.major},${node.rdev?.minor}` : node.size;
      const row = line(p, TYPE[node.kind], node.mode, node.uid, node.gid, size, BigInt(node.mtime.sec) * 1_000_000_000n + BigInt(node.mtime.nsec), node.links, content);
      out.push(options.xattrs ? `${row}\t${xattrColumn(fsys.xattrs?.(node) ?? [])}` : row);
      if (node.kind === "directory") walk(node, `${p}/`);
    }
  };
  walk(fsys.root(), "");
  return out.sort();
}

/** lstat's mtime in ns; Bun's bigint lstat gives 0 for times before 1970, so those are asked of Python's. */
function mtimeNs(full: string, st: fs.BigIntStats): bigint {
  if (st.mtimeNs !== 0n || fs.lstatSync(full).mtimeMs === 0) return st.mtimeNs;
  const r = Bun.spawnSync(["python3", "-c", "import os,sys; print(os.lstat(sys.argv[1]).st_mtime_ns)", full], { stdout: "pipe" });
  if (r.exitCode !== 0) throw new Error(`python3 cannot lstat ${full}`);
  return BigInt(r.stdout.toString().trim());
}

/** The same listing of a mounted directory; symlink targets under `stripPrefix` lose it. */
export function treeOfDirectory(root: string, stripPrefix?: string, options: { xattrs?: boolean } = {}): string[] {
  const out: string[] = [];
  const walk = (dir: string, prefix: string) => {
    for (const name of fs.readdirSync(dir)) {
      const full = path.join(dir, name);
      const st = fs.lstatSync(full, { bigint: true });
      const p = prefix + name;
      const mode = Number(st.mode);
      let type = "f";
      let content = "-";
      let size: number | string = Number(st.size);
      if (st.isDirectory()) (type = "d"), (size = 0);
      else if (st.isSymbolicLink()) {
        type = "l";
        content = fs.readlinkSync(full);
        if (stripPrefix && content.startsWith(stripPrefix)) content = content.slice(stripPrefix.length);
        size = Buffer.byteLength(content);
      } else if (st.isFIFO()) type = "p";
      else if (st.isSocket()) type = "s";
      else if (st.isCharacterDevice() || st.isBlockDevice()) {
        type = st.isCharacterDevice() ? "c" : "b";
        // glibc's major()/minor() of a 64-bit dev_t
        const dev = st.rdev;
        size = `${Number(((dev >> 8n) & 0xfffn) | ((dev >> 32n) & ~0xfffn))},${Number((dev & 0xffn) | ((dev >> 12n) & ~0xffn))}`;
      } else content = new Bun.CryptoHasher("sha256").update(fs.readFileSync(full)).digest("hex");
      const row = line(p, type, mode, Number(st.uid), Number(st.gid), size, mtimeNs(full, st), Number(st.nlink), content);
      out.push(options.xattrs ? `${row}\t${xattrColumn(listXattrs(Buffer.from(full)).map(([n, v]) => ({ name: n, value: v })))}` : row);
      if (type === "d") walk(full, `${p}/`);
    }
  };
  walk(root, "");
  return out.sort();
}
