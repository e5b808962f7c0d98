import type { ImageInfo } from "../formats/image.ts";
import type { DataRun } from "../formats/image.ts";
import type { DiskFacts } from "../disk/disk-facts.ts";
import type { ProgressFactory } from "../progress.ts";
import type { Compression } from "../source/sniff.ts";
import type { Volume } from "../volume/volume.ts";

/**
 * What the user named, as one thing every command reads: a partition image, a file that is a
 * volume itself (a dd copy, a restored volume), a whole disk (a Clonezilla folder, a raw disk image)
 * or one partition of a disk.
 */
export type InputKind = "image" | "volume" | "disk" | "partition" | "logical-volume";

/** The facts `info` shows, by kind; plain data (src/cli/ renders them). */
export type InputFacts =
  | { kind: "image"; image: ImageInfo }
  | { kind: "volume"; file: string; size: number | undefined; content: string; compression: Compression[]; pieces: string[] }
  | { kind: "disk" | "partition"; disk: DiskFacts };

/** What verify found: checksums that failed (exit 4), other damage (exit 3), and what held. */
export interface VerifyReport {
  checksumProblems: string[];
  otherProblems: string[];
  /** one line per part checked that held */
  checked: string[];
  /** bytes of data read */
  dataBytes: number;
}

/**
 * The output as restore writes it, for an input that changes what it wrote before going on
 * (restore --fit resizes each file system in place): what was yielded up to volume offset `to` is
 * written (the gaps up to it as restore fills them) and the bytes are at `base` + their offset in
 * the open descriptor `fd`; the input may read and rewrite them there, up to `to`, before it yields again.
 */
export interface WrittenOutput {
  settle(to: number): { fd: number; base: number };
}

export interface Input {
  readonly kind: InputKind;
  /** as the user named it */
  readonly name: string;
  /** bytes of the volume or disk; undefined when only reading it tells (a compressed raw volume from a pipe) */
  readonly size: number | undefined;
  /** every file the input is read from: an output may be none of them */
  readonly files: readonly string[];
  /** problems found on opening that leave the rest readable (a partition that was not saved) */
  readonly warnings: readonly string[];
  /** bytes of data a full read goes through (for progress); undefined when not known up front */
  dataBytes(): number | undefined;
  /**
   * The data, ascending, checksums verified unless `verify` is false; what restore writes and
   * verify reads. Read once, in order: works on pipes and compressed streams without an index.
   */
  dataBatches(opts: { verify: boolean; written?: WrittenOutput }): Iterable<DataRun[]>;
  /**
   * The volume at any offset (serve, mount, cat, file systems): a compressed image through its seek
   * index; throws a UsageError saying why where that cannot be.
   */
  openVolume(): Volume;
  /** What identifies the bytes behind it (an overlay made for another input is refused). */
  identity(): { name: string; size: number; blockSize: number; identity: string | undefined };
  /** read everything and check every checksum and count */
  verify(progress?: ProgressFactory): VerifyReport;
  describe(): InputFacts;
  close(): void;
}
