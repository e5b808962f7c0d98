// Linux swap area v1 header (util-linux include/swapheader.h, disk-utils/mkswap.c) as `mkswap -U UUID -L LABEL` writes it.
import { ImageError } from "../errors.ts";

/** the page size of x86-64 and most Linux machines, which mkswap uses by default */
export const SWAP_PAGE_SIZE = 4096;
const SIGNATURE = "SWAPSPACE2";
const HEADER_AT = 1024;
const LABEL_BYTES = 16;

export interface SwapInfo {
  uuid?: string;
  label?: string;
}

/** Clonezilla's swappt-sdXN.info: `UUID="..."` and `LABEL="..."` lines (shell assignments). */
export function parseSwapInfo(text: string, file: string): SwapInfo {
  if (text.length > 4096) throw new ImageError({ file }, "too long for a swap info file", `${text.length} bytes`);
  const info: SwapInfo = {};
  for (const line of text.split("\n")) {
    const m = /^\s*(UUID|LABEL)="([^"]*)"\s*$/.exec(line) ?? /^\s*(UUID|LABEL)=(\S*)\s*$/.exec(line);
    if (!m) continue;
    if (m[1] === "UUID") {
      if (m[2] !== "" && !/^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$/.test(m[2]!)) {
        throw new ImageError({ file }, "UUID is not a UUID", JSON.stringify(m[2]));
      }
      info.uuid = m[2] || undefined;
    } else info.label = m[2] || undefined;
  }
  return info;
}

/**
 * The first page of a swap partition of `size` bytes: zeroed boot bits, version 1, last page,
 * UUID (byte order of its text), label (cut at 15 bytes and NUL-terminated, as mkswap does), "SWAPSPACE2" at the page's end.
 */
export function swapHeader(size: number, info: SwapInfo, pageSize = SWAP_PAGE_SIZE): Uint8Array {
  const pages = Math.floor(size / pageSize);
  if (pages < 10) throw new Error(`a swap area needs at least 10 pages, this partition has ${pages}`);
  if (pages - 1 > 0xffffffff) throw new Error("swap area too large for a v1 header");
  const page = new Uint8Array(pageSize);
  const dv = new DataView(page.buffer);
  dv.setUint32(HEADER_AT, 1, true);
  dv.setUint32(HEADER_AT + 4, pages - 1, true);
  dv.setUint32(HEADER_AT + 8, 0, true);
  if (info.uuid) {
    const hex = info.uuid.replace(/-/g, "");
    for (let i = 0; i < 16; i++) page[HEADER_AT + 12 + i] = parseInt(hex.slice(i * 2, i * 2 + 2), 16);
  }
  if (info.label) page.set(new TextEncoder().encode(info.label).subarray(0, LABEL_BYTES - 1), HEADER_AT + 28);
  page.set(Array.from(SIGNATURE, (c) => c.charCodeAt(0)), pageSize - SIGNATURE.length);
  return page;
}
