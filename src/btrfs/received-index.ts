// DIR/.imgtool-received.json: which received subvolume (by the sender's uuid and ctransid) lives in
// which directory of DIR, as btrfs keeps received_uuid in the subvolume's root item.
import fs from "node:fs";
import path from "node:path";
import { UsageError } from "../errors.ts";

/** Which received subvolume (by the sender's uuid) lives in which directory of DIR. */
export const RECEIVED_INDEX = ".imgtool-received.json";
const INDEX_FORMAT = "imgtool-received/1";

interface IndexEntry {
  /** the directory name when it is valid UTF-8 */
  name?: string;
  /** otherwise its bytes in hex */
  nameHex?: string;
  receivedUuid: string;
  ctransid: string;
  parentUuid?: string;
}

function entryName(e: IndexEntry): Buffer {
  return e.name !== undefined ? Buffer.from(e.name, "utf8") : Buffer.from(e.nameHex ?? "", "hex");
}

export class ReceivedIndex {
  private readonly file: string;
  readonly entries: IndexEntry[];

  constructor(readonly dir: string) {
    this.file = path.join(dir, RECEIVED_INDEX);
    this.entries = this.load();
  }

  private load(): IndexEntry[] {
    let text: string;
    try {
      text = fs.readFileSync(this.file, "utf8");
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === "ENOENT") return [];
      throw e;
    }
    const parsed = JSON.parse(text) as { format?: string; subvolumes?: IndexEntry[] };
    if (parsed.format !== INDEX_FORMAT || !Array.isArray(parsed.subvolumes)) {
      throw new UsageError(`${this.file}: not an imgtool received-subvolume index (format ${JSON.stringify(parsed.format)})`);
    }
    return parsed.subvolumes;
  }

  /** The directory received from the sender's subvolume `uuid`, preferring the same ctransid; the newest first. */
  find(uuid: string, ctransid: string): Buffer | undefined {
    let fallback: Buffer | undefined;
    for (let i = this.entries.length - 1; i >= 0; i--) {
      const e = this.entries[i]!;
      if (e.receivedUuid !== uuid) continue;
      const name = entryName(e);
      if (!fs.existsSync(Buffer.concat([Buffer.from(this.dir), Buffer.from("/"), name]))) continue;
      if (e.ctransid === ctransid) return name;
      fallback ??= name;
    }
    return fallback;
  }

  add(name: Uint8Array, receivedUuid: string, ctransid: string, parentUuid?: string): void {
    const utf8 = Buffer.from(name).toString("utf8");
    const named = Buffer.from(utf8, "utf8").equals(name) ? { name: utf8 } : { nameHex: Buffer.from(name).toString("hex") };
    const entry: IndexEntry = { ...named, receivedUuid, ctransid, ...(parentUuid ? { parentUuid } : {}) };
    this.entries.push(entry);
    const temporary = `${this.file}.tmp`;
    fs.writeFileSync(temporary, `${JSON.stringify({ format: INDEX_FORMAT, subvolumes: this.entries }, null, 1)}\n`);
    fs.renameSync(temporary, this.file);
  }
}
