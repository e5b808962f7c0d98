#!/bin/bash
# Makes the damaged XFS file systems in test/failure/fs/ (partclone images), each named by the problem
# `imgtool extract` must report while still extracting the rest. Needs root, xfsprogs, partclone.
# Run from the repository root: bash test/failure/fs/make-xfs.sh
set -euo pipefail
out=$(pwd)/test/failure/fs
source "$(dirname "$0")/../../../fixtures/xfs-scratch.sh"
vol=$work/v.vol

base() {  # a small v5 file system: keep.txt in the root, d0..d3 spread over the AGs, a block directory, a btree file
  rm -f "$vol"; truncate -s 64M "$vol"
  mkfs.xfs -q -f -m crc=1 -d agcount=4 "$vol"
  loop=$(losetup -f --show "$vol"); mount "$loop" "$mnt"
  printf 'kept\n' > "$mnt/keep.txt"
  for i in 0 1 2 3; do mkdir "$mnt/d$i"; printf 'in d%s\n' $i > "$mnt/d$i/note.txt"; done
  mkdir "$mnt/blockdir"; for i in $(seq 1 40); do : > "$mnt/blockdir/entry-$i"; done
  head -c 20000 /dev/zero | tr '\0' 'z' > "$mnt/big.txt"
  head -c $((1200 * 4096)) /dev/zero | tr '\0' 'f' > "$mnt/fragmented.bin"
  for i in $(seq 1 2 1199); do fallocate -p -o $((i * 4096)) -l 4096 "$mnt/fragmented.bin"; done
  "${@}"
  umount "$mnt"; losetup -d "$loop"; loop=
}
ino() { xfs_db -r -c "path $1" -c 'p v3.inumber' "$vol" 2>/dev/null | sed -n 's/.*= //p' | head -1; }
sbfield() { xfs_db -r -c 'sb 0' -c "p $1" "$vol" | sed 's/.*= //'; }
save() {
  rm -f "$out/$1.xfs-ptcl-img.zst"
  partclone.xfs -q -c -s "$vol" -O "$work/$1.xfs-ptcl-img" >/dev/null 2>&1
  zstd -q -19 --rm "$work/$1.xfs-ptcl-img" -o "$out/$1.xfs-ptcl-img.zst"
}
agblocks() { sbfield agblocks; }

# the AGI of the AG holding one of d1..d3 gets another magic (xfs_db recomputes its crc)
base true
for d in d1 d2 d3; do
  agno=$(( $(ino /$d) >> ($(sbfield agblklog) + $(sbfield inopblog)) ))
  [ "$agno" -gt 0 ] && break
done
echo "bad AGI magic in AG $agno (/$d)"
xfs_db -x -c "agi $agno" -c 'write -d magicnum 0x58414758' "$vol" >/dev/null
save "bad-AGI-magic"
mv "$out/bad-AGI-magic.xfs-ptcl-img.zst" "$out/bad-AGI-magic.$d.xfs-ptcl-img.zst"

# one byte of a block directory's entries changed: its crc fails
base true
blk=$(xfs_db -r -c "path /blockdir" -c 'bmap' "$vol" | sed -n 's/.*startblock \([0-9]*\) (\([0-9]*\)\/\([0-9]*\)).*/\2 \3/p' | head -1)
set -- $blk
off=$(( ($1 * $(agblocks) + $2) * 4096 + 64 + 9 ))
printf 'X' | dd of="$vol" bs=1 seek=$off conv=notrunc status=none
save "directory-block-crc-mismatch"

# big.txt's extent moved past the end of the volume
base true
xfs_db -x -c "path /big.txt" -c 'write u3.bmx[0].startblock 9000000' "$vol" >/dev/null
save "extent-past-the-end-of-the-volume"

# fragmented.bin's bmap btree root points twice at the same leaf
base true
p1=$(xfs_db -r -c "path /fragmented.bin" -c 'p u3.bmbt.ptrs[1]' "$vol" | sed 's/.*= //')
xfs_db -x -c "path /fragmented.bin" -c "write u3.bmbt.ptrs[2] $p1" "$vol" >/dev/null
save "bmap-btree-loop"

# a log with changes in it: everything written back (a freeze does that), then one more file, and
# the file system shut down while mounted
base sh -c "xfs_freeze -f $mnt; xfs_freeze -u $mnt; printf 'late\n' > $mnt/late.txt; sync; xfs_io -x -c 'shutdown' $mnt"
save "warning-log-not-replayed"
ls -l "$out"/*.xfs-ptcl-img.zst
