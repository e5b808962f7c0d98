#!/bin/bash
# Makes the damaged file systems in test/failure/fs/ (partclone images), each named by the problem
# `imgtool extract` must report while still extracting the rest. Needs root (partclone), e2fsprogs,
# dosfstools, mtools. Run from the repository root: bash test/failure/fs/make.sh
set -euo pipefail
out=$(pwd)/test/failure/fs
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
cd "$work"
export E2FSPROGS_FAKE_TIME=1700000000
mkdir -p src/docs src/a/b
for i in 1 2 3; do printf 'note %s\n' $i > src/docs/note$i.txt; done
printf 'kept\n' > src/keep.txt
head -c 20000 /dev/zero | tr '\0' 'z' > src/a/b/big.txt
ext() {  # name, mkfs features, debugfs commands...
  local name=$1 features=$2; shift 2
  truncate -s 2M v.vol
  mkfs.ext4 -q -F -b 1024 -N 64 -O "$features" -U 0c0e0f00-0000-4000-8000-0000000000fa -E root_owner=0:0 -d src v.vol
  for c in "$@"; do debugfs -w -R "$c" v.vol >/dev/null 2>&1; done
  rm -f "$out/$name.ext4-ptcl-img"
  partclone.ext4 -q -c -s v.vol -O "$out/$name.ext4-ptcl-img" >/dev/null 2>&1
}
# a directory block overwritten: with metadata_csum its checksum fails; without, its entries do not parse
ext "directory-block-checksum-mismatch" "^has_journal,metadata_csum" "zap_block -f /docs -o 8 -l 8 -p 255 0"
ext "directory-entry-does-not-fit" "^has_journal,^metadata_csum" "zap_block -f /docs -o 4 -l 2 -p 255 0"
# the extent of /a/b/big.txt points far past the end of the 2 MiB volume
ext "inode-points-past-the-end-of-the-volume" "^has_journal,^metadata_csum" "sif /a/b/big.txt block[5] 9000000"
# /a/b/loop is a second name of /a: a loop in the directory entries
ext "loop-in-the-directory-entries" "^has_journal,^metadata_csum" "link /a /a/b/loop"
# a journal with the needs_recovery flag: read as it is, with a warning
truncate -s 4M v.vol
mkfs.ext4 -q -F -b 1024 -N 64 -J size=1 -U 0c0e0f00-0000-4000-8000-0000000000fb -E root_owner=0:0 -d src v.vol
debugfs -w -R "feature needs_recovery" v.vol >/dev/null 2>&1
rm -f "$out/warning-journal-not-replayed.ext4-ptcl-img"
partclone.ext4 -q -c -s v.vol -O "$out/warning-journal-not-replayed.ext4-ptcl-img" >/dev/null 2>&1

# FAT16: /LOOP.TXT's second cluster points back at its first
rm -f f.vol; mkfs.fat -C -F 16 -s 1 -n FXDAMAGE -i 0c0e00fa f.vol 8192 >/dev/null
head -c 6000 /dev/zero | tr '\0' 'l' > loop.txt
mcopy -i f.vol src/keep.txt loop.txt ::/
python3 - <<'PY'
import struct
b = bytearray(open('f.vol','rb').read())
bps, spc, rsv, nfat, rootents = struct.unpack_from('<HBHBH', b, 11)
fatsz = struct.unpack_from('<H', b, 22)[0]
root = (rsv + nfat*fatsz) * bps
for i in range(rootents):
    e = root + 32*i
    if b[e:e+11] == b'LOOP    TXT':
        first = struct.unpack_from('<H', b, e+26)[0]
        for f in range(nfat):
            struct.pack_into('<H', b, (rsv + f*fatsz)*bps + 2*(first+1), first)
open('f.vol','wb').write(b)
PY
rm -f "$out/cluster-chain-loops.vfat-ptcl-img"
partclone.fat -q -c -s f.vol -O "$out/cluster-chain-loops.vfat-ptcl-img" >/dev/null 2>&1
ls -l "$out"
