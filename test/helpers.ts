import { afterAll, expect, test } from "bun:test";
import { spawn, spawnSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import type { ChunkSource } from "../src/source/chunk-source.ts";
import { ImageError } from "../src/errors.ts";
import { openImage } from "../src/formats/detect.ts";

export const FIXTURES = path.join(import.meta.dir, "..", "fixtures");
export const CLI = path.join(import.meta.dir, "..", "src", "cli", "main.ts");

export interface ManifestRow {
  files: string[];
  format: string;
  compression: string;
  restoredSha256: string;
  restoredSize: number;
  usedBlocks: string;
  blockSize: string;
  notes: string;
}

/** The volume an image file restores to, in memory. */
export function restoredBytes(file: string): Uint8Array {
  const image = openImage(file);
  try {
    return restoreToBuffer(image);
  } finally {
    image.close();
  }
}

/** Rows of fixtures/manifest.tsv (and manifest-extra.tsv when present). */
export function manifest(): ManifestRow[] {
  const rows: ManifestRow[] = [];
  for (const name of ["manifest.tsv", "manifest-extra.tsv"]) {
    const file = path.join(FIXTURES, name);
    if (!fs.existsSync(file)) continue;
    const [head, ...lines] = fs.readFileSync(file, "utf8").trimEnd().split("\n");
    const cols = head!.split("\t");
    for (const line of lines) {
      const v = line.split("\t");
      const get = (c: string) => v[cols.indexOf(c)] ?? "";
      rows.push({
        files: get("file").split(" "),
        format: get("format"),
        compression: get("compression"),
        restoredSha256: get("restored_sha256"),
        restoredSize: Number(get("restored_size")),
        usedBlocks: get("used_blocks"),
        blockSize: get("block_size"),
        notes: get("notes"),
      });
    }
  }
  return rows;
}

/** The manifest's reference restore of one fixture file: its sha256 and size. */
export function restoredReference(file: string): { sha256: string; size: number } {
  const row = manifest().find((r) => r.files.includes(file));
  if (!row) throw new Error(`fixtures/manifest*.tsv has no row for ${file}`);
  return { sha256: row.restoredSha256, size: row.restoredSize };
}

export function fixture(name: string): string {
  return path.join(FIXTURES, name);
}

/**
 * The broken inputs of test/failure/KIND/ (the generators make-*.ts and their notes left out), each
 * named by the error it must produce: the text before the first dot, dashes for spaces ("--" for a
 * dash of its own, as in MAGIC--BEGIN--TAIL). Registers a
 * test that fails when the folder is missing or empty, so that a corpus cannot silently test nothing.
 */
export function failureCorpus(kind: string): { dir: string; files: string[]; expected(file: string): string } {
  const dir = path.join(import.meta.dir, "failure", kind);
  const files = fs.existsSync(dir) ? fs.readdirSync(dir).filter((f) => !/\.(ts|sh|md)$/.test(f)).sort() : [];
  test(`test/failure/${kind} holds broken inputs`, () => {
    expect(fs.existsSync(dir)).toBe(true);
    expect(files.length).toBeGreaterThan(0);
  });
  return { dir, files, expected: (file) => file.slice(0, file.indexOf(".")).replaceAll("--", "\0").replaceAll("-", " ").replaceAll("\0", "-") };
}

let scratch: string | undefined;
/**
 * A fresh directory under one per-process scratch directory, removed after the last test file
 * (test/setup.ts, preloaded by bunfig.toml: bun test fires no process "exit" event, and the
 * scratch of a full run is ~3 GB).
 */
export function tempDir(): string {
  scratch ??= fs.mkdtempSync(path.join(os.tmpdir(), "imgtool-test-"));
  return fs.mkdtempSync(path.join(scratch, "t-"));
}

/** Remove the scratch directory and everything tempDir() made in it. */
export function removeScratch(): void {
  try {
    if (scratch) fs.rmSync(scratch, { recursive: true, force: true });
    scratch = undefined;
  } finally {
    // even when the scratch cannot go (a mount a failed test left in it): this one holds a copy of bun
    if (otherUsers && "root" in otherUsers) fs.rmSync(otherUsers.root, { recursive: true, force: true });
    otherUsers = undefined;
  }
}

/** `s` as one word of a `sh -c` command, whatever it holds (spaces, quotes, non-ASCII). */
export function shellWord(s: string): string {
  return `'${s.replaceAll("'", "'\\''")}'`;
}

/** Where a test can run the CLI as another user: bun and the CLI's sources in a directory that user can enter. */
export interface OtherUserRuntime {
  /** a fresh 0755 directory whose parents every user can enter; make the test's files under it */
  root: string;
  bun: string;
  cli: string;
}

let otherUsers: OtherUserRuntime | { reason: string } | undefined;

/** Every directory from `dir` up to / lets others enter it. */
function enterableByAll(dir: string): boolean {
  for (let d = path.resolve(dir); ; d = path.dirname(d)) {
    try {
      if ((fs.statSync(d).mode & 0o001) === 0) return false;
    } catch {
      return false;
    }
    if (d === path.dirname(d)) return true;
  }
}

/**
 * A copy of bun and of what the CLI loads (src, native, citty) in a directory every user can reach,
 * made once per run: the checkout, bun (under node_modules) and TMPDIR may all lie under a private
 * 0700 directory such as /root, which a child running as `nobody` cannot even use as its working
 * directory. Instead of the program, the reason no such directory could be made.
 */
export function otherUserRuntime(): OtherUserRuntime | { reason: string } {
  if (otherUsers) return otherUsers;
  const candidates = [os.tmpdir(), "/tmp", "/var/tmp", "/dev/shm"];
  const base = candidates.find((d) => enterableByAll(d) && isWritable(d));
  if (!base) {
    otherUsers = { reason: `none of ${candidates.join(", ")} is a directory every user can enter and this one can write` };
    return otherUsers;
  }
  const root = fs.mkdtempSync(path.join(base, "imgtool-other-user-"));
  fs.chmodSync(root, 0o755);
  const top = path.join(import.meta.dir, "..");
  const app = path.join(root, "app");
  for (const part of ["src", "native", "package.json"]) fs.cpSync(path.join(top, part), path.join(app, part), { recursive: true, dereference: true });
  const citty = path.dirname(fs.realpathSync(Bun.resolveSync("citty/package.json", top)));
  fs.cpSync(citty, path.join(app, "node_modules", "citty"), { recursive: true, dereference: true });
  const bun = path.join(root, "bun");
  spawnSync("chmod", ["-R", "a+rX", root]);
  try {
    fs.linkSync(process.execPath, bun); // its mode is the original's: already executable by all
  } catch {
    fs.copyFileSync(process.execPath, bun);
    fs.chmodSync(bun, 0o755);
  }
  otherUsers = { root, bun, cli: path.join(app, "src", "cli", "main.ts") };
  return otherUsers;
}

function isWritable(dir: string): boolean {
  try {
    fs.accessSync(dir, fs.constants.W_OK);
    return true;
  } catch {
    return false;
  }
}

/** mulberry32: the same "random" numbers in [0, 1) on every run of a seed */
export function seededRandom(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export function sha256File(file: string): string {
  const h = new Bun.CryptoHasher("sha256");
  const fd = fs.openSync(file, "r");
  const buf = new Uint8Array(1 << 20);
  for (let n; (n = fs.readSync(fd, buf)) > 0; ) h.update(buf.subarray(0, n));
  fs.closeSync(fd);
  return h.digest("hex");
}

export function sha256(data: Uint8Array): string {
  return new Bun.CryptoHasher("sha256").update(data).digest("hex");
}

/** Run the CLI; stdin from a file when given. */
export function runCli(args: string[], opts: { stdinFile?: string; env?: Record<string, string> } = {}) {
  const r = Bun.spawnSync([process.execPath, CLI, ...args], {
    stdin: opts.stdinFile ? Bun.file(opts.stdinFile) : "ignore",
    stdout: "pipe",
    stderr: "pipe",
    env: { ...process.env, ...opts.env },
  });
  return { code: r.exitCode, stdout: r.stdout, stderr: r.stderr.toString() };
}

/** The path of a peer tool, or undefined (tests then skip and say why). */
export function which(tool: string): string | undefined {
  return Bun.which(tool, { PATH: `${process.env.PATH}:/usr/sbin:/sbin` }) ?? undefined;
}

/** Why a test cannot run here: the first of `tools` that is not installed; undefined when all are. */
export function missingTools(...tools: string[]): string | undefined {
  const missing = tools.find((tool) => !which(tool));
  return missing && `${missing} is not installed`;
}

/**
 * `test`, or where `reason` says what is missing (a peer tool, root), a skipped test whose reason is
 * printed: a test that returned early instead would count as passed.
 */
export function peerTest(reason: string | false | undefined): typeof test {
  if (!reason) return test;
  const skipped = (name: string, ...rest: unknown[]) => {
    console.log(`skipped: ${name}: ${reason}`);
    return (test.skip as (...args: unknown[]) => void)(name, ...rest);
  };
  return skipped as unknown as typeof test;
}

/** The volume as restore writes it: the data runs laid into a zero-filled buffer of deviceSize. */
export function restoreToBuffer(img: { info: { deviceSize: number }; dataRuns(): Iterable<{ offset: number; data: Uint8Array }> }): Uint8Array {
  const out = new Uint8Array(img.info.deviceSize);
  let last = -1;
  for (const run of img.dataRuns()) {
    expect(run.offset).toBeGreaterThan(last);
    last = run.offset;
    out.set(run.data, run.offset);
  }
  return out;
}

/** A FIFO fed by `cat`, so the image is read as a pipe (no size, no seeking). */
export function throughFifo(file: string): string {
  const fifo = path.join(tempDir(), "fifo");
  spawnSync("mkfifo", [fifo]);
  spawn("sh", ["-c", `cat ${shellWord(file)} > ${shellWord(fifo)}`], { stdio: "ignore" });
  return fifo;
}

/** A source over bytes in memory handing out at most `step` bytes a read, to exercise every refill path. */
export function memorySource(data: Uint8Array, step = Number.POSITIVE_INFINITY, name = "mem"): ChunkSource {
  let pos = 0;
  return {
    name,
    size: data.length,
    read(into) {
      const n = Math.min(step, into.length, data.length - pos);
      into.set(data.subarray(pos, pos + n));
      pos += n;
      return n;
    },
    locate: (offset) => ({ file: name, offset }),
    close() {},
  };
}

/** The ImageError that `f` throws (the test fails if it throws something else or nothing). */
export function errorOf(f: () => unknown): ImageError {
  try {
    f();
  } catch (e) {
    expect(e).toBeInstanceOf(ImageError);
    return e as ImageError;
  }
  throw new Error("no error");
}

/** The first line a child process writes to a piped stream (read across as many chunks as it comes in). */
export async function firstLine(stream: ReadableStream<Uint8Array>): Promise<string> {
  const reader = stream.getReader();
  let text = "";
  try {
    while (!text.includes("\n")) {
      const { value, done } = await reader.read();
      if (done) break;
      text += new TextDecoder().decode(value);
    }
  } finally {
    reader.releaseLock();
  }
  return text.split("\n")[0]!;
}

/**
 * A btrfs of `mib` MiB on a loop device, made and mounted at the first setup() (mkfs is mkfs.btrfs's
 * path), unmounted after the describe block that calls this (an umount waits for writeback: seconds
 * on a loaded machine).
 */
export function loopBtrfs(mkfs: string, mib = 300): { mountPoint: string; setup: () => void } {
  const work = tempDir();
  const mountPoint = path.join(work, "mnt");
  let mounted = false;
  const setup = () => {
    if (mounted) return;
    const volume = path.join(work, "vol");
    fs.writeFileSync(volume, "");
    fs.truncateSync(volume, mib << 20);
    fs.mkdirSync(mountPoint);
    expect(spawnSync(mkfs, ["-q", "-f", volume]).status).toBe(0);
    const mount = spawnSync("mount", ["-o", "loop", volume, mountPoint]);
    if (mount.status !== 0) throw new Error(`mount -o loop failed: ${mount.stderr}`);
    mounted = true;
  };
  afterAll(() => {
    if (mounted) spawnSync("umount", [mountPoint]);
  }, { timeout: 60_000 });
  return { mountPoint, setup };
}
