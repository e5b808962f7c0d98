import { describe, expect, test } from "bun:test";
import fs from "node:fs";
import path from "node:path";
import type { ArgsDef } from "citty";
import { optionProblem } from "../src/cli/options.ts";
import { fixture, runCli, tempDir } from "./helpers.ts";

const IMG = fixture("ext4-k7.ext4-ptcl-img");
const DISK = fixture("clonezilla-mbr-zstd");
const STREAM = fixture("full-v1.btrfs-send");

/** A refused command line: exit 2, one line, nothing on stdout, and none of `untouched` made. */
function refused(args: string[], line: string, untouched: string[] = []): void {
  const r = runCli(args);
  expect(r.stderr).toBe(`imgtool: ${line} (see: imgtool ${args.find((a) => !a.startsWith("-"))} --help)\n`);
  expect(r.code).toBe(2);
  expect(r.stdout.length).toBe(0);
  for (const file of untouched) expect(fs.existsSync(file)).toBe(false);
}

describe("every command refuses an unknown option, a missing value and a yes/no option given a value, before it opens or writes anything", () => {
  test("info", () => {
    refused(["info", IMG, "--jsn"], "unknown option --jsn (did you mean --json?)");
    refused(["info", IMG, "--partition"], "option --partition needs a value");
    refused(["info", IMG, "--json=no"], "option --json takes no value (--json or --no-json)");
    // the input is not opened: a missing file is not what is reported
    refused(["info", "/nonexistent/image", "--jsn"], "unknown option --jsn (did you mean --json?)");
  }, 60_000);

  test("restore (the output is never created)", () => {
    const out = path.join(tempDir(), "out.raw");
    refused(["restore", IMG, "-o", out, "--bogus-option", "7"], "unknown option --bogus-option (did you mean --partition?)", [out]);
    refused(["restore", IMG, "-o", out, "--sparce"], "unknown option --sparce (did you mean --sparse?)", [out]);
    refused(["restore", IMG, "-o", out, "--no-verfy"], "unknown option --no-verfy (did you mean --no-verify?)", [out]);
    refused(["restore", DISK, "-o", out, "--fitt"], "unknown option --fitt (did you mean --fit?)", [out]);
    refused(["restore", IMG, "-o"], "option -o needs a value", [out]);
    // citty would write to a file named --force
    const cwd = process.cwd();
    refused(["restore", IMG, "-o", "--force"], "option -o needs a value (got --force; write --output=VALUE for a value that starts with -)", [path.join(cwd, "--force")]);
    // citty reads any value but "false" as true: --sparse=no would have made holes
    refused(["restore", IMG, "-o", out, "--sparse=no"], "option --sparse takes no value (--sparse or --no-sparse)", [out]);
    refused(["restore", IMG, "-o", out, "--verify=0"], "option --verify takes no value (--verify or --no-verify)", [out]);
    refused(["restore", IMG, "-o", out, "--no-verify=true"], "option --no-verify takes no value (--verify or --no-verify)", [out]);
    refused(["restore", IMG, "-o", out, "-q=1"], "option -q takes no value (--quiet or --no-quiet)", [out]);
    refused(["restore", IMG, "-o", out, "--output-offset="], "option --output-offset needs a value", [out]);
  }, 60_000);

  test("verify", () => {
    refused(["verify", IMG, "--quite"], "unknown option --quite (did you mean --quiet?)");
    refused(["verify", IMG, "--threads"], "option --threads needs a value");
    refused(["verify", IMG, "--quiet=yes"], "option --quiet takes no value (--quiet or --no-quiet)");
  }, 60_000);

  test("cat", () => {
    refused(["cat", IMG, "--lenght", "5"], "unknown option --lenght (did you mean --length?)");
    refused(["cat", IMG, "--offset"], "option --offset needs a value");
    refused(["cat", IMG, "--length", "--offset", "5"], "option --length needs a value (got --offset; write --length=VALUE for a value that starts with -)");
    // a negative number is a value: the command says what is wrong with it
    const negative = runCli(["cat", IMG, "--length", "-5"]);
    expect([negative.code, negative.stderr]).toEqual([2, `imgtool: --length: not a byte count: "-5"\n`]);
    refused(["cat", IMG, "--debug=off"], "option --debug takes no value (--debug or --no-debug)");
  }, 60_000);

  test("btrfs-dump", () => {
    refused(["btrfs-dump", STREAM, "--jsonn"], "unknown option --jsonn (did you mean --json?)");
    refused(["btrfs-dump", STREAM, "--progs-format"], "option --progs-format needs a value");
    refused(["btrfs-dump", STREAM, "--all-streams=1"], "option --all-streams takes no value (--all-streams or --no-all-streams)");
  }, 60_000);

  test("btrfs-receive (the directory stays empty)", () => {
    const dir = tempDir();
    refused(["btrfs-receive", STREAM, dir, "--quite"], "unknown option --quite (did you mean --quiet?)");
    refused(["btrfs-receive", STREAM, dir, "-x"], "unknown option -x (did you mean -e?)");
    refused(["btrfs-receive", STREAM, dir, "-e=yes"], "option -e takes no value (--e or --no-e)");
    expect(fs.readdirSync(dir)).toEqual([]);
  }, 60_000);

  test("serve (no socket is made)", () => {
    const socket = path.join(tempDir(), "s.sock");
    refused(["serve", IMG, "--sockt", socket], "unknown option --sockt (did you mean --socket?)", [socket]);
    refused(["serve", IMG, "--socket"], "option --socket needs a value");
    refused(["serve", IMG, "--socket", socket, "--debug=no"], "option --debug takes no value (--debug or --no-debug)", [socket]);
  }, 60_000);

  test("mount (nothing is mounted)", () => {
    const dir = tempDir();
    refused(["mount", IMG, dir, "--alow-other"], "unknown option --alow-other (did you mean --allow-other?)");
    refused(["mount", IMG, dir, "--overlay"], "option --overlay needs a value");
    refused(["mount", IMG, dir, "--allow-other=no", "--nme", "x"], "option --allow-other takes no value (--allow-other or --no-allow-other)");
    expect(fs.readdirSync(dir)).toEqual([]);
  }, 60_000);

  test("index (no index is written)", () => {
    const dir = tempDir();
    const copy = path.join(dir, "img.zst");
    fs.copyFileSync(fixture("ntfs.ntfs-ptcl-img.zst"), copy);
    refused(["index", copy, "--spaceing", "1M"], "unknown option --spaceing (did you mean --spacing?)");
    refused(["index", copy, "--spacing"], "option --spacing needs a value");
    refused(["index", copy, "--json=true", "--spacing", "--json"], "option --spacing needs a value (got --json; write --spacing=VALUE for a value that starts with -)");
    expect(fs.readdirSync(dir)).toEqual(["img.zst"]);
  }, 60_000);

  test("ls, get, extract (nothing is extracted)", () => {
    refused(["ls", IMG, "/", "--lng"], "unknown option --lng (did you mean --long?)");
    refused(["ls", IMG, "-lX", "/"], "unknown option -X (did you mean -l?)");
    refused(["ls", IMG, "--recursive=no", "/"], "option --recursive takes no value (--recursive or --no-recursive)");
    refused(["get", IMG, "/x", "--codpage", "cp850"], "unknown option --codpage (did you mean --codepage?)");
    refused(["get", IMG, "/x", "--codepage"], "option --codepage needs a value");
    const dest = path.join(tempDir(), "dest");
    refused(["extract", IMG, "-o", dest, "--forse"], "unknown option --forse (did you mean --force?)", [dest]);
    refused(["extract", IMG, "/", "-o"], "option -o needs a value", [dest]);
    refused(["extract", IMG, "-o", dest, "--force=no"], "option --force takes no value (--force or --no-force)", [dest]);
  }, 60_000);

  test("an option before the command is refused (it would be dropped); --debug is read anywhere", () => {
    refused(["--json", "info", IMG], "--json comes before the command: options go after it");
    const r = runCli(["--debug", "info", IMG]);
    expect(r.code).toBe(0);
  }, 60_000);
});

