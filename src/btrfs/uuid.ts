// How the btrfs tools print a uuid: libuuid's uuid_unparse (util-linux libuuid/src/unparse.c).

const HEX = Array.from({ length: 256 }, (_, i) => i.toString(16).padStart(2, "0"));

/** Lowercase 8-4-4-4-12, as uuid_unparse prints. */
export function uuidText(u: Uint8Array): string {
  let s = "";
  for (let i = 0; i < 16; i++) {
    if (i === 4 || i === 6 || i === 8 || i === 10) s += "-";
    s += HEX[u[i]!];
  }
  return s;
}
