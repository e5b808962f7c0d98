import { describe, expect, test } from "bun:test";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { ByteReader } from "../src/source/byte-reader.ts";
import { ImageError } from "../src/errors.ts";
import { FileSource } from "../src/source/pieces.ts";
import { splitSuffix } from "../src/source/split.ts";
import { memorySource } from "./helpers.ts";


describe("ByteReader", () => {
  const data = Uint8Array.from({ length: 10_000 }, (_, i) => (i * 7) & 255);

  for (const step of [1, 3, 100, 20_000]) {
    test(`views and skips agree with the data (reads of ${step})`, () => {
      const r = new ByteReader(memorySource(data, step), 64);
      expect([...r.view(5, "a")]).toEqual([...data.subarray(0, 5)]);
      r.skip(95, "b");
      expect(r.position).toBe(100);
      expect([...r.view(200, "c")]).toEqual([...data.subarray(100, 300)]);
      const c = r.chunk(50);
      expect(c.length).toBeGreaterThan(0);
      expect([...c]).toEqual([...data.subarray(300, 300 + c.length)]);
      r.skip(10_000 - 300 - c.length, "d");
      expect(r.atEnd()).toBe(true);
    });
  }

  test("chunks come straight from a source that lends its memory; views, skips and positions agree with the data", () => {
    const source = memorySource(data, 300);
    let lent = 0;
    let pos = 0;
    source.borrow = (max) => {
      const n = Math.min(max, 300, data.length - pos);
      lent += n;
      pos += n;
      return data.subarray(pos - n, pos);
    };
    source.read = (into) => {
      const n = Math.min(into.length, 300, data.length - pos);
      into.set(data.subarray(pos, pos + n));
      pos += n;
      return n;
    };
    const r = new ByteReader(source, 64);
    expect([...r.view(5, "a")]).toEqual([...data.subarray(0, 5)]);
    // a view copies what it needs, no more; chunks are lent
    const c = r.chunk(1000);
    expect(c.buffer).toBe(data.buffer);
    expect([...c]).toEqual([...data.subarray(5, 305)]);
    expect(r.position).toBe(305);
    expect([...r.view(4, "crc")]).toEqual([...data.subarray(305, 309)]);
    expect([...r.peek(3)]).toEqual([...data.subarray(309, 312)]);
    // what a peek read comes first, then the source's own memory
    expect([...r.chunk(1000)]).toEqual([...data.subarray(309, 312)]);
    const d = r.chunk(7);
    expect(d.buffer).toBe(data.buffer);
    expect([...d]).toEqual([...data.subarray(312, 319)]);
    expect(r.position).toBe(319);
    r.skip(10_000 - 319 - 3, "e");
    expect([...r.chunk(100)]).toEqual([...data.subarray(9_997)]);
    expect(r.chunk(100).length).toBe(0);
    expect(r.atEnd()).toBe(true);
    expect(lent).toBeGreaterThan(0);
  });

  test("a view past the end names the field and the offset", () => {
    const r = new ByteReader(memorySource(data, 1000), 64);
    r.skip(9_990, "x");
    expect(() => r.view(20, "bitmap")).toThrow(ImageError);
    expect(() => new ByteReader(memorySource(data, 1000)).skip(10_001, "blocks")).toThrow(/offset 10,000: truncated blocks/);
  });
});

test("split suffixes follow coreutils: aa..yz, zaaa..", () => {
  expect(splitSuffix(0)).toBe("aa");
  expect(splitSuffix(1)).toBe("ab");
  expect(splitSuffix(26)).toBe("ba");
  expect(splitSuffix(649)).toBe("yz");
  expect(splitSuffix(650)).toBe("zaaa");
  expect(splitSuffix(651)).toBe("zaab");
});

describe("FileSource", () => {
  test("a failed read is one line naming the file, the offset and the error", () => {
    const fd = fs.openSync(os.tmpdir(), "r");
    const file = new FileSource("some.img", fd, 1 << 20);
    try {
      expect(() => file.readAt(new Uint8Array(16), 4096)).toThrow(new ImageError({ file: "some.img", offset: 4096 }, "read error", "EISDIR"));
    } finally {
      file.close();
    }
    // closed: the number is free, or already another file's
    const now = fs.existsSync(`/proc/self/fd/${fd}`) ? fs.readlinkSync(`/proc/self/fd/${fd}`) : undefined;
    expect(now).not.toBe(fs.realpathSync(os.tmpdir()));
  });

  test("a borrowed descriptor stays open when the reader closes", () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "imgtool-pieces-"));
    const name = path.join(dir, "a");
    fs.writeFileSync(name, "0123456789");
    const fd = fs.openSync(name, "r");
    try {
      const borrowed = new FileSource(name, fd, 10, false);
      const into = new Uint8Array(4);
      expect(borrowed.readAt(into, 6)).toBe(4);
      expect(Buffer.from(into).toString()).toBe("6789");
      borrowed.close();
      expect(fs.fstatSync(fd).size).toBe(10);
    } finally {
      fs.closeSync(fd);
      fs.rmSync(dir, { recursive: true });
    }
  });
});
