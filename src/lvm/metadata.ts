// LVM2 text metadata (lvm2 lib/config/config.c grammar, lib/format_text/import_vsn1.c and export.c): parser, VG/LV/segment model, writer.
import { ImageError, type Location } from "../errors.ts";

/** vgcfgbackup files and metadata areas hold far less; LVM's own default cap (metadata/mda size) is 1 MiB-ish */
export const MAX_METADATA_TEXT = 16 << 20;
/** bounds on hostile text: nesting, items, a string's length; PVs, LVs, segments of an LV, stripes of a segment */
const [MAX_DEPTH, MAX_NODES, MAX_STRING] = [16, 500_000, 1 << 16];
const [MAX_PVS, MAX_LVS, MAX_SEGMENTS, MAX_STRIPES] = [4096, 65536, 65536, 128];

export type Value = string | number | Value[];

export interface Node {
  key: string;
  /** byte offset in the text */
  at: number;
  value?: Value;
  children?: Node[];
}

/** Where the text lies: its file and the byte offset of its first byte in that file. */
export interface TextPlace {
  file: string;
  offset: number;
}

function fail(place: TextPlace, at: number, what: string, detail?: string): never {
  throw new ImageError({ file: place.file, offset: place.offset + at }, what, detail);
}

/** `key = value` items and `key { ... }` sections; `#` comments; strings, numbers, arrays. */
export function parseMetadataText(text: string, place: TextPlace): Node[] {
  if (text.length > MAX_METADATA_TEXT) fail(place, 0, "LVM metadata text is too long", `${text.length} bytes, at most ${MAX_METADATA_TEXT}`);
  let pos = 0;
  let nodes = 0;
  const count = () => {
    if (++nodes > MAX_NODES) fail(place, pos, `LVM metadata has more than ${MAX_NODES} items`);
  };
  const skip = () => {
    for (;;) {
      while (pos < text.length && /[\s\0]/.test(text[pos]!)) pos++;
      if (text[pos] !== "#") return;
      while (pos < text.length && text[pos] !== "\n") pos++;
    }
  };
  const ident = (): string => {
    const m = /^[A-Za-z0-9_.+\-]+/.exec(text.slice(pos, pos + 256));
    if (!m) fail(place, pos, "LVM metadata: expected a name", JSON.stringify(text.slice(pos, pos + 20)));
    pos += m[0].length;
    return m[0];
  };
  const value = (depth: number): Value => {
    skip();
    count();
    const c = text[pos];
    if (c === '"') {
      let out = "";
      pos++;
      for (;;) {
        if (pos >= text.length) fail(place, pos, "LVM metadata: unterminated string");
        const ch = text[pos++]!;
        if (ch === '"') break;
        out += ch === "\\" && pos < text.length ? text[pos++]! : ch;
        if (out.length > MAX_STRING) fail(place, pos, "LVM metadata: string too long");
      }
      return out;
    }
    if (c === "[") {
      if (depth > MAX_DEPTH) fail(place, pos, "LVM metadata nests too deeply");
      pos++;
      const items: Value[] = [];
      skip();
      if (text[pos] === "]") {
        pos++;
        return items;
      }
      for (;;) {
        items.push(value(depth + 1));
        skip();
        if (text[pos] === ",") {
          pos++;
          continue;
        }
        if (text[pos] === "]") {
          pos++;
          return items;
        }
        fail(place, pos, "LVM metadata: expected , or ] in an array");
      }
    }
    const m = /^-?[0-9]+(\.[0-9]+)?/.exec(text.slice(pos, pos + 40));
    if (!m) fail(place, pos, "LVM metadata: expected a value", JSON.stringify(text.slice(pos, pos + 20)));
    pos += m[0].length;
    const n = Number(m[0]);
    if (!Number.isSafeInteger(n) && !m[1]) fail(place, pos - m[0].length, "LVM metadata: number too large", m[0]);
    return n;
  };
  const section = (depth: number, closing: boolean): Node[] => {
    const out: Node[] = [];
    for (;;) {
      skip();
      if (pos >= text.length) {
        if (closing) fail(place, pos, "LVM metadata: a section is not closed");
        return out;
      }
      if (text[pos] === "}") {
        if (!closing) fail(place, pos, "LVM metadata: } without a section");
        pos++;
        return out;
      }
      const at = pos;
      const key = ident();
      count();
      skip();
      if (text[pos] === "{") {
        if (depth >= MAX_DEPTH) fail(place, pos, "LVM metadata nests too deeply");
        pos++;
        out.push({ key, at, children: section(depth + 1, true) });
      } else if (text[pos] === "=") {
        pos++;
        out.push({ key, at, value: value(depth) });
      } else fail(place, pos, "LVM metadata: expected = or { after a name", key);
    }
  };
  return section(0, false);
}

