import { type FFIFunction, type Library, type Pointer, CString, dlopen, ptr } from "bun:ffi";
import { ImageError, type Location, withCommas } from "../src/errors.ts";
import type { ChunkSource } from "../src/source/chunk-source.ts";
import { decodeSettings } from "./decode-settings.ts";

/** Compressed bytes handed to the library per refill; one such buffer per decoder, for its lifetime. */
export const INPUT_BUFFER_SIZE = 1 << 20;

/** The Library objects behind bound functions, kept so none is closed while its function is in use. */
const boundLibraries: Library<Record<string, FFIFunction>>[] = [];

/**
 * The functions of `soname`, each bound by bun:ffi on its first use. bun:ffi compiles a trampoline
 * for every symbol handed to dlopen (about 1 ms each, measured), so binding a whole library up front
 * cost every thread that touched libc 40 ms for the three calls it made.
 */
export function bindOnFirstUse<const S extends Record<string, FFIFunction>>(soname: string, specs: S): Library<S>["symbols"] {
  const functions = {} as Library<S>["symbols"];
  for (const name of Object.keys(specs)) {
    Object.defineProperty(functions, name, {
      configurable: true,
      enumerable: true,
      get() {
        const lib = dlopen(soname, { [name]: specs[name]! });
        boundLibraries.push(lib);
        const fn = lib.symbols[name];
        Object.defineProperty(functions, name, { value: fn, enumerable: true });
        return fn;
      },
    });
  }
  return functions;
}

const RTLD_LAZY = 1;
let dynamicLinker: { dlopen: (file: Buffer, mode: number) => Pointer | null; dlsym: (handle: Pointer, name: Buffer) => Pointer | null } | undefined;
/** the dynamic linker's handle of each library asked for (null: it does not load), kept open */
const handles = new Map<string, Pointer | null>();

/** The address of `name` in `soname`, or null when either is missing; nothing is bound. */
export function symbolAddress(soname: string, name: string): Pointer | null {
  dynamicLinker ??= bindOnFirstUse("libc.so.6", {
    dlopen: { args: ["ptr", "i32"], returns: "ptr" },
    dlsym: { args: ["ptr", "ptr"], returns: "ptr" },
  });
  let handle = handles.get(soname);
  if (handle === undefined) {
    handle = dynamicLinker.dlopen(cstr(soname), RTLD_LAZY);
    handles.set(soname, handle);
  }
  return handle && dynamicLinker.dlsym(handle, cstr(name));
}

/** A shared library opened on first use; `null` once known to be missing. */
export class LazyLibrary<const S extends Record<string, FFIFunction>> {
  private lib: Library<S>["symbols"] | null | undefined;
  constructor(
    /** the soname, e.g. "libzstd.so.1" */
    readonly soname: string,
    /** the Debian package that ships it, for the message */
    readonly aptPackage: string,
    private readonly symbols: S,
  ) {}

  /** The functions, or undefined when the library (or one of the symbols) is not on this machine. */
  tryLoad(): Library<S>["symbols"] | undefined {
    if (this.lib === undefined) {
      const present = Object.keys(this.symbols).every((name) => symbolAddress(this.soname, name) !== null);
      this.lib = present ? bindOnFirstUse(this.soname, this.symbols) : null;
    }
    return this.lib ?? undefined;
  }

  /** The functions, or an ImageError at `where` saying what to install to read `what`. */
  load(where: Location, what: string): Library<S>["symbols"] {
    const s = this.tryLoad();
    if (!s) throw new ImageError(where, `${what}, but ${this.soname} is not installed (apt-get install ${this.aptPackage})`);
    return s;
  }
}

/** A NUL-terminated copy of `s`, as a `ptr` argument for a `const char *` parameter. */
export function cstr(s: string): Buffer {
  return Buffer.from(`${s}\0`);
}

/** A `const char *` result (or field) as a string; "" for NULL. */
export function readCString(p: Pointer | number | null): string {
  return p ? new CString(p as Pointer).toString() : "";
}

// ---- C structs (x86_64 / LP64: pointers, size_t and long are 8 bytes, natural alignment) ----

export type CType = "ptr" | "size_t" | "u64" | "ulong" | "u32" | "i32" | "uint" | "int";

const SIZEOF: Record<CType, number> = { ptr: 8, size_t: 8, u64: 8, ulong: 8, u32: 4, i32: 4, uint: 4, int: 4 };

export interface StructLayout<F extends string> {
  readonly size: number;
  readonly offset: Readonly<Record<F, number>>;
}

