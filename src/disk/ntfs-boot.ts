// NTFS boot sector and its backup in the partition's last sector (ntfs-3g libntfs/bootsect.c, ntfsprogs/ntfsfix.c).

/**
 * The backup boot sector of an NTFS volume of a `partitionSize`-byte partition, given its first
 * sector: a copy of it, as `ntfsfix -d` and mkntfs put it in the partition's last sector; undefined
 * when the first sector is not an NTFS boot sector or says the volume reaches that last sector.
 */
export function ntfsBackupBootSector(first: Uint8Array, partitionSize: number, sectorSize: number): Uint8Array | undefined {
  if (first.length < sectorSize || sectorSize < 512) return undefined;
  const oem = String.fromCharCode(...first.subarray(3, 11));
  if (oem !== "NTFS    " || first[510] !== 0x55 || first[511] !== 0xaa) return undefined;
  const dv = new DataView(first.buffer, first.byteOffset, first.byteLength);
  const bytesPerSector = dv.getUint16(11, true);
  const numberOfSectors = dv.getBigUint64(0x28, true);
  if (bytesPerSector !== sectorSize) return undefined;
  if (numberOfSectors * BigInt(sectorSize) >= BigInt(partitionSize)) return undefined;
  return first.slice(0, sectorSize);
}