/** The items in LVM's raw metadata layout (export.c: one per line, no indentation), comments left out. */
export function writeMetadataText(nodes: Node[]): string {
  const val = (v: Value): string =>
    typeof v === "string" ? `"${v.replace(/\\/g, "\\\\").replace(/"/g, '\\"')}"` : typeof v === "number" ? String(v) : `[${v.map(val).join(", ")}]`;
  const lines: string[] = [];
  const walk = (list: Node[]) => {
    for (const n of list) {
      if (n.children) {
        lines.push(`${n.key} {`);
        walk(n.children);
        lines.push("}");
      } else if (Array.isArray(n.value) && n.value.some((x) => typeof x === "number") && n.value.some((x) => typeof x === "string")) {
        // name/extent pairs (stripes, mirrors, raids): one pair a line, as export.c writes them
        const pairs: string[] = [];
        for (let i = 0; i < n.value.length; i += 2) pairs.push(n.value.slice(i, i + 2).map(val).join(", "));
        lines.push(`${n.key} = [`, pairs.join(",\n"), "]");
      } else lines.push(`${n.key} = ${val(n.value!)}`);
    }
  };
  walk(nodes);
  return `${lines.join("\n")}\n`;
}

// ---- the model ----

export interface PhysicalVolume {
  /** "pv0" */
  key: string;
  id: string;
  /** the device when the metadata was written: a hint only */
  device?: string;
  /** in bytes */
  devSize: number;
  peStart: number;
  peCount: number;
}

export interface StripeArea {
  pv: string;
  /** the first physical extent */
  start: number;
}

export interface Segment {
  startExtent: number;
  extentCount: number;
  /** "striped" (linear is one stripe), "thin-pool", "raid1", "mirror", "snapshot", ... */
  type: string;
  /** bytes; striped with more than one stripe only */
  stripeSize?: number;
  /** striped only */
  stripes: StripeArea[];
  /** text offset, for messages */
  at: number;
}

export interface LogicalVolume {
  name: string;
  id: string;
  status: string[];
  visible: boolean;
  segments: Segment[];
  /** extents */
  extents: number;
  /** bytes */
  size: number;
  /** "linear", "striped", or the first other segment type (data not laid out as plain extents) */
  layout: string;
  /** the LVs this one's segments name (sub-volumes, pools, origins) */
  uses: string[];
}

export interface VolumeGroup {
  name: string;
  id: string;
  seqno: number;
  /** bytes */
  extentSize: number;
  pvs: PhysicalVolume[];
  lvs: LogicalVolume[];
  /** the whole text's parsed items, to write it again */
  nodes: Node[];
  place: TextPlace;
}

const SECTOR = 512;

