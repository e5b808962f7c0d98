import { uuidText } from "./uuid.ts";
import { OutputBuffer } from "./output-buffer.ts";
import type { SendCommand, SendStreamParser, Timespec } from "./stream.ts";

/**
 * One JSON object per command (NDJSON). Byte strings (paths, xattr names and values) are JSON
 * strings when they are valid UTF-8, else {"base64": "..."}; u64 values are JSON numbers (exact
 * even beyond 2^53: written from the bigint's digits); uuids are strings; file data is given as
 * its length and its offset in the input, never its bytes.
 */
export function commandJson(c: SendCommand): string {
  const fields: string[] = [`"index":${c.index}`, `"offset":${c.offset}`, `"stream":${c.stream}`, `"command":"${c.type}"`];
  for (const [key, value] of Object.entries(c)) {
    if (key === "index" || key === "offset" || key === "stream" || key === "type") continue;
    if (key === "data" && (c.type === "write" || c.type === "encoded_write")) {
      fields.push(`"dataLength":${(value as Uint8Array).length}`);
      continue;
    }
    fields.push(`${JSON.stringify(key)}:${valueJson(key, value)}`);
  }
  return `{${fields.join(",")}}`;
}

function valueJson(key: string, value: unknown): string {
  if (typeof value === "number" || typeof value === "bigint") return String(value);
  if (value instanceof Uint8Array) {
    if (value.length === 16 && /uuid$/i.test(key)) return `"${uuidText(value)}"`;
    return bytesJson(value);
  }
  if (typeof value === "object" && value !== null && "sec" in value) {
    const t = value as Timespec;
    return `{"sec":${t.sec},"nsec":${t.nsec}}`;
  }
  return JSON.stringify(value);
}

const STRICT_UTF8 = new TextDecoder("utf-8", { fatal: true });

function bytesJson(bytes: Uint8Array): string {
  try {
    return JSON.stringify(STRICT_UTF8.decode(bytes));
  } catch {
    return `{"base64":"${Buffer.from(bytes.buffer, bytes.byteOffset, bytes.length).toString("base64")}"}`;
  }
}

/** NDJSON of every command; flushed even when the parser stops with an error. */
export function jsonSendStream(parser: SendStreamParser, out = new OutputBuffer()): number {
  let n = 0;
  try {
    for (let c = parser.read(); c; c = parser.read()) {
      out.text(commandJson(c));
      out.byte(0x0a);
      out.maybeFlush();
      n++;
    }
  } finally {
    out.flush();
  }
  return n;
}