/** Offsets and sizeof of a C struct from its fields in declaration order (arrays as [type, count]). */
export function structLayout<F extends string>(fields: Record<F, CType | readonly [CType, number]>): StructLayout<F> {
  const offset = {} as Record<F, number>;
  let at = 0;
  let align = 1;
  for (const [name, spec] of Object.entries(fields) as [F, CType | readonly [CType, number]][]) {
    const [type, count] = typeof spec === "string" ? [spec, 1] : spec;
    const size = SIZEOF[type];
    at = Math.ceil(at / size) * size;
    offset[name] = at;
    at += size * count;
    align = Math.max(align, size);
  }
  return { size: Math.ceil(at / align) * align, offset };
}

const TWO32 = 2 ** 32;

/**
 * One native-visible instance of a struct, allocated once and zeroed (the `*_INIT` macros of
 * zlib, liblzma and libbz2 are all zeros). Field accessors take byte offsets from a StructLayout.
 */
export class NativeStruct<F extends string> {
  readonly bytes: Uint8Array;
  readonly address: Pointer;
  private readonly view: DataView;
  constructor(readonly layout: StructLayout<F>) {
    // 8-byte aligned storage: a Float64Array's buffer
    this.bytes = new Uint8Array(new Float64Array(Math.ceil(layout.size / 8)).buffer, 0, layout.size);
    this.view = new DataView(this.bytes.buffer);
    this.address = ptr(this.bytes);
  }
  clear(): void {
    this.bytes.fill(0);
  }
  /** Address of a field, for out-parameters (`size_t *`, `T **`). */
  fieldAddress(field: F): Pointer {
    return (this.address + this.layout.offset[field]) as Pointer;
  }
  /** A 64-bit field (pointer, size_t, u64) from a non-negative integer below 2^53; no BigInt on the hot path. */
  set64(field: F, value: number): void {
    const o = this.layout.offset[field];
    this.view.setUint32(o, value >>> 0, true);
    this.view.setUint32(o + 4, Math.floor(value / TWO32), true);
  }
  get64(field: F): number {
    const o = this.layout.offset[field];
    return this.view.getUint32(o, true) + this.view.getUint32(o + 4, true) * TWO32;
  }
  set32(field: F, value: number): void {
    this.view.setUint32(this.layout.offset[field], value >>> 0, true);
  }
  get32(field: F): number {
    return this.view.getUint32(this.layout.offset[field], true);
  }
}

/** The buffer fields of zlib's z_stream, bzip2's bz_stream, liblzma's lzma_stream and ISA-L's inflate_state. */
export type StreamBufferField = "next_in" | "avail_in" | "next_out" | "avail_out";

/**
 * Point a stream struct at the input and output, make one library call, and record in `r` what
 * it consumed and produced. `availBits` is the width of avail_in/avail_out (32 for unsigned int,
 * 64 for size_t). Returns the library's return code.
 */
export function streamCall<F extends string>(
  s: NativeStruct<F | StreamBufferField>,
  availBits: 32 | 64,
  inAddress: Pointer,
  inLength: number,
  outAddress: Pointer,
  outLength: number,
  r: StepResult,
  call: () => number,
): number {
  const inN = availBits === 32 ? Math.min(inLength, MAX_U32) : inLength;
  const outN = availBits === 32 ? Math.min(outLength, MAX_U32) : outLength;
  const setAvail = (f: StreamBufferField, v: number) => (availBits === 32 ? s.set32(f, v) : s.set64(f, v));
  const getAvail = (f: StreamBufferField) => (availBits === 32 ? s.get32(f) : s.get64(f));
  s.set64("next_in", inAddress);
  setAvail("avail_in", inN);
  s.set64("next_out", outAddress);
  setAvail("avail_out", outN);
  const rc = call();
  r.consumed = inN - getAvail("avail_in");
  r.produced = outN - getAvail("avail_out");
  return rc;
}

const MAX_U32 = 0xffffffff;

// ---- the decoder loop shared by every library ----

/** The default window a decoder may allocate: 128 MiB, what zstd -d allows without --memory. */
const DEFAULT_DECODE_WINDOW = 128 << 20;

/** The error of an input that asks for more memory than decoders may take (see decodeMemoryLimit). */
export function tooMuchMemory(where: Location, kind: string, detail: string): ImageError {
  return new ImageError(where, `${kind} data needs too much memory to decode`, `${detail}; to allow more, set IMGTOOL_DECODE_MEMORY=<MiB> (as zstd -d --memory)`);
}

/**
 * The largest window (history) a decoder may allocate because its input says so: 128 MiB, or the
 * settings' windowMiB (a power of two is used as is, anything else rounds down to one; at most 2048).
 */
export function decodeMemoryLimit(): { window: number; text: string } {
  const mib = decodeSettings().windowMiB ?? Number.NaN;
  const wanted = Number.isFinite(mib) && mib >= 1 ? Math.min(mib, 2048) * (1 << 20) : DEFAULT_DECODE_WINDOW;
  const window = 2 ** Math.floor(Math.log2(wanted));
  return { window, text: `${window / (1 << 20)} MiB` };
}

