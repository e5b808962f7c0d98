// Makes the hostile LVM disks of test/failure/lvm/: small raw disks (MBR, one PV partition) gzipped, each named by
// the error `imgtool info DISK` must give. The PV is first written right (label, metadata area header, text, as
// src/lvm/pv-volume.ts writes a restored one), then one thing is broken. Run: npx bun test/failure/lvm/make.ts
import fs from "node:fs";
import path from "node:path";
import zlib from "node:zlib";
import { buildMbr, DEFAULT_GEOMETRY } from "../../../src/disk/mbr.ts";
import { buildMdaHeader, buildPvLabel, lvmCrc } from "../../../src/lvm/label.ts";

const OUT = import.meta.dir;
const PART_START = 64;
const MDA = { offset: 4096, size: 8192 };
const PE_START = MDA.offset + MDA.size;
const EXTENT = 4096;
const PE_COUNT = 20;
const UUID = "abcdef-ghij-klmn-opqr-stuv-wxyz-012345";

interface Options {
  text?: string;
  mda?: { offset: number; size: number };
  /** the location's size as the header says it (default: the text's) */
  claimedSize?: number;
  breakLabelCrc?: boolean;
  breakMdaCrc?: boolean;
  breakTextCrc?: boolean;
}

function lvText(name: string, segments: string[]): string {
  return `${name} {\nid = "LVid00-0000-0000-0000-0000-0000-${name.padEnd(6, "0").slice(0, 6)}"\nstatus = ["READ", "WRITE", "VISIBLE"]\nsegment_count = ${segments.length}\n${segments.map((s, i) => `segment${i + 1} {\n${s}\n}`).join("\n")}\n}`;
}

const linear = (start: number, count: number, pv: string, first: number) => `start_extent = ${start}\nextent_count = ${count}\ntype = "striped"\nstripe_count = 1\nstripes = ["${pv}", ${first}]`;

function vgText(lvs: string[]): string {
  return `vg9 {\nid = "VGid00-0000-0000-0000-0000-0000-000000"\nseqno = 3\nformat = "lvm2"\nstatus = ["RESIZEABLE", "READ", "WRITE"]\nextent_size = ${EXTENT / 512}\nphysical_volumes {\npv0 {\nid = "${UUID}"\ndevice = "/dev/sdz2"\nstatus = ["ALLOCATABLE"]\ndev_size = ${(PE_START + PE_COUNT * EXTENT) / 512}\npe_start = ${PE_START / 512}\npe_count = ${PE_COUNT}\n}\n}\nlogical_volumes {\n${lvs.join("\n")}\n}\n}\ncontents = "Text Format Volume Group"\nversion = 1\n`;
}

function disk(o: Options): Uint8Array {
  const mda = o.mda ?? MDA;
  const peStart = Math.max(PE_START, mda.offset + mda.size);
  const pvSize = peStart + PE_COUNT * EXTENT;
  const size = PART_START * 512 + pvSize;
  const bytes = new Uint8Array(size);
  bytes.set(buildMbr([{ number: 1, bootable: false, type: 0x8e, start: PART_START, size: pvSize / 512 }], 0x1234, DEFAULT_GEOMETRY), 0);
  const pv = bytes.subarray(PART_START * 512);
  const label = buildPvLabel({ uuid: UUID, deviceSize: pvSize, dataAreas: [{ offset: peStart, size: 0 }], metadataAreas: [mda], inVg: true });
  if (o.breakLabelCrc) label[100] ^= 1;
  pv.set(label, 512);
  const text = new TextEncoder().encode(`${o.text ?? vgText([lvText("root", [linear(0, 4, "pv0", 0)])])}\0`);
  const header = buildMdaHeader(mda, { offset: 512, size: o.claimedSize ?? text.length, checksum: lvmCrc(text) ^ (o.breakTextCrc ? 1 : 0) });
  if (o.breakMdaCrc) header[0] ^= 1;
  pv.set(header, mda.offset);
  pv.set(text.subarray(0, Math.min(text.length, mda.size - 512)), mda.offset + 512);
  return bytes;
}

const nest = (depth: number): string => (depth === 0 ? "x = 1" : `s${depth} {\n${nest(depth - 1)}\n}`);

const cases: Record<string, Options> = {
  "LVM label crc mismatch": { breakLabelCrc: true },
  "LVM metadata area header crc mismatch": { breakMdaCrc: true },
  "LVM metadata text crc mismatch": { breakTextCrc: true },
  "lies outside the 8192-byte metadata area": { claimedSize: 9000 },
  "LVM metadata text is too long": { mda: { offset: 4096, size: 17 << 20 }, claimedSize: (16 << 20) + 1 },
  "LVM metadata nests too deeply": { text: `vg9 {\n${nest(40)}\n}\n` },
  "lie past the 20 extents of pv0": { text: vgText([lvText("root", [linear(0, 4, "pv0", 18)])]) },
  "of pv0 are also root's": { text: vgText([lvText("root", [linear(0, 4, "pv0", 0)]), lvText("home", [linear(0, 4, "pv0", 2)])]) },
  "starts at extent 2, the previous segment ends at 4": { text: vgText([lvText("root", [linear(0, 4, "pv0", 0), linear(2, 2, "pv0", 8)])]) },
  "logical volumes refer to each other in a loop": {
    text: vgText([lvText("mir", ['start_extent = 0\nextent_count = 2\ntype = "mirror"\nmirror_count = 1\nmirrors = ["mir_mimage_0", 0]']), lvText("mir_mimage_0", ['start_extent = 0\nextent_count = 2\ntype = "mirror"\nmirror_count = 1\nmirrors = ["mir", 0]'])]),
  },
  "LVM metadata: unterminated string": { text: 'vg9 {\nid = "VGid00' },
};

for (const f of fs.readdirSync(OUT)) if (f.endsWith(".raw.gz")) fs.rmSync(path.join(OUT, f));
for (const [name, o] of Object.entries(cases)) fs.writeFileSync(path.join(OUT, `${name}.raw.gz`), zlib.gzipSync(disk(o), { level: 9 }));
console.log(`wrote ${Object.keys(cases).length} disks to ${OUT}`);
