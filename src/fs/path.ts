// Paths inside a file system: byte strings split on "/".

/** The components of a path; empty ones and "." dropped (".." is kept: the caller refuses it). */
export function splitPath(path: Uint8Array): Uint8Array[] {
  const parts: Uint8Array[] = [];
  let start = 0;
  for (let i = 0; i <= path.length; i++) {
    if (i === path.length || path[i] === 0x2f) {
      if (i > start && !(i - start === 1 && path[start] === 0x2e)) parts.push(path.subarray(start, i));
      start = i + 1;
    }
  }
  return parts;
}

export function equalBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}