/** What one call into the library did. */
export interface StepResult {
  /** compressed bytes consumed */
  consumed: number;
  /** decompressed bytes written at the output pointer */
  produced: number;
  /** a member/frame/stream ended here, with all of its output delivered */
  ended: boolean;
}

/**
 * A streaming decoder over a ChunkSource of compressed bytes: one input buffer, decoded straight
 * into the caller's buffer. A subclass supplies one library call (`step`) and what to do when
 * more input follows the end of a member/frame/stream (`restart`).
 */
export abstract class NativeDecoder implements ChunkSource {
  readonly size = undefined;
  readonly name: string;
  private readonly inBuf: Uint8Array;
  private readonly inAddress: Pointer;
  private inStart = 0;
  private inEnd = 0;
  /** compressed offset of inBuf[0] */
  private inBase = 0;
  /** the input has returned 0 */
  protected inputEnded = false;
  /** the last step ended a member/frame/stream (nothing is pending inside the library) */
  private atBoundary = false;
  private finished = false;
  private closed = false;
  private readonly result: StepResult = { consumed: 0, produced: 0, ended: false };

  constructor(
    protected readonly input: ChunkSource,
    /** "gzip", "zstd", ... as in messages */
    readonly kind: string,
    /** what one self-contained unit is called: "member", "frame", "stream" */
    private readonly unit: string,
    /** where compressed input is read to (a caller decoding many short runs lends one; default: a new one) */
    inputBuffer: Uint8Array = new Uint8Array(INPUT_BUFFER_SIZE),
  ) {
    this.name = `${input.name} (${kind})`;
    this.inBuf = inputBuffer;
    this.inAddress = ptr(inputBuffer);
  }

  /**
   * One library call: decode from `inAddress` (`inLength` bytes) into `outAddress` (`outLength`
   * bytes), filling `r`. Throws via `corrupt()`/`truncated()` on a library error.
   */
  protected abstract step(inAddress: Pointer, inLength: number, outAddress: Pointer, outLength: number, r: StepResult): void;

  /** More input follows a finished member/frame/stream: get the library ready for the next one. */
  protected abstract restart(): void;

  /** Free the library state (called once). */
  protected abstract release(): void;

  read(into: Uint8Array): number {
    if (this.finished || into.length === 0) return 0;
    const out = ptr(into);
    const r = this.result;
    for (;;) {
      if (this.inStart === this.inEnd && !this.inputEnded) this.refill();
      if (this.atBoundary) {
        if (this.inStart === this.inEnd) {
          this.finished = true;
          return 0;
        }
        this.restart();
        this.atBoundary = false;
      }
      const avail = this.inEnd - this.inStart;
      r.consumed = 0;
      r.produced = 0;
      r.ended = false;
      this.step((this.inAddress + this.inStart) as Pointer, avail, out, into.length, r);
      this.inStart += r.consumed;
      this.atBoundary = r.ended;
      if (r.produced > 0) {
        this.decoded += r.produced;
        return r.produced;
      }
      if (r.ended || r.consumed > 0) continue;
      if (this.inputEnded) this.truncated();
      if (avail > 0) this.corrupt("the library made no progress");
    }
  }

  private decoded = 0;

  private refill(): void {
    this.inBase += this.inEnd;
    this.inStart = this.inEnd = 0;
    const n = this.input.read(this.inBuf);
    if (n === 0) this.inputEnded = true;
    this.inEnd = n;
  }

  /** Where the library is in the compressed input, for messages. */
  protected compressedLocation(consumed = 0): Location {
    return this.input.locate(this.inBase + this.inStart + consumed);
  }

  /** `consumed`: compressed bytes the failing call had already taken, to point nearer the bad byte. */
  protected corrupt(detail: string, consumed = 0): never {
    throw new ImageError(this.compressedLocation(consumed), `corrupt ${this.kind} data`, detail);
  }

  /** The input asks for more memory than decoders may take (see decodeMemoryLimit). */
  protected tooLarge(detail: string, consumed = 0): never {
    throw tooMuchMemory(this.compressedLocation(consumed), this.kind, detail);
  }

  protected truncated(): never {
    const missing = this.input.missingPiece?.();
    if (missing) throw missing;
    throw new ImageError(
      this.compressedLocation(),
      `truncated ${this.kind} data`,
      `the input ends inside a ${this.unit}, after ${withCommas(this.decoded)} decompressed bytes`,
    );
  }

  locate(offset: number): Location {
    return { file: this.input.name, offset, decoded: this.kind };
  }

  missingPiece(): ImageError | undefined {
    return this.input.missingPiece?.();
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.finished = true;
    this.release();
    this.input.close();
  }
}
