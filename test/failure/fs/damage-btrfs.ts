// Damages a btrfs volume file in place for test/failure/fs/make-btrfs.sh, finding what to damage with
// imgtool's own reader: bun test/failure/fs/damage-btrfs.ts VOLUME KIND. VOLUME may be a partclone
// image without checksums (-a 0), patched where its blocks lie (for damage partclone.btrfs cannot image).
import fs from "node:fs";
import { crc32c } from "../../../native/crc32c.ts";
import { PARTCLONE_CRC_SEED, partcloneCrc32 } from "../../../src/checksum/crc32.ts";
import { openBtrfs } from "../../../src/fs/btrfs/btrfs.ts";
import type { Volume } from "../../../src/volume/volume.ts";

const [file, kind] = process.argv.slice(2) as [string, string];
const fd = fs.openSync(file, "r+");
/** where each volume block lies in the file: itself, or in a checksum-less partclone image its rank among the used blocks */
const place = ((): { size: number; at(offset: number): number } => {
  if (!file.endsWith("-ptcl-img")) return { size: fs.fstatSync(fd).size, at: (o) => o };
  const head = new Uint8Array(110);
  fs.readSync(fd, head, 0, 110, 0);
  const v = new DataView(head.buffer);
  const total = v.getUint32(60, true);
  const blockSize = v.getUint32(84, true);
  if (v.getUint16(96, true) !== 0) throw new Error("the image has checksums: make it with partclone -a 0");
  const bitmap = new Uint8Array(Math.ceil(total / 8));
  fs.readSync(fd, bitmap, 0, bitmap.length, 110);
  const rank = new Int32Array(total).fill(-1);
  for (let i = 0, n = 0; i < total; i++) if (bitmap[i >> 3]! & (1 << (i & 7))) rank[i] = n++;
  const dataStart = 110 + bitmap.length + 4;
  return {
    size: total * blockSize,
    at(offset) {
      const r = rank[Math.floor(offset / blockSize)]!;
      if (r < 0) throw new Error(`volume offset ${offset} is not in the image`);
      return dataStart + r * blockSize + (offset % blockSize);
    },
  };
})();
const size = place.size;
/** [offset, offset + length) piecewise through `place`, 4 KiB at most at a time */
function pieces(offset: number, length: number, each: (fileOffset: number, from: number, n: number) => void): void {
  for (let done = 0; done < length; ) {
    const n = Math.min(length - done, 4096 - ((offset + done) % 4096));
    each(place.at(offset + done), done, n);
    done += n;
  }
}
const volume: Volume = {
  size,
  name: file,
  blockSize: 4096,
  read(offset, length) {
    const b = new Uint8Array(length);
    pieces(offset, length, (at, from, n) => fs.readSync(fd, b, from, n, at));
    return b;
  },
  *extents(offset, length) {
    yield { offset, length, data: true };
  },
  close() {},
};
const fsys = openBtrfs(volume);
const internals = fsys as unknown as { trees: { block(l: number, level: number): { physical: number; nritems: number }; chunks: { map(l: number, n: number): number[] } }; view: { root: { logical: number; level: number } }; bySlot: unknown[] };
const nodeSize = fsys.sb.nodeSize;
const enc = new TextEncoder();
const le64 = (b: Uint8Array, at: number) => new DataView(b.buffer, b.byteOffset).getUint32(at, true) + new DataView(b.buffer, b.byteOffset).getUint32(at + 4, true) * 2 ** 32;
const setLe64 = (b: Uint8Array, at: number, n: number) => {
  const v = new DataView(b.buffer, b.byteOffset);
  v.setUint32(at, n % 2 ** 32, true);
  v.setUint32(at + 4, Math.floor(n / 2 ** 32), true);
};
const crcBytes = (data: Uint8Array) => {
  const c = ~crc32c(data, 0xffffffff) >>> 0;
  return new Uint8Array([c & 0xff, (c >>> 8) & 0xff, (c >>> 16) & 0xff, c >>> 24]);
};

function readAt(physical: number, length: number): Uint8Array {
  return volume.read(physical, length);
}
function writeAt(physical: number, data: Uint8Array): void {
  pieces(physical, data.length, (at, from, n) => fs.writeSync(fd, data, from, n, at));
}
/** The tree block holding volume offset `at`, rewritten by `edit` with its crc32c fixed (or not). */
function editBlock(at: number, edit: (b: Uint8Array) => void, fixCsum = true): void {
  const physical = Math.floor(at / nodeSize) * nodeSize;
  const b = readAt(physical, nodeSize);
  edit(b);
  if (fixCsum) b.set(crcBytes(b.subarray(0x20)), 0);
  writeAt(physical, b);
}
const node = (p: string) => {
  const n = fsys.lookup(enc.encode(p));
  if (!n) throw new Error(`${p}: not found`);
  return n;
};
/** The volume offset of the first DIR_INDEX item of a directory: inside the leaf listing it. */
function dirIndexLeaf(p: string): number {
  const trees = (fsys as unknown as { trees: { items(root: unknown, from: unknown, to: unknown): Iterable<{ volumeOffset: number }> } }).trees;
  const ino = node(p).id % 2 ** 40;
  const sv = (fsys as unknown as { view: { root: unknown } }).view;
  for (const item of trees.items(sv.root, { objectid: ino, type: 96, offset: 0 }, { objectid: ino, type: 96, offset: 2 ** 64 })) return item.volumeOffset;
  throw new Error(`${p}: no DIR_INDEX`);
}

