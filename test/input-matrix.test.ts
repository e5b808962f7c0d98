// Every kind of input the README lists, through every command that reads one: the same bytes whichever
// command reads them (restore, cat), and info, verify, ls and index answer for each.
import { describe, expect, test } from "bun:test";
import fs from "node:fs";
import path from "node:path";
import { fixture, runCli, sha256, sha256File, tempDir } from "./helpers.ts";

const scratch = tempDir();
/** the file, copied where an index may be written beside it */
function copied(name: string): string {
  const to = path.join(scratch, path.basename(name));
  fs.cpSync(fixture(name), to, { recursive: true });
  if (fs.statSync(to).isDirectory()) for (const f of fs.readdirSync(to)) fs.chmodSync(path.join(to, f), 0o644);
  else fs.chmodSync(to, 0o644);
  return to;
}

function restored(input: string, name: string): string {
  const out = path.join(scratch, name);
  const r = runCli(["restore", input, "-o", out]);
  expect(r.stderr.toString()).toBe("");
  expect(r.code).toBe(0);
  return out;
}

interface Kind {
  kind: string;
  input: () => string;
  /** what `info --json` says it is */
  info: RegExp;
  /** it holds a file system ls can list (else: a disk, whose partitions ls lists) */
  fileSystem: boolean;
}

const folder = () => copied("clonezilla/clonezilla-mbr-zstd");
let rawDisk: string | undefined;
const disk = () => (rawDisk ??= restored(folder(), "disk.raw"));
let rawVolume: string | undefined;
const volume = () => (rawVolume ??= restored(fixture("ext4-features.ext4-ptcl-img"), "part.img"));

const KINDS: Kind[] = [
  { kind: "an image", input: () => copied("ext4-features.ext4-ptcl-img"), info: /"format": "partclone"/, fileSystem: true },
  { kind: "a split set (any piece)", input: () => (copied("ntfs.ntfs-ptcl-img.aa"), copied("ntfs.ntfs-ptcl-img.ac"), copied("ntfs.ntfs-ptcl-img.ab")), info: /"pieces": \[\n[^\]]*\.aa",\n[^\]]*\.ab",\n[^\]]*\.ac"/, fileSystem: true },
  { kind: "a compressed image", input: () => copied("ntfs.ntfs-ptcl-img.zst"), info: /"compression": \[\n\s*"zstd"/, fileSystem: true },
  { kind: "a Clonezilla folder", input: folder, info: /"kind": "clonezilla"/, fileSystem: false },
  { kind: "a folder's partition", input: () => `${folder()}@1`, info: /"name": "loop0p1"/, fileSystem: true },
  { kind: "a raw disk", input: disk, info: /"kind": "raw-disk"/, fileSystem: false },
  { kind: "a raw disk's partition", input: () => `${disk()}@5`, info: /"number": 5/, fileSystem: true },
  { kind: "a volume (a dd copy)", input: volume, info: /"kind": "volume"/, fileSystem: true },
];

describe.each(KINDS)("$kind", ({ kind, input, info, fileSystem }) => {
  test("info, verify, restore, cat, ls and index", () => {
    const spec = input();
    const i = runCli(["info", spec, "--json"]);
    expect(i.code).toBe(0);
    expect(i.stdout.toString()).toMatch(info);

    const v = runCli(["verify", spec]);
    expect(v.stderr.toString()).toBe("");
    expect(v.code).toBe(0);
    expect(v.stdout.toString()).toMatch(/: OK/);

    const out = restored(spec, `${kind.replace(/\W+/g, "-")}.raw`);
    const whole = runCli(["cat", spec]);
    expect(whole.code).toBe(0);
    expect(sha256(whole.stdout)).toBe(sha256File(out));
    const part = runCli(["cat", spec, "--offset", "4K", "--length", "8K"]);
    expect(sha256(part.stdout)).toBe(sha256(fs.readFileSync(out).subarray(4096, 4096 + 8192)));

    const l = runCli(["ls", spec]);
    expect(l.stderr.toString()).toBe("");
    expect(l.code).toBe(0);
    if (!fileSystem) expect(l.stdout.toString()).toMatch(/^#\s+name\s+fs/);

    const x = runCli(["index", spec]);
    // a plain input needs no index, and says so (exit 2); a compressed one gets one
    expect([0, 2]).toContain(x.code);
  }, 120_000);
});
