import { expect, test } from "bun:test";
import fs from "node:fs";
import { GzipDecoder } from "../native/zlib.ts";
import { IsalGzipDecoder, isalUsable } from "../native/isal.ts";
import type { ChunkSource } from "../src/source/chunk-source.ts";
import { fixture, memorySource, sha256 } from "./helpers.ts";

function drain(source: ChunkSource): Uint8Array {
  const parts: Uint8Array[] = [];
  const buf = new Uint8Array(100_000);
  for (let n; (n = source.read(buf)) > 0; ) parts.push(buf.slice(0, n));
  return Buffer.concat(parts);
}


test.skipIf(!isalUsable())("ISA-L and zlib decode the same gzip, multi-member included", () => {
  const gz = fs.readFileSync(fixture("ntfs.ntfs-ptcl-img.gz"));
  const twice = Buffer.concat([gz, gz]);
  for (const data of [gz, twice]) {
    expect(sha256(drain(new IsalGzipDecoder(memorySource(data, 65_536, "t.gz"))))).toBe(sha256(drain(new GzipDecoder(memorySource(data, 65_536, "t.gz")))));
  }
  const flipped = Buffer.from(gz);
  flipped[flipped.length - 6]! ^= 1; // inside the trailer's crc32
  expect(() => drain(new IsalGzipDecoder(memorySource(flipped, 65_536, "t.gz")))).toThrow(/corrupt gzip data/);
});
if (!isalUsable()) console.log("skip: ISA-L gzip test: libisal.so.2 (apt-get install libisal2) is absent or its layout is not 2.30's");
