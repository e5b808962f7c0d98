// What the user chose for the decoders (the CLI reads it from IMGTOOL_GZIP and IMGTOOL_DECODE_MEMORY).
// Module state is per thread: whoever starts a thread that decodes hands it decodeSettings() in the
// thread's first message, and the thread calls useDecodeSettings() with it before decoding.

export interface DecodeSettings {
  /** gzip through zlib even where ISA-L is installed */
  gzipWithZlib: boolean;
  /** the largest window a decoder may allocate because its input says so, in MiB (default 128; see decodeMemoryLimit) */
  windowMiB?: number;
}

let current: DecodeSettings = { gzipWithZlib: false };

export function decodeSettings(): DecodeSettings {
  return current;
}

export function useDecodeSettings(settings: DecodeSettings): void {
  current = { ...settings };
}