switch (kind) {
  case "bad-checksum": {
    // one byte of the leaf that lists /docs changes; its checksum is left as it was
    editBlock(dirIndexLeaf("docs"), (b) => (b[nodeSize - 1]! ^= 0xff), false);
    break;
  }
  case "chunk-past-end": {
    // the data chunk's stripe moves to 10 GiB, past the 160 MiB volume
    const data = fsys.extentItems(node("random.bin"))[0]!.diskBytenr;
    const trees = (fsys as unknown as { trees: { items(root: unknown, from: unknown, to: unknown): Iterable<{ key: { offset: number }; data: Uint8Array; volumeOffset: number }> } }).trees;
    const chunkRoot = { logical: fsys.sb.chunkRoot, level: fsys.sb.chunkRootLevel, name: "chunk tree", id: 3 };
    for (const item of trees.items(chunkRoot, { objectid: 256, type: 228, offset: 0 }, { objectid: 256, type: 228, offset: 2 ** 64 })) {
      const length = le64(item.data, 0);
      if (item.key.offset <= data && data < item.key.offset + length) {
        editBlock(item.volumeOffset, (b) => setLe64(b, (item.volumeOffset % nodeSize) + 48 + 8, 10 * 2 ** 30));
        break;
      }
    }
    break;
  }
  case "loop": {
    // the top-level tree's root node: the pointer to the second leaf of /many's DIR_INDEX items points back at the root itself
    const root = internals.view.root;
    if (root.level < 1) throw new Error("the top-level tree has one leaf; nothing to loop");
    const block = internals.trees.block(root.logical, root.level);
    const many = node("many").id % 2 ** 40;
    const slots = [...Array(block.nritems).keys()].filter((i) => {
      const k = (internals.trees as unknown as { keyAt(b: unknown, i: number): { objectid: number; type: number } }).keyAt(block, i);
      return k.objectid === many && k.type === 96;
    });
    if (slots.length < 2) throw new Error("/many's entries fill fewer than two leaves");
    editBlock(block.physical, (b) => setLe64(b, 101 + slots[1]! * 33 + 17, root.logical));
    break;
  }
  case "compressed-garbage": {
    // bytes 64..191 of big.txt's first compressed extent become garbage; its data checksum is made to match
    const e = fsys.extentItems(node("big.txt")).find((x) => x.compression !== 0)!;
    const physical = internals.trees.chunks.map(e.diskBytenr, e.diskNumBytes)[0]!;
    const sector = readAt(physical, 4096);
    for (let i = 64; i < 192; i++) sector[i] = (i * 37) & 0xff;
    writeAt(physical, sector);
    const trees = (fsys as unknown as { trees: { atOrBefore(root: unknown, key: unknown): { key: { offset: number }; volumeOffset: number } | undefined } }).trees;
    const csumRoot = (fsys as unknown as { data: { csumRoot: unknown } }).data.csumRoot;
    const item = trees.atOrBefore(csumRoot, { objectid: 2 ** 64 - 10, type: 128, offset: e.diskBytenr })!;
    const slot = (e.diskBytenr - item.key.offset) / 4096;
    const at = item.volumeOffset + slot * 4;
    editBlock(at, (b) => b.set(crcBytes(sector), at % nodeSize));
    break;
  }
  case "data-checksum": {
    const e = fsys.extentItems(node("random.bin"))[0]!;
    const physical = internals.trees.chunks.map(e.diskBytenr, 4096)[0]!;
    const b = readAt(physical + 5000, 1);
    b[0]! ^= 0x01;
    writeAt(physical + 5000, b);
    break;
  }
  case "drop-block": {
    // the image forgets the leaf that lists /docs: its bit cleared, its data taken out, counts and crcs redone
    const physical = Math.floor(dirIndexLeaf("docs") / nodeSize) * nodeSize;
    const image = new Uint8Array(fs.readFileSync(file));
    const v = new DataView(image.buffer);
    const total = v.getUint32(60, true);
    const blockSize = v.getUint32(84, true);
    const bitmapEnd = 110 + Math.ceil(total / 8);
    const rank = (block: number) => {
      let n = 0;
      for (let i = 0; i < block; i++) if (image[110 + (i >> 3)]! & (1 << (i & 7))) n++;
      return n;
    };
    const out: Uint8Array[] = [];
    for (let block = physical / blockSize; block < (physical + nodeSize) / blockSize; block++) image[110 + (block >> 3)]! &= ~(1 << (block & 7));
    const first = rank(physical / blockSize);
    const dataStart = bitmapEnd + 4;
    out.push(image.subarray(0, dataStart + first * blockSize), image.subarray(dataStart + first * blockSize + nodeSize));
    v.setBigUint64(76, v.getBigUint64(76, true) - BigInt(nodeSize / blockSize), true);
    v.setUint32(106, partcloneCrc32(PARTCLONE_CRC_SEED, image.subarray(0, 106)), true);
    v.setUint32(bitmapEnd, partcloneCrc32(PARTCLONE_CRC_SEED, image.subarray(110, bitmapEnd)), true);
    fs.writeFileSync(file, Buffer.concat(out));
    console.log(`dropped the tree block at volume offset ${physical}`);
    process.exit(0);
  }
  default:
    throw new Error(`unknown damage ${kind}`);
}
fs.fsyncSync(fd);
fs.closeSync(fd);
