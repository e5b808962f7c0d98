import { withCommas } from "../errors.ts";
import type { DiskFacts, LayoutFacts } from "../disk/disk-facts.ts";
import type { VgFacts } from "../lvm/facts.ts";
import { humanSize } from "../formats/units.ts";
import type { InputFacts } from "../input/input.ts";
import { imageInfoJson, imageInfoText } from "./image-info.ts";

export const partitionArg = { type: "string", description: "one partition of a disk (a Clonezilla folder or a raw disk image): its number or name (sda2); also DISK@N" } as const;
export const diskArg = { type: "string", description: "the disk of a Clonezilla folder with several (sda)" } as const;

/** `imgtool info` of any input, as text. */
export function infoText(facts: InputFacts): string {
  if (facts.kind === "image") return imageInfoText(facts.image);
  if (facts.kind === "volume") {
    const lines = [
      "Volume",
      "======",
      `${"content".padEnd(17)} ${facts.content}`,
      `${"size".padEnd(17)} ${facts.size === undefined ? "known once read (compressed)" : `${withCommas(facts.size)} bytes (${humanSize(facts.size)})`}`,
      `${"compression".padEnd(17)} ${facts.compression.length ? facts.compression.join(" inside ") : "none"}`,
      `${(facts.pieces.length > 1 ? "pieces" : "file").padEnd(17)} ${facts.pieces.join(" ")}`,
    ];
    return `${lines.join("\n")}\n`;
  }
  return diskInfoText(facts.disk);
}

/** `imgtool info --json` of any input. */
export function infoJson(facts: InputFacts): Record<string, unknown> {
  if (facts.kind === "image") return imageInfoJson(facts.image);
  if (facts.kind === "volume") return { kind: "volume", file: facts.file, size: facts.size ?? null, content: facts.content, compression: facts.compression, pieces: facts.pieces };
  const d = facts.disk;
  if (d.kind === "clonezilla") {
    const { partition: _partition, ...rest } = d;
    return rest;
  }
  return { kind: "raw-disk", file: d.file, ...layoutJson(d.disk), lvm: d.lvm };
}

function layoutJson(l: LayoutFacts): Record<string, unknown> {
  const { notes: _notes, ...rest } = l;
  return rest;
}

function diskInfoText(d: DiskFacts): string {
  if (d.kind === "raw-disk") return `${["Raw disk image", "", ...layoutText(d.disk), ...(d.partition ? [] : lvmText(d.lvm))].join("\n")}\n`;
  const lines = [`Clonezilla image folder ${d.dir}`];
  for (const disk of d.disks) lines.push("", ...layoutText(disk), ...disk.notes.map((n) => `  note: ${n}`));
  if (d.partition === undefined) lines.push(...lvmText(d.lvm));
  if (d.partition === undefined) {
    lines.push("", `saved partitions (parts): ${d.parts.join(" ") || "none"}`);
    if (d.checksums.length) lines.push(`checksum files: ${d.checksums.map((c) => `${c.file} (${c.files} files)`).join(", ")}`);
    if (d.otherFiles.length) lines.push(`other files: ${d.otherFiles.join(" ")}`);
  }
  lines.push(d.problems.length ? `problems:\n${d.problems.map((p) => `  ${p}`).join("\n")}` : "problems: none");
  return `${lines.join("\n")}\n`;
}

function lvmText(vgs: VgFacts[]): string[] {
  const lines: string[] = [];
  for (const vg of vgs) {
    lines.push("", `LVM volume group ${vg.name}: extent ${humanSize(vg.extentSize)}, seqno ${vg.seqno}, metadata from ${vg.metadata}`);
    for (const p of vg.pvs) lines.push(`  PV ${p.key} on ${p.partition ?? "(not found)"}: ${p.peCount} extents from ${withCommas(p.peStart)}, ${p.id}`);
    for (const l of vg.lvs) {
      const what = [l.layout, l.visible ? "" : "hidden", l.fs ?? "", l.compression ? l.compression.join("+") || "uncompressed" : "", l.usedBytes !== undefined ? `${humanSize(l.usedBytes)} used` : "", l.swapLabel ? `LABEL=${l.swapLabel}` : "", l.swapUuid ? `UUID=${l.swapUuid}` : ""];
      lines.push(`  LV ${vg.name}/${l.name}: ${humanSize(l.size)}, ${what.filter(Boolean).join(", ")}${l.files ? `, ${l.files[0]}${l.files.length > 1 ? ` (+${l.files.length - 1})` : ""}` : ""}${l.problem ? ` (${l.problem})` : ""}`);
      lines.push(`    segments: ${l.segments.join("; ")}`);
    }
    for (const p of vg.problems) lines.push(`  problem: ${p}`);
  }
  return lines;
}

function layoutText(f: LayoutFacts): string[] {
  const lines = [`disk ${f.name}: ${withCommas(f.size)} bytes (${humanSize(f.size)}), ${f.label === "dos" ? "MBR" : "GPT"}, ${f.sectorSize}-byte sectors`];
  for (const t of f.tables) lines.push(`  ${t.what}: ${withCommas(t.length)} bytes at ${withCommas(t.offset)}`);
  const rows = [["#", "name", "start", "sectors", "size", "type", "fs", "content", "compression", "used", "files"]];
  for (const p of f.partitions) {
    rows.push([
      String(p.number),
      p.name,
      String(p.startSector),
      String(p.sizeSectors),
      humanSize(p.size),
      p.type,
      p.fs ?? "-",
      p.content === "swap" ? `swap header${p.swapLabel ? ` LABEL=${p.swapLabel}` : ""}${p.swapUuid ? ` UUID=${p.swapUuid}` : ""}` : p.content,
      p.compression ? p.compression.join("+") || "none" : "-",
      p.usedBytes !== undefined ? humanSize(p.usedBytes) : "-",
      p.files ? (p.files.length > 1 ? `${p.files[0]} (+${p.files.length - 1})` : p.files[0]!) : p.problem ? `(${p.problem})` : "-",
    ]);
  }
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
  for (const r of rows) lines.push(`  ${r.map((c, i) => c.padEnd(widths[i]!)).join("  ").trimEnd()}`);
  return lines;
}