describe("what is accepted", () => {
  test("a well-formed command line runs: -o VALUE, --opt=VALUE, --no-X, grouped short flags, - as a value", () => {
    const dir = tempDir();
    const a = runCli(["restore", IMG, "-o", path.join(dir, "a.raw"), "--no-verify", "-q", "--sparse=true"]);
    expect([a.code, a.stderr]).toEqual([0, ""]);
    const b = runCli(["restore", IMG, `--output=${path.join(dir, "b.raw")}`, "--verify=false", "--quiet"]);
    expect([b.code, b.stderr]).toEqual([0, ""]);
    expect(fs.readFileSync(path.join(dir, "a.raw")).equals(fs.readFileSync(path.join(dir, "b.raw")))).toBe(true);
    const c = runCli(["restore", IMG, "-qo", "-"]);
    expect(c.code).toBe(0);
    expect(c.stdout.length).toBe(fs.statSync(path.join(dir, "a.raw")).size);
    const l = runCli(["ls", IMG, "-lR", "/"]);
    expect([l.code, l.stderr]).toEqual([0, ""]);
  }, 60_000);

  test("-- ends the options: a file whose name starts with - is an input", () => {
    const dir = tempDir();
    fs.copyFileSync(IMG, path.join(dir, "--json"));
    const r = Bun.spawnSync([process.execPath, path.join(import.meta.dir, "..", "src", "cli", "main.ts"), "info", "--", "--json"], { cwd: dir, stdout: "pipe", stderr: "pipe" });
    expect(r.stderr.toString()).toBe("");
    expect(r.exitCode).toBe(0);
    // the text of info, not its --json form
    expect(r.stdout.toString().startsWith("{")).toBe(false);
  }, 60_000);
});