/** The one volume group of a metadata text or vgcfgbackup file, checked: extents inside their PVs, none used twice, no LV cycles. */
export function readVolumeGroup(text: string, place: TextPlace): VolumeGroup {
  const nodes = parseMetadataText(text, place);
  const sections = nodes.filter((n) => n.children);
  if (sections.length !== 1) fail(place, sections[1]?.at ?? 0, `LVM metadata holds ${sections.length} volume groups, not one`);
  const vgNode = sections[0]!;
  const get = (list: Node[], key: string) => list.find((n) => n.key === key);
  const num = (list: Node[], key: string, parent: Node, min = 0): number => {
    const n = get(list, key);
    if (!n || typeof n.value !== "number" || !Number.isSafeInteger(n.value) || n.value < min) fail(place, n?.at ?? parent.at, `LVM metadata: ${parent.key}: ${key} is missing or not a whole number${min ? ` >= ${min}` : ""}`);
    return n.value;
  };
  const str = (list: Node[], key: string, parent: Node): string => {
    const n = get(list, key);
    if (!n || typeof n.value !== "string") fail(place, n?.at ?? parent.at, `LVM metadata: ${parent.key}: ${key} is missing or not a string`);
    return n.value;
  };
  const strings = (list: Node[], key: string): string[] => {
    const v = get(list, key)?.value;
    return Array.isArray(v) ? v.filter((x): x is string => typeof x === "string") : [];
  };
  const body = vgNode.children!;
  const extentSectors = num(body, "extent_size", vgNode, 1);
  const extentSize = extentSectors * SECTOR;
  const pvSection = get(body, "physical_volumes");
  if (!pvSection?.children) fail(place, vgNode.at, `LVM metadata: ${vgNode.key}: no physical_volumes`);
  if (pvSection.children.length > MAX_PVS) fail(place, pvSection.at, `LVM metadata: more than ${MAX_PVS} physical volumes`);
  const pvs: PhysicalVolume[] = [];
  for (const p of pvSection.children) {
    if (!p.children) continue;
    const c = p.children;
    const pv: PhysicalVolume = { key: p.key, id: str(c, "id", p), device: get(c, "device")?.value as string | undefined, devSize: num(c, "dev_size", p) * SECTOR, peStart: num(c, "pe_start", p) * SECTOR, peCount: num(c, "pe_count", p) };
    if (pv.peCount > 0 && pv.peStart + pv.peCount * extentSize > pv.devSize) {
      fail(place, get(c, "pe_count")!.at, `LVM metadata: ${p.key}: ${pv.peCount} extents from ${pv.peStart} reach past its ${pv.devSize}-byte device`);
    }
    pvs.push(pv);
  }
  const lvSection = get(body, "logical_volumes");
  const lvNodes = (lvSection?.children ?? []).filter((n) => n.children);
  if (lvNodes.length > MAX_LVS) fail(place, lvSection!.at, `LVM metadata: more than ${MAX_LVS} logical volumes`);
  const lvNames = new Set(lvNodes.map((n) => n.key));
  const used = new Map<string, { from: number; to: number; lv: string }[]>();
  const lvs: LogicalVolume[] = [];
  for (const l of lvNodes) {
    const c = l.children!;
    const status = strings(c, "status");
    const segNodes = c.filter((n) => n.children && /^segment\d+$/.test(n.key));
    if (segNodes.length > MAX_SEGMENTS) fail(place, l.at, `LVM metadata: ${l.key}: more than ${MAX_SEGMENTS} segments`);
    const segments: Segment[] = [];
    const uses = new Set<string>();
    let next = 0;
    for (const s of segNodes) {
      const sc = s.children!;
      const seg: Segment = { startExtent: num(sc, "start_extent", s), extentCount: num(sc, "extent_count", s, 1), type: str(sc, "type", s), stripes: [], at: s.at };
      if (seg.startExtent !== next) fail(place, get(sc, "start_extent")!.at, `LVM metadata: ${l.key} ${s.key} starts at extent ${seg.startExtent}, the previous segment ends at ${next} (overlapping or missing segments)`);
      next = seg.startExtent + seg.extentCount;
      for (const n of sc) {
        const names = typeof n.value === "string" ? [n.value] : Array.isArray(n.value) ? n.value.filter((x): x is string => typeof x === "string") : [];
        for (const name of names) if (lvNames.has(name) && n.key !== "type") uses.add(name);
      }
      if (seg.type === "striped") {
        const count = num(sc, "stripe_count", s, 1);
        if (count > MAX_STRIPES) fail(place, get(sc, "stripe_count")!.at, `LVM metadata: ${l.key}: ${count} stripes`);
        const list = get(sc, "stripes");
        if (!list || !Array.isArray(list.value) || list.value.length !== 2 * count) fail(place, list?.at ?? s.at, `LVM metadata: ${l.key} ${s.key}: stripes is not ${count} pairs of PV and extent`);
        if (count > 1) {
          seg.stripeSize = num(sc, "stripe_size", s, 1) * SECTOR;
          if (seg.extentCount % count !== 0) fail(place, s.at, `LVM metadata: ${l.key} ${s.key}: ${seg.extentCount} extents do not divide into ${count} stripes`);
          if (extentSize % seg.stripeSize !== 0) fail(place, get(sc, "stripe_size")!.at, `LVM metadata: ${l.key}: stripe size ${seg.stripeSize} does not divide the extent size ${extentSize}`);
        }
        const per = seg.extentCount / count;
        for (let i = 0; i < count; i++) {
          const pvKey = list.value[2 * i];
          const start = list.value[2 * i + 1];
          const pv = pvs.find((p) => p.key === pvKey);
          if (!pv || typeof start !== "number" || !Number.isSafeInteger(start) || start < 0) fail(place, list.at, `LVM metadata: ${l.key} ${s.key}: stripe ${i} names no PV of the VG or no extent`, String(pvKey));
          if (start + per > pv.peCount) fail(place, list.at, `LVM metadata: ${l.key} ${s.key}: extents ${start}-${start + per - 1} lie past the ${pv.peCount} extents of ${pv.key}`);
          const ranges = used.get(pv.key) ?? [];
          const clash = ranges.find((r) => r.from < start + per && start < r.to);
          if (clash) fail(place, list.at, `LVM metadata: ${l.key} ${s.key}: extents ${start}-${start + per - 1} of ${pv.key} are also ${clash.lv}'s`);
          ranges.push({ from: start, to: start + per, lv: l.key });
          used.set(pv.key, ranges);
          seg.stripes.push({ pv: pv.key, start });
        }
      }
      segments.push(seg);
    }
    const other = segments.find((s) => s.type !== "striped");
    const layout = other ? other.type : segments.some((s) => s.stripes.length > 1) ? "striped" : "linear";
    lvs.push({ name: l.key, id: str(c, "id", l), status, visible: status.includes("VISIBLE"), segments, extents: next, size: next * extentSize, layout, uses: [...uses] });
  }
  // sub-volume references must form no cycle (a mirror naming itself through its images, a pool its own data)
  const state = new Map<string, number>();
  const visit = (lv: LogicalVolume, path: string[]) => {
    if (state.get(lv.name) === 2) return;
    if (state.get(lv.name) === 1) fail(place, lvNodes.find((n) => n.key === lv.name)!.at, `LVM metadata: logical volumes refer to each other in a loop`, [...path, lv.name].join(" -> "));
    state.set(lv.name, 1);
    for (const u of lv.uses) visit(lvs.find((x) => x.name === u)!, [...path, lv.name]);
    state.set(lv.name, 2);
  };
  for (const lv of lvs) visit(lv, []);
  return { name: vgNode.key, id: str(body, "id", vgNode), seqno: num(body, "seqno", vgNode), extentSize, pvs, lvs, nodes, place };
}

