import fs from "node:fs";

const FLUSH_AT = 256 << 10;
const UTF8 = new TextEncoder();

/**
 * Output bytes gathered in one reusable buffer and written to a file descriptor in large
 * chunks: one write per ~256 KiB instead of one per line. Text is bytes here (paths are not UTF-8).
 */
export class OutputBuffer {
  buf = new Uint8Array(FLUSH_AT + (64 << 10));
  pos = 0;

  /** `sink` receives each full chunk; the default writes to fd 1. */
  constructor(private readonly sink: (bytes: Uint8Array) => void = (bytes) => writeAll(1, bytes)) {}

  /** Room for n more bytes (flushing, or growing for a single long line). */
  reserve(n: number): void {
    if (this.pos + n <= this.buf.length) return;
    this.flush();
    if (n > this.buf.length) this.buf = new Uint8Array(n);
  }

  /** Flush when the buffer is past the chunk size; call between records. */
  maybeFlush(): void {
    if (this.pos >= FLUSH_AT) this.flush();
  }

  flush(): void {
    if (this.pos === 0) return;
    this.sink(this.buf.subarray(0, this.pos));
    this.pos = 0;
  }

  /** ASCII text (the caller knows it is ASCII). */
  ascii(text: string): void {
    this.reserve(text.length);
    const b = this.buf;
    let p = this.pos;
    for (let i = 0; i < text.length; i++) b[p++] = text.charCodeAt(i);
    this.pos = p;
  }

  /** Any text, as UTF-8. */
  text(text: string): void {
    this.reserve(text.length * 3);
    this.pos += UTF8.encodeInto(text, this.buf.subarray(this.pos)).written;
  }

  /** A non-negative integer in decimal. */
  decimal(n: number | bigint): void {
    if (typeof n === "bigint" || n >= 1e15) {
      this.ascii(n.toString());
      return;
    }
    this.reserve(16);
    const b = this.buf;
    let digits = 1;
    for (let t = n; t >= 10; t = Math.floor(t / 10)) digits++;
    let p = this.pos + digits;
    this.pos = p;
    do {
      const q = Math.floor(n / 10);
      b[--p] = 0x30 + (n - q * 10);
      n = q;
    } while (n > 0);
  }

  byte(c: number): void {
    this.reserve(1);
    this.buf[this.pos++] = c;
  }

  bytes(data: Uint8Array): void {
    this.reserve(data.length);
    this.buf.set(data, this.pos);
    this.pos += data.length;
  }

  /** n spaces */
  spaces(n: number): void {
    this.reserve(n);
    this.buf.fill(0x20, this.pos, this.pos + n);
    this.pos += n;
  }
}

/** Write every byte, retrying short writes and a non-blocking descriptor's EAGAIN. */
export function writeAll(fd: number, bytes: Uint8Array): void {
  let done = 0;
  while (done < bytes.length) {
    try {
      done += fs.writeSync(fd, bytes, done, bytes.length - done);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== "EAGAIN") throw e;
      Bun.sleepSync(1);
    }
  }
}