describe("optionProblem against an args definition", () => {
  const args: ArgsDef = {
    image: { type: "positional", description: "", required: true },
    output: { type: "string", alias: "o", description: "" },
    "output-offset": { type: "string", description: "" },
    sparse: { type: "boolean", description: "" },
    verify: { type: "boolean", default: true, description: "" },
    quiet: { type: "boolean", alias: "q", description: "" },
    long: { type: "boolean", alias: "l", description: "" },
    mode: { type: "enum", options: ["a", "b"], description: "" },
  };

  test("every spelling of every option, with its value where it takes one", () => {
    for (const argv of [
      ["img", "-o", "out"],
      ["img", "--output", "out"],
      ["img", "--o", "out"],
      ["img", "-oout"],
      ["img", "-qo", "out"],
      ["img", "-lq"],
      ["img", "--output=-"],
      ["img", "-o", "-"],
      ["img", "--output-offset", "-1"],
      ["img", "-o", "-2x"],
      ["img", "-o", ""],
      ["img", "--output-offset", "1M", "--sparse", "--no-verify", "--no-quiet", "--mode", "a"],
      ["img", "--verify=true", "--sparse=false"],
      ["--", "-o"],
      ["img", "--", "--bogus", "-x"],
      [],
    ]) {
      expect([argv, optionProblem(args, argv)]).toEqual([argv, undefined]);
    }
  });

  test("each problem, named with the nearest option", () => {
    const cases: [string[], string][] = [
      [["img", "--outptu", "x"], "unknown option --outptu (did you mean --output?)"],
      [["img", "--output-ofset", "1"], "unknown option --output-ofset (did you mean --output-offset?)"],
      [["img", "--Sparse"], "unknown option --Sparse (did you mean --sparse?)"],
      [["img", "--no-output"], "unknown option --no-output (did you mean --output?)"],
      [["img", "--no-q"], "unknown option --no-q (did you mean --no-quiet?)"],
      [["img", "-O", "x"], "unknown option -O (did you mean -o?)"],
      [["img", "-lL"], "unknown option -L (did you mean -l?)"],
      [["img", "--mode"], "option --mode needs a value"],
      [["img", "--mode", "--sparse"], "option --mode needs a value (got --sparse; write --mode=VALUE for a value that starts with -)"],
      [["img", "-q", "-o"], "option -o needs a value"],
      [["img", "-ql", "-qo"], "option -o needs a value"],
      [["img", "--output="], "option --output needs a value"],
      [["img", "--sparse=yes"], "option --sparse takes no value (--sparse or --no-sparse)"],
      [["img", "--no-sparse=false"], "option --no-sparse takes no value (--sparse or --no-sparse)"],
      [["img", "-l=1"], "option -l takes no value (--long or --no-long)"],
      [["img", "--sparse", "--", "--x"], undefined as unknown as string],
    ];
    for (const [argv, problem] of cases) expect([argv, optionProblem(args, argv)]).toEqual([argv, problem]);
  });
});