/** Where LV bytes [offset, offset + run) lie: a PV and a byte offset in it, `run` as long as contiguous. */
export interface Placement {
  pv: string;
  pvOffset: number;
  run: number;
}

/** The PV bytes behind LV offset `offset` (inside a striped segment), up to `max` bytes. */
export function placeLvOffset(vg: VolumeGroup, lv: LogicalVolume, offset: number, max: number): Placement {
  const ext = vg.extentSize;
  let lo = 0;
  let hi = lv.segments.length - 1;
  const extent = Math.floor(offset / ext);
  while (lo < hi) {
    const mid = (lo + hi + 1) >> 1;
    if (lv.segments[mid]!.startExtent <= extent) lo = mid;
    else hi = mid - 1;
  }
  const seg = lv.segments[lo]!;
  if (seg.type !== "striped") throw new Error(`${lv.name}: a ${seg.type} segment has no plain extents`);
  const inSeg = offset - seg.startExtent * ext;
  const segEnd = seg.extentCount * ext - inSeg;
  const pvOf = (key: string) => vg.pvs.find((p) => p.key === key)!;
  if (seg.stripes.length === 1) {
    const a = seg.stripes[0]!;
    return { pv: a.pv, pvOffset: pvOf(a.pv).peStart + a.start * ext + inSeg, run: Math.min(max, segEnd) };
  }
  const ss = seg.stripeSize!;
  const n = seg.stripes.length;
  const chunk = Math.floor(inSeg / ss);
  const a = seg.stripes[chunk % n]!;
  const row = Math.floor(chunk / n);
  const within = inSeg % ss;
  return { pv: a.pv, pvOffset: pvOf(a.pv).peStart + a.start * ext + row * ss + within, run: Math.min(max, ss - within) };
}

export interface PvArea {
  lv: LogicalVolume;
  segment: Segment;
  stripe: number;
  start: number;
  extents: number;
}

const areaCache = new WeakMap<VolumeGroup, Map<string, PvArea[]>>();

/** The striped areas on one PV, ascending by first extent. */
export function pvAreas(vg: VolumeGroup, pvKey: string): PvArea[] {
  let byPv = areaCache.get(vg);
  if (!byPv) {
    byPv = new Map();
    for (const lv of vg.lvs) {
      for (const segment of lv.segments) {
        segment.stripes.forEach((s, stripe) => {
          const list = byPv!.get(s.pv) ?? [];
          list.push({ lv, segment, stripe, start: s.start, extents: segment.extentCount / segment.stripes.length });
          byPv!.set(s.pv, list);
        });
      }
    }
    for (const list of byPv.values()) list.sort((a, b) => a.start - b.start);
    areaCache.set(vg, byPv);
  }
  return byPv.get(pvKey) ?? [];
}

/** A copy of the items with `key` set at the VG level (seqno) or in one PV section (device). */
export function withValue(nodes: Node[], pathKeys: string[], value: Value): Node[] {
  const [head, ...rest] = pathKeys;
  return nodes.map((n) => {
    if (n.key !== head) return n;
    if (rest.length === 0) return { ...n, value };
    return n.children ? { ...n, children: withValue(n.children, rest, value) } : n;
  });
}

export type { Location };
