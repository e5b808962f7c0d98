// `sfdisk --dump` output (Clonezilla's sdX-pt.sf), as util-linux sfdisk(8) "BACKING UP THE PARTITION TABLE" describes it.
import { ImageError } from "../errors.ts";

export interface SfdiskPartition {
  /** the device name as written, "/dev/sda1" */
  device: string;
  /** in sectors */
  start: number;
  size: number;
  /** "83", "5" for MBR; a GUID in upper case for GPT */
  type: string;
  uuid?: string;
  name?: string;
  attrs?: string;
  bootable: boolean;
}

export interface SfdiskDump {
  label: "dos" | "gpt";
  labelId?: string;
  device?: string;
  firstLba?: number;
  lastLba?: number;
  sectorSize: number;
  tableLength?: number;
  partitions: SfdiskPartition[];
}

/** a dump of a real table is a few KiB; 128 GPT entries plus headers */
export const MAX_DUMP_BYTES = 256 << 10;
const MAX_PARTITIONS = 256;
const MAX_SECTORS = 2 ** 48;

export function parseSfdiskDump(text: string, file: string): SfdiskDump {
  if (text.length > MAX_DUMP_BYTES) throw new ImageError({ file }, "too long for an sfdisk dump", `${text.length} bytes`);
  const dump: SfdiskDump = { label: "dos", sectorSize: 512, partitions: [] };
  let sawLabel = false;
  const lines = text.split("\n");
  for (const [i, raw] of lines.entries()) {
    const line = raw.trim();
    const where = { file, offset: lines.slice(0, i).reduce((n, l) => n + l.length + 1, 0) };
    if (line === "" || line.startsWith("#")) continue;
    const colon = line.indexOf(":");
    const header = /^([a-z-]+):\s*(.*)$/.exec(line);
    if (header && !line.includes("=")) {
      const [, key, value] = header as unknown as [string, string, string];
      switch (key) {
        case "label":
          if (value !== "dos" && value !== "gpt") throw new ImageError(where, "unsupported partition table label", JSON.stringify(value));
          dump.label = value;
          sawLabel = true;
          break;
        case "label-id":
          dump.labelId = value;
          break;
        case "device":
          dump.device = value;
          break;
        case "first-lba":
          dump.firstLba = sectors(value, where, key);
          break;
        case "last-lba":
          dump.lastLba = sectors(value, where, key);
          break;
        case "table-length":
          dump.tableLength = sectors(value, where, key);
          break;
        case "sector-size": {
          const n = sectors(value, where, key);
          if (n < 512 || n > 65536 || (n & (n - 1)) !== 0) throw new ImageError(where, "sector-size is not a power of two from 512 to 64K", value);
          dump.sectorSize = n;
          break;
        }
        default:
          // unit:, grain:, ... say nothing about where bytes go
          break;
      }
      continue;
    }
    if (colon < 0) throw new ImageError(where, "not an sfdisk dump line", JSON.stringify(line.slice(0, 60)));
    if (dump.partitions.length === MAX_PARTITIONS) throw new ImageError(where, `more than ${MAX_PARTITIONS} partitions`);
    dump.partitions.push(partitionLine(line.slice(0, colon).trim(), line.slice(colon + 1), where));
  }
  if (!sawLabel) throw new ImageError({ file }, "no label: line (not an sfdisk dump)");
  return dump;
}

function partitionLine(device: string, rest: string, where: { file: string; offset: number }): SfdiskPartition {
  const p: Partial<SfdiskPartition> & { bootable: boolean } = { device, bootable: false };
  for (const field of splitFields(rest)) {
    const eq = field.indexOf("=");
    if (eq < 0) {
      if (field === "bootable") p.bootable = true;
      continue;
    }
    const key = field.slice(0, eq).trim();
    const value = unquote(field.slice(eq + 1).trim());
    if (key === "start") p.start = sectors(value, where, "start");
    else if (key === "size") p.size = sectors(value, where, "size");
    else if (key === "type" || key === "Id") p.type = value.toUpperCase();
    else if (key === "uuid") p.uuid = value.toUpperCase();
    else if (key === "name") p.name = value;
    else if (key === "attrs") p.attrs = value;
  }
  if (p.start === undefined || p.size === undefined || p.type === undefined) {
    throw new ImageError(where, `partition ${device} lacks start, size or type`);
  }
  return p as SfdiskPartition;
}

/** fields separated by commas outside double quotes */
function splitFields(s: string): string[] {
  const out: string[] = [];
  let cur = "";
  let quoted = false;
  for (const c of s) {
    if (c === '"') quoted = !quoted;
    if (c === "," && !quoted) {
      out.push(cur.trim());
      cur = "";
    } else cur += c;
  }
  if (cur.trim()) out.push(cur.trim());
  return out;
}

function unquote(s: string): string {
  return s.length >= 2 && s.startsWith('"') && s.endsWith('"') ? s.slice(1, -1).replace(/\\x([0-9a-f]{2})/gi, (_, h) => String.fromCharCode(parseInt(h, 16))) : s;
}

function sectors(value: string, where: { file: string; offset: number }, what: string): number {
  if (!/^\d{1,16}$/.test(value)) throw new ImageError(where, `${what} is not a sector count`, JSON.stringify(value.slice(0, 30)));
  const n = Number(value);
  if (n > MAX_SECTORS) throw new ImageError(where, `${what} is absurd`, value);
  return n;
}
