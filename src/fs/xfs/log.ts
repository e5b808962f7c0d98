// Whether XFS's internal log ends in an unmount record (clean), per xfsprogs libxfs/xfs_log_format.h (xlog_rec_header, xlog_op_header) and the kernel's xlog_find_head.
import { view } from "./superblock.ts";

const BBSIZE = 512;
const RECORD_MAGIC = 0xfeedbabe;
const UNMOUNT_TRANS = 0x20;
const CYCLE_DATA_SIZE = 32768;
/** a log record is at most 256 KiB of data plus its header sectors */
const MAX_RECORD_BBS = (256 * 1024) / BBSIZE + 16;

/**
 * Reads the log's 512-byte sectors through `readSector`: the head is where the cycle number
 * stamped on every sector drops; the last record before it must hold a single unmount operation.
 * Returns undefined when clean, else why the log needs replaying.
 */
export function logDirtyReason(sectors: number, readSector: (bb: number) => Uint8Array, hint = 0): string | undefined {
  if (sectors < 2) return "the log is too small to hold a record";
  const cycleOf = (bb: number) => {
    const v = view(readSector(bb));
    return v.getUint32(0) === RECORD_MAGIC ? v.getUint32(4) : v.getUint32(0);
  };
  const first = cycleOf(0);
  if (first === 0) return undefined; // never written: mkfs leaves an unmount record, so this is a zeroed log
  // sectors [0, head) carry the current cycle, [head, end) the one before. Galloping forward from
  // `hint` (the superblock's last logged change, so at or before the head when it carries the
  // current cycle) and then halving: only the log around the head is read, which matters when each
  // distant read decodes a compressed image afresh
  const from = hint > 0 && hint < sectors && cycleOf(hint) === first ? hint : 0;
  let lo = from + 1;
  let hi = lo;
  for (let step = 1; hi < sectors && cycleOf(hi) === first; step *= 2) {
    lo = hi + 1;
    hi = Math.min(sectors, from + step * 2);
  }
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (cycleOf(mid) === first) lo = mid + 1;
    else hi = mid;
  }
  const head = lo;
  for (let back = 1; back <= Math.min(MAX_RECORD_BBS, sectors); back++) {
    const bb = (head - back + sectors) % sectors;
    const sector = readSector(bb);
    const v = view(sector);
    if (v.getUint32(0) !== RECORD_MAGIC) continue;
    const ops = v.getInt32(40);
    const version = v.getInt32(8);
    const size = version === 2 ? v.getInt32(320) : CYCLE_DATA_SIZE;
    const headerSectors = size > CYCLE_DATA_SIZE ? Math.ceil(size / CYCLE_DATA_SIZE) : 1;
    const data = readSector((bb + headerSectors) % sectors);
    // xlog_op_header: tid (its first word replaced by the cycle), len, clientid, flags
    if (ops === 1 && (data[9]! & UNMOUNT_TRANS) !== 0) return undefined;
    return "the log holds changes that were not written back (the volume was saved while mounted or after a crash)";
  }
  return "no log record found before the log head";
}
