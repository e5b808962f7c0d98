// Seeded mutants of every fixture kind, each run through the CLI with a time limit and a memory
// measurement, and judged: exit 0 with the exact bytes, or one line `imgtool: FILE: ...` and exit
// 3/4, nothing left behind. Used by mutants.test.ts (CI size) and run.ts (a large run by hand).
import { spawnSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { partcloneCrc32, PARTCLONE_CRC_SEED } from "../../src/checksum/crc32.ts";
import { crc32c } from "../../native/crc32c.ts";
import { concatBytes } from "../../src/bytes.ts";
import { seededRandom } from "../helpers.ts";

const ROOT = path.join(import.meta.dir, "..", "..");
const FIXTURES = path.join(ROOT, "fixtures");
const MAIN = path.join(ROOT, "src", "cli", "main.ts");
const BUN = process.execPath;

/**
 * Per command: the CPU time (user + system, so that a loaded machine does not count) and peak
 * resident memory a mutant may take; a command still running after `wallSeconds` is killed.
 */
export const LIMITS = { seconds: 20, rssMiB: 300, wallSeconds: 90 } as const;
/** A hard ceiling on address space so that a runaway mutant cannot take the machine down with it. */
const ADDRESS_SPACE = 4 * 1024 ** 3;

export type Compressor = "gzip" | "zstd" | "xz" | "bzip2" | "lz4";

/** A header field of the (decompressed) image: where it is, how wide, and how to keep its checksum valid. */
interface Field {
  name: string;
  at: number;
  width: 1 | 2 | 4 | 8;
}

export interface Subject {
  /** fixture file names: one, or the pieces of a split set in order */
  files: string[];
  kind: "image" | "btrfs";
  /** image: the compression around it (mutated inside, then compressed again) */
  compressor?: Compressor;
  /** image header fields worth setting to absurd values */
  fields: Field[];
  /** recompute the header's own checksum after a field was set */
  fixHeader?: (b: Uint8Array) => void;
  /**
   * Byte ranges [start, end) of the fixture that no checksum covers: a change there may restore
   * different bytes with exit 0 (nothing could notice). Everywhere else, exit 0 means exact bytes.
   */
  unprotected: (size: number) => Array<[number, number]>;
}

const partcloneV2Fields: Field[] = [
  { name: "fs total size", at: 52, width: 8 },
  { name: "fs total blocks", at: 60, width: 8 },
  { name: "fs used blocks", at: 68, width: 8 },
  { name: "fs used blocks (bitmap)", at: 76, width: 8 },
  { name: "block size", at: 84, width: 4 },
  { name: "checksum mode", at: 96, width: 2 },
  { name: "checksum size", at: 98, width: 2 },
  { name: "blocks per checksum", at: 100, width: 4 },
  { name: "bitmap mode", at: 105, width: 1 },
];
const fixPartcloneV2 = (b: Uint8Array) => {
  if (b.length >= 110) new DataView(b.buffer, b.byteOffset).setUint32(106, partcloneCrc32(PARTCLONE_CRC_SEED, b.subarray(0, 106)), true);
};
const partcloneV1Fields: Field[] = [
  { name: "block size", at: 36, width: 4 },
  { name: "fs total size", at: 40, width: 8 },
  { name: "fs total blocks", at: 48, width: 8 },
  { name: "fs used blocks", at: 56, width: 8 },
];
const ntfscloneFields: Field[] = [
  { name: "cluster_size", at: 18, width: 4 },
  { name: "device_size", at: 22, width: 8 },
  { name: "nr_clusters", at: 30, width: 8 },
  { name: "inuse", at: 38, width: 8 },
  { name: "offset_to_image_data", at: 46, width: 4 },
];
// CLocalHeader follows the volume header (512), the main header (16384 + 4-byte sum) and the MBR
// and local-header magics; its fields are found by their place after MAGIC-BEGIN-LOCALHEADER
const partimageFields: Field[] = [
  { name: "volume number", at: 96, width: 4 },
  { name: "mbr count", at: 512 + 9792, width: 4 },
];

const v2Checked = () => [] as Array<[number, number]>;
/**
 * partclone 0001: no header checksum, the byte bitmap has none either, and the 0001 CRC sees only
 * the first byte of each block (partclone's own bug): nearly nothing is covered.
 */
const v1Unprotected = () => (size: number) => [[0, size]] as Array<[number, number]>;

export function subjects(): Subject[] {
  const list: Subject[] = [
    { files: ["ext4.ext4-ptcl-img"], kind: "image", fields: partcloneV2Fields, fixHeader: fixPartcloneV2, unprotected: v2Checked },
    // checksum NONE: the data is covered by nothing
    {
      files: ["ext4a0.ext4-ptcl-img"],
      kind: "image",
      fields: partcloneV2Fields,
      fixHeader: fixPartcloneV2,
      unprotected: (size) => [[110 + 128 + 4, size]],
    },
    { files: ["ext4-xxh64-k7.ext4-ptcl-img"], kind: "image", fields: partcloneV2Fields, fixHeader: fixPartcloneV2, unprotected: v2Checked },
    { files: ["ext4-xxh128.ext4-ptcl-img"], kind: "image", fields: partcloneV2Fields, fixHeader: fixPartcloneV2, unprotected: v2Checked },
    { files: ["ext4-noreseed.ext4-ptcl-img"], kind: "image", fields: partcloneV2Fields, fixHeader: fixPartcloneV2, unprotected: v2Checked },
    { files: ["ext4-1k-noreseed-k7.ext4-ptcl-img"], kind: "image", fields: partcloneV2Fields, fixHeader: fixPartcloneV2, unprotected: v2Checked },
    { files: ["ext4-v1.ext4-ptcl-img"], kind: "image", fields: partcloneV1Fields, unprotected: v1Unprotected() },
    { files: ["ext2-v1-crc8.ext2-ptcl-img"], kind: "image", fields: partcloneV1Fields, unprotected: v1Unprotected() },
    // ntfsclone has no checksum anywhere
    { files: ["ntfs.ntfsclone-img"], kind: "image", fields: ntfscloneFields, unprotected: (size) => [[0, size]] },
    { files: ["ntfs.ntfsclone-img.gz"], kind: "image", compressor: "gzip", fields: ntfscloneFields, unprotected: () => [] },
    // partimage: the volume header and the bitmap carry no checksum of their own
    { files: ["ext2-z0.partimg.000"], kind: "image", fields: partimageFields, unprotected: (size) => [[0, size]] },
    { files: ["ext2-z1.partimg.gz.000"], kind: "image", fields: partimageFields, unprotected: () => [[0, 512]] },
    { files: ["ntfs.ntfs-ptcl-img.aa", "ntfs.ntfs-ptcl-img.ab", "ntfs.ntfs-ptcl-img.ac"], kind: "image", fields: partcloneV2Fields, fixHeader: fixPartcloneV2, unprotected: v2Checked },
  ];
  for (const c of ["gzip", "zstd", "xz", "bzip2", "lz4"] as const) {
    const ext = { gzip: "gz", zstd: "zst", xz: "xz", bzip2: "bz2", lz4: "lz4" }[c];
    list.push({ files: [`ntfs.ntfs-ptcl-img.${ext}`], kind: "image", compressor: c, fields: partcloneV2Fields, fixHeader: fixPartcloneV2, unprotected: () => [] });
  }
  for (const f of ["full-v1.btrfs-send", "incr-v1.btrfs-send", "nodata-v1.btrfs-send", "v2-zstd.btrfs-send", "v2-zlib-lzo.btrfs-send", "sparse-v2.btrfs-send"]) {
    list.push({ files: [f], kind: "btrfs", fields: [], unprotected: () => [] });
  }
  return list;
}

// ---- seeded randomness ----

export class Rng {
  readonly next: () => number;
  constructor(seed: number) {
    this.next = seededRandom(seed >>> 0 || 0x9e3779b9);
  }
  int(n: number): number {
    return Math.floor(this.next() * n);
  }
  pick<T>(a: readonly T[]): T {
    return a[this.int(a.length)]!;
  }
  /** an offset in [0, size), half the time in the first 8 KiB where the headers are */
  offset(size: number): number {
    return this.next() < 0.5 ? this.int(Math.min(size, 8192)) : this.int(size);
  }
}

// ---- mutants ----

export interface Mutant {
  subject: Subject;
  seed: number;
  /** what was done, for messages: "bitflip ntfs.ntfsclone-img@1234" */
  what: string;
  /** file name → bytes of the mutated set (pieces not named are copied unchanged; null = deleted) */
  files: Map<string, Uint8Array | null>;
  /** bytes changed, as [file, offset] (the fixture's own offsets); empty when nothing maps back */
  touched: Array<[string, number]>;
  /** the mutation is a change no checksum can see (see Subject.unprotected) */
  undetectable: boolean;
  /** when set, every command must fail with a message matching this */
  mustFail?: RegExp;
}

const decodedCache = new Map<string, Uint8Array>();
const rawCache = new Map<string, Uint8Array>();

function raw(file: string): Uint8Array {
  let b = rawCache.get(file);
  if (!b) rawCache.set(file, (b = new Uint8Array(fs.readFileSync(path.join(FIXTURES, file)))));
  return b;
}

const TOOL: Record<Compressor, string[]> = {
  gzip: ["gzip", "-c", "-1", "-n"],
  zstd: ["zstd", "-q", "-c", "-1"],
  xz: ["xz", "-c", "-1"],
  bzip2: ["bzip2", "-c", "-1"],
  lz4: ["lz4", "-q", "-c", "-1"],
};

function run(argv: string[], input: Uint8Array): Uint8Array {
  const r = spawnSync(argv[0]!, argv.slice(1), { input, maxBuffer: 1 << 30 });
  if (r.status !== 0) throw new Error(`${argv.join(" ")}: ${r.stderr}`);
  return new Uint8Array(r.stdout);
}

function decoded(s: Subject): Uint8Array {
  const file = s.files[0]!;
  let b = decodedCache.get(file);
  if (!b) decodedCache.set(file, (b = run([TOOL[s.compressor!][0]!, "-d", "-c"], raw(file))));
  return b;
}

export function compressorsAvailable(): boolean {
  return ["gzip", "zstd", "xz", "bzip2", "lz4"].every((t) => Bun.which(t) !== null);
}

function inRanges(ranges: Array<[number, number]>, at: number): boolean {
  return ranges.some(([a, b]) => at >= a && at < b);
}

const ABSURD: bigint[] = [0n, 1n, 2n, 0xffn, 0x7fffffffn, 0xffffffffn, 1n << 32n, 1n << 40n, (1n << 53n) - 1n, 1n << 62n, (1n << 64n) - 1n];

function setField(b: Uint8Array, f: Field, v: bigint): void {
  if (f.at + f.width > b.length) return;
  const dv = new DataView(b.buffer, b.byteOffset);
  const mask = (1n << BigInt(8 * f.width)) - 1n;
  const x = v & mask;
  if (f.width === 8) dv.setBigUint64(f.at, x, true);
  else if (f.width === 4) dv.setUint32(f.at, Number(x), true);
  else if (f.width === 2) dv.setUint16(f.at, Number(x), true);
  else b[f.at] = Number(x);
}

function getField(b: Uint8Array, f: Field): bigint {
  const dv = new DataView(b.buffer, b.byteOffset);
  if (f.width === 8) return dv.getBigUint64(f.at, true);
  if (f.width === 4) return BigInt(dv.getUint32(f.at, true));
  if (f.width === 2) return BigInt(dv.getUint16(f.at, true));
  return BigInt(b[f.at]!);
}

/** btrfs send stream: the offsets of its commands (v1/v2 header is 17 bytes; a command has a 10-byte header). */
function btrfsCommands(b: Uint8Array): number[] {
  const out: number[] = [];
  const dv = new DataView(b.buffer, b.byteOffset);
  let p = 17;
  while (p + 10 <= b.length) {
    out.push(p);
    p += 10 + dv.getUint32(p, true);
  }
  return out;
}

/** Recompute a btrfs command's crc32c (over its header with the crc field zeroed, and its data). */
function fixBtrfsCrc(b: Uint8Array, at: number): void {
  const dv = new DataView(b.buffer, b.byteOffset);
  const len = dv.getUint32(at, true);
  if (at + 10 + len > b.length) return;
  dv.setUint32(at + 6, 0, true);
  dv.setUint32(at + 6, crc32c(b.subarray(at, at + 10 + len)), true);
}

/** The mutant number `seed` of a subject: deterministic. */
export function makeMutant(s: Subject, seed: number): Mutant {
  const rng = new Rng(Number(Bun.hash.crc32(`${s.files[0]}#${seed}`)));
  const kinds =
    s.kind === "btrfs" ? ["bitflip", "byteset", "truncate", "btrfs-length", "btrfs-tlv-length"]
    : s.files.length > 1 ? ["bitflip", "byteset", "truncate", "absurd", "drop-piece", "truncate-piece"]
    : s.compressor ? ["bitflip", "byteset", "truncate", "absurd", "bitflip-inner", "truncate-inner"]
    : ["bitflip", "byteset", "truncate", "absurd"];
  const kind = rng.pick(kinds);
  const files = new Map<string, Uint8Array | null>();
  const touched: Array<[string, number]> = [];
  let undetectable = false;
  let mustFail: RegExp | undefined;
  let what = kind;

  const pieceIndex = rng.int(s.files.length);
  const file = s.files[pieceIndex]!;
  const original = raw(file);
  // offsets of a piece are offsets of the joined stream from the pieces before it
  const before = s.files.slice(0, pieceIndex).reduce((n, f) => n + raw(f).length, 0);
  const ranges = s.unprotected(s.files.reduce((n, f) => n + raw(f).length, 0));

  if (kind === "bitflip" || kind === "byteset") {
    const b = original.slice();
    const count = 1 + rng.int(kind === "bitflip" ? 4 : 2);
    undetectable = true;
    for (let i = 0; i < count; i++) {
      const at = rng.offset(b.length);
      const old = b[at]!;
      if (kind === "bitflip") b[at] = old ^ (1 << rng.int(8));
      else b[at] = rng.pick([0, 0xff, rng.int(256)]);
      if (b[at] !== old) touched.push([file, at]);
      if (!inRanges(ranges, before + at)) undetectable = false;
    }
    files.set(file, b);
    what = `${kind} ${file}@${touched.map(([, a]) => a).join(",")}`;
  } else if (kind === "truncate") {
    const at = rng.offset(original.length);
    files.set(file, original.slice(0, at));
    // every later piece goes too, or the set would have a short piece in the middle
    for (const later of s.files.slice(pieceIndex + 1)) files.set(later, null);
    what = `truncate ${file} to ${at}`;
  } else if (kind === "absurd" && s.fields.length > 0) {
    const inner = s.compressor ? decoded(s).slice() : s.files.length > 1 ? concatBytes(...s.files.map(raw)) : original.slice();
    const f = rng.pick(s.fields);
    const old = getField(inner, f);
    const v = rng.pick([...ABSURD, old + 1n, old > 0n ? old - 1n : 3n, old * 2n, old * 1000n, BigInt(inner.length), BigInt(inner.length) * 8n]);
    setField(inner, f, v);
    s.fixHeader?.(inner);
    what = `absurd ${f.name}=${v}`;
    if (s.compressor) files.set(file, run(TOOL[s.compressor], inner));
    else if (s.files.length > 1) splitInto(s.files, inner, files);
    else files.set(file, inner);
    // the header's checksum is forged (or there is none): a valid header that says something else
    undetectable = true;
    touched.push([file, f.at]);
  } else if (kind === "bitflip-inner" || kind === "truncate-inner") {
    const inner = decoded(s).slice();
    let mutated: Uint8Array;
    if (kind === "bitflip-inner") {
      const at = rng.offset(inner.length);
      inner[at]! ^= 1 << rng.int(8);
      mutated = inner;
      what = `${kind} @${at} of the decompressed stream`;
      // inner changes are re-compressed: only the image's own checksums can see them
      undetectable = s.fields === partcloneV2Fields ? false : true;
    } else {
      const at = rng.offset(inner.length);
      mutated = inner.slice(0, at);
      what = `${kind} to ${at} of the decompressed stream`;
    }
    files.set(file, run(TOOL[s.compressor!], mutated));
  } else if (kind === "drop-piece") {
    const i = 1 + rng.int(s.files.length - 1);
    // the last piece missing: nothing on disk says so but the full size of the one before
    files.set(s.files[i]!, null);
    if (i < s.files.length - 1) for (const later of s.files.slice(i + 1)) files.set(later, null);
    what = `drop ${s.files[i]} and after`;
    mustFail = new RegExp(`${escapeRe(s.files[i]!)}.*missing|missing.*${escapeRe(s.files[i]!)}`);
  } else if (kind === "truncate-piece") {
    const i = rng.int(s.files.length - 1);
    const b = raw(s.files[i]!);
    files.set(s.files[i]!, b.slice(0, rng.int(b.length)));
    what = `truncate middle piece ${s.files[i]}`;
  } else if (kind === "btrfs-length" || kind === "btrfs-tlv-length") {
    const b = original.slice();
    const cmds = btrfsCommands(b);
    const at = rng.pick(cmds);
    const dv = new DataView(b.buffer);
    if (kind === "btrfs-length") {
      const v = rng.pick([0xffffffff, 0x7fffffff, 1 << 30, 1 << 20, dv.getUint32(at, true) + 1, 0]);
      dv.setUint32(at, v, true);
      fixBtrfsCrc(b, at);
      what = `${kind} command@${at} len=${v}`;
    } else {
      const len = dv.getUint32(at, true);
      if (len >= 4) {
        const tlv = at + 10;
        const v = rng.pick([0xffff, 0x8000, len, len - 3, 0]);
        dv.setUint16(tlv + 2, v, true);
        fixBtrfsCrc(b, at);
        what = `${kind} command@${at} first attribute len=${v}`;
      }
    }
    files.set(file, b);
  } else {
    files.set(file, original.slice(0, rng.int(original.length)));
    what = "truncate (no fields)";
  }
  return { subject: s, seed, what: `${s.files[0]} #${seed}: ${what}`, files, touched, undetectable, mustFail };
}

function escapeRe(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
}

/** Cut a joined stream back into pieces the sizes of the original ones. */
function splitInto(names: string[], joined: Uint8Array, files: Map<string, Uint8Array | null>): void {
  let at = 0;
  for (const [i, n] of names.entries()) {
    const size = i === names.length - 1 ? joined.length - at : raw(n).length;
    files.set(n, joined.slice(at, at + size));
    at += size;
  }
}

// ---- running and judging ----

export interface CommandRun {
  argv: string[];
  code: number | null;
  signal: string | null;
  stdout: Buffer;
  stderr: string;
  seconds: number;
  rssMiB: number;
}

const PRLIMIT = Bun.which("prlimit");
const TIMEOUT = Bun.which("timeout");
const TIME = fs.existsSync("/usr/bin/time") ? "/usr/bin/time" : undefined;

/** Whether peak memory can be measured per command (GNU time; the runtime's own figure is the children's maximum). */
export const measuresMemory = TIME !== undefined;

/** Run the CLI; `stdinFile` is fed through a pipe (no size, no seeking). */
export async function runCommand(args: string[], cwd: string, stdinFile?: string): Promise<CommandRun> {
  const started = performance.now();
  const rssFile = path.join(cwd, `.rss-${args[0]}`);
  // timeout kills the command itself (killing a wrapper would leave it running)
  let argv = [BUN, MAIN, ...args];
  if (TIMEOUT) argv = [TIMEOUT, "-s", "KILL", String(LIMITS.wallSeconds), ...argv];
  if (TIME) argv = [TIME, "-q", "-o", rssFile, "-f", "%M %U %S", ...argv];
  if (PRLIMIT) argv = [PRLIMIT, `--as=${ADDRESS_SPACE}`, "--", ...argv];
  const child = Bun.spawn(argv, {
    cwd,
    stdin: stdinFile ? "pipe" : "ignore",
    stdout: "pipe",
    stderr: "pipe",
    timeout: LIMITS.wallSeconds * 1000 + 10_000,
    env: { ...process.env, TZ: "UTC", NO_COLOR: "1" },
  });
  const feed = async () => {
    if (!stdinFile || !child.stdin) return;
    try {
      child.stdin.write(fs.readFileSync(stdinFile));
      await child.stdin.end();
    } catch {
      // the command may stop reading early (it refused the input): not an error of the feed
    }
  };
  const [, stdout, stderr] = await Promise.all([feed(),new Response(child.stdout).arrayBuffer(), new Response(child.stderr).text()]);
  await child.exited;
  const p = { exitCode: child.exitCode, signalCode: child.signalCode, stdout: Buffer.from(stdout), stderr };
  let rssKiB = 0;
  let cpu: number | undefined;
  let killed = false;
  if (TIME && fs.existsSync(rssFile)) {
    const text = fs.readFileSync(rssFile, "utf8");
    const m = /(\d+) ([\d.]+) ([\d.]+)\s*$/.exec(text);
    if (m) {
      rssKiB = Number(m[1]);
      cpu = Number(m[2]) + Number(m[3]);
    }
    if (/terminated by signal/.test(text)) killed = true;
    fs.rmSync(rssFile);
  }
  // GNU time reports a child killed by a signal as its own exit 128+n and a note on its output file
  const code = p.exitCode;
  return {
    argv: args,
    code: p.signalCode || killed ? null : code,
    signal: p.signalCode ?? (killed || (code !== null && code > 128) ? "killed" : null),
    stdout: p.stdout,
    stderr: p.stderr,
    seconds: killed || cpu === undefined ? (performance.now() - started) / 1000 : cpu,
    rssMiB: rssKiB / 1024,
  };
}

export interface Reference {
  /** image: sha256 and size of the unmutated restore; btrfs: the dump text */
  sha256?: string;
  restored?: Uint8Array;
  dump?: Buffer;
}

export async function reference(s: Subject, scratch: string): Promise<Reference> {
  const dir = fs.mkdtempSync(path.join(scratch, "ref-"));
  if (s.kind === "btrfs") {
    const r = await runCommand(["btrfs-dump", path.join(FIXTURES, s.files[0]!)], dir);
    if (r.code !== 0) throw new Error(`btrfs-dump of the unmutated ${s.files[0]} failed: ${r.stderr}`);
    return { dump: r.stdout };
  }
  const out = path.join(dir, "ref.img");
  const r = await runCommand(["restore", path.join(FIXTURES, s.files[0]!), "-o", out, "-q", "--sparse"], dir);
  if (r.code !== 0) throw new Error(`restore of the unmutated ${s.files[0]} failed: ${r.stderr}`);
  const restored = new Uint8Array(fs.readFileSync(out));
  fs.rmSync(dir, { recursive: true, force: true });
  return { sha256: new Bun.CryptoHasher("sha256").update(restored).digest("hex"), restored };
}

export type Outcome = "exact" | "undetectable" | "refused";

export interface Verdict {
  outcome: Outcome;
  /** what broke a rule; empty when the mutant was handled as it must be */
  problems: string[];
  /** the commands' runs, for a message (seconds are CPU seconds where GNU time measures them) */
  runs: CommandRun[];
}

const ERROR_LINE = /^imgtool: .+: .+/;

/** Write the mutant's files into a fresh directory; returns the path to give the CLI. */
function materialise(m: Mutant, dir: string): string {
  for (const f of m.subject.files) {
    const b = m.files.has(f) ? m.files.get(f) : raw(f);
    if (b) fs.writeFileSync(path.join(dir, f), b);
  }
  return path.join(dir, m.subject.files[0]!);
}

function judgeRun(r: CommandRun, m: Mutant, problems: string[]): void {
  const name = r.argv[0];
  if (r.seconds > LIMITS.seconds || r.signal) problems.push(`${name}: took ${r.seconds.toFixed(1)} s of CPU${r.signal ? ` (killed: ${r.signal})` : ""}`);
  if (r.rssMiB > LIMITS.rssMiB) problems.push(`${name}: peak RSS ${r.rssMiB.toFixed(0)} MiB`);
  if (r.code === 0) {
    if (m.mustFail) problems.push(`${name}: exit 0, must fail with ${m.mustFail}`);
    return;
  }
  const lines = r.stderr.split("\n").filter((l) => l !== "");
  // exit 1 is an output error: a valid-looking header of a volume larger than the output can hold
  const outputError = r.code === 1 && name === "restore" && lines.length === 1 && lines[0]!.includes("out.img");
  if (r.code !== 3 && r.code !== 4 && !outputError) problems.push(`${name}: exit ${r.code}, expected 0, 3 or 4`);
  if (lines.length !== 1) problems.push(`${name}: ${lines.length} lines on stderr, expected one`);
  else if (!ERROR_LINE.test(lines[0]!)) problems.push(`${name}: stderr is not "imgtool: FILE: what": ${lines[0]}`);
  if (m.mustFail && !m.mustFail.test(r.stderr)) problems.push(`${name}: must say ${m.mustFail}, said ${lines[0]}`);
}

/** Run one mutant through every command and judge it. */
export async function runMutant(m: Mutant, ref: Reference, scratch: string): Promise<Verdict> {
  const dir = fs.mkdtempSync(path.join(scratch, "m-"));
  const problems: string[] = [];
  const runs: CommandRun[] = [];
  try {
    const input = materialise(m, dir);
    const before = new Set(fs.readdirSync(dir));
    if (m.subject.kind === "btrfs") {
      const r = await runCommand(["btrfs-dump", input], dir);
      runs.push(r);
      judgeRun(r, m, problems);
      if (r.code === 0 && !r.stdout.equals(ref.dump!)) {
        const truncation = /truncate/.test(m.what) && ref.dump!.subarray(0, r.stdout.length).equals(r.stdout);
        if (!truncation) problems.push("btrfs-dump: exit 0 with a dump that differs from the unmutated stream's");
      }
      const outcome: Outcome = r.code === 0 ? (r.stdout.equals(ref.dump!) ? "exact" : "undetectable") : "refused";
      return { outcome, problems, runs };
    }
    const info = await runCommand(["info", input], dir);
    const verify = await runCommand(["verify", input, "-q"], dir);
    const out = path.join(dir, "out.img");
    // --sparse: a header may claim a volume of terabytes, validly; writing its zeros is not the point
    const restore = await runCommand(["restore", input, "-o", out, "-q", "--sparse"], dir);
    runs.push(info, verify, restore);
    // every other mutant of a single file also from a pipe, where no size is known beforehand
    if (m.subject.files.length === 1 && m.seed % 2 === 0) {
      const piped = await runCommand(["verify", "-", "-q"], dir, input);
      piped.argv = ["verify-from-a-pipe"];
      runs.push(piped);
    }
    for (const r of runs) judgeRun(r, m, problems);
    const left = fs.readdirSync(dir).filter((f) => !before.has(f) && !f.startsWith(".rss-"));
    let outcome: Outcome = "refused";
    if (restore.code === 0) {
      // a header may claim a volume of petabytes, restored sparse: compare sizes before reading
      const sameSize = fs.statSync(out).size === ref.restored!.length;
      const bytes = sameSize ? new Uint8Array(fs.readFileSync(out)) : new Uint8Array(0);
      const exact = sameSize && new Bun.CryptoHasher("sha256").update(bytes).digest("hex") === ref.sha256;
      outcome = exact ? "exact" : "undetectable";
      if (!exact) {
        if (!m.undetectable) problems.push(`restore: exit 0 with bytes that differ from the unmutated restore (${m.what} is covered by a checksum)`);
        else if (m.touched.length > 0 && sameSize && m.subject.fields !== ntfscloneFields) {
          // a byte of unchecked data changed: at most that many bytes of the volume may differ
          let diff = 0;
          for (let i = 0; i < bytes.length; i++) if (bytes[i] !== ref.restored![i]) diff++;
          const headerTouched = m.touched.some(([, at]) => at < 8192);
          if (!headerTouched && diff > m.touched.length) problems.push(`restore: ${diff} bytes differ after ${m.touched.length} unchecked bytes changed`);
        }
      }
      if (verify.code === 0 && outcome !== "exact" && !m.undetectable) problems.push("verify: exit 0 on a mutant that restores other bytes");
      if (left.some((f) => f !== "out.img")) problems.push(`restore left ${left.join(", ")}`);
    } else {
      if (left.length > 0) problems.push(`restore failed and left ${left.join(", ")}`);
      if (verify.code === 0 && m.subject.files.length === 1) {
        // verify reads everything restore does: it must not pass what restore refuses
        problems.push(`verify: exit 0 where restore failed with: ${restore.stderr.trim()}`);
      }
    }
    return { outcome, problems, runs };
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

/** Mutants spread over the subjects: mutant i is subject i mod n, seed i div n (plus a base seed). */
export function* mutantPlan(count: number, baseSeed: number, list: Subject[]): Generator<Mutant> {
  for (let i = 0; i < count; i++) yield makeMutant(list[i % list.length]!, baseSeed + Math.floor(i / list.length));
}

export interface Tally {
  mutants: number;
  exact: number;
  undetectable: number;
  refused: number;
  failures: Array<{ what: string; problems: string[]; stderr: string[] }>;
  maxSeconds: number;
  maxRssMiB: number;
}

/** Every mutant of the plan, `concurrency` at a time; `onEach` sees each verdict as it comes. */
export async function runAll(count: number, baseSeed: number, scratch: string, onEach?: (m: Mutant, v: Verdict) => void, concurrency = defaultConcurrency()): Promise<Tally> {
  const list = subjects();
  const refs = new Map<Subject, Promise<Reference>>();
  const t: Tally = { mutants: 0, exact: 0, undetectable: 0, refused: 0, failures: [], maxSeconds: 0, maxRssMiB: 0 };
  const plan = mutantPlan(count, baseSeed, list);
  const worker = async () => {
    for (let next = plan.next(); !next.done; next = plan.next()) {
      const m = next.value;
      let ref = refs.get(m.subject);
      if (!ref) refs.set(m.subject, (ref = reference(m.subject, scratch)));
      const v = await runMutant(m, await ref, scratch);
      t.mutants++;
      t[v.outcome]++;
      for (const r of v.runs) {
        t.maxSeconds = Math.max(t.maxSeconds, r.seconds);
        t.maxRssMiB = Math.max(t.maxRssMiB, r.rssMiB);
      }
      if (v.problems.length > 0) t.failures.push({ what: m.what, problems: v.problems, stderr: v.runs.map((r) => `${r.argv[0]} → ${r.code}: ${r.stderr.trim().split("\n").slice(0, 3).join(" | ")}`) });
      onEach?.(m, v);
    }
  };
  await Promise.all(Array.from({ length: concurrency }, worker));
  return t;
}

/** Two commands at once on two cores, up to four where there are more (IMGTOOL_FUZZ_JOBS to choose). */
export function defaultConcurrency(): number {
  const jobs = Number(process.env.IMGTOOL_FUZZ_JOBS);
  return jobs >= 1 ? jobs : Math.max(1, Math.min(4, navigator.hardwareConcurrency ?? 2));
}

export function summary(t: Tally): string {
  return `fuzz: ${t.mutants} mutants: ${t.refused} clean refusals, ${t.exact} exact exit 0, ${t.undetectable} exit 0 with an unchecked change; ${t.failures.length} broke a rule; slowest command ${t.maxSeconds.toFixed(1)} s, peak RSS ${t.maxRssMiB.toFixed(0)} MiB`;
}

/** Keep a mutant's files (for test/failure/) */
export function saveMutant(m: Mutant, dir: string): string[] {
  fs.mkdirSync(dir, { recursive: true });
  return [materialise(m, dir)];
}
