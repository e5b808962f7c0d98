#!/bin/bash
# Makes the damaged btrfs images in test/failure/fs/ (partclone.btrfs images), each named by the problem
# imgtool must report, from one small btrfs (4 KiB nodes, so its trees have several levels) damaged by
# damage-btrfs.ts. Needs root, btrfs-progs, partclone.btrfs. Run from the repository root:
#   bash test/failure/fs/make-btrfs.sh
set -euo pipefail
out=$(pwd)/test/failure/fs
work=$(mktemp -d); mkdir "$work/mnt"
trap 'umount "$work/mnt" 2>/dev/null; rm -rf "$work"' EXIT
mnt=$work/mnt
truncate -s 160M "$work/base.vol"
mkfs.btrfs -q -f -n 4096 -m single -d single "$work/base.vol"
mount -o loop,noatime,compress=zstd "$work/base.vol" "$mnt"
mkdir "$mnt/many" "$mnt/docs"
(cd "$mnt/many" && python3 -c "
for i in range(300): open('entry-%03d' % i, 'w').write('x' * 100)")
printf 'kept\n' > "$mnt/keep.txt"
python3 -c "import random,sys; random.seed(1); sys.stdout.buffer.write(random.randbytes(20000))" > "$mnt/random.bin"
python3 -c "import random; random.seed(2); print(' '.join(random.choice(['alpha','beta','gamma']) for _ in range(40000)))" > "$mnt/big.txt"
for i in 1 2 3; do printf 'note %s\n' $i > "$mnt/docs/note$i.txt"; done
umount "$mnt"
image() {  # name, damage
  cp --sparse=always "$work/base.vol" "$work/v.vol"
  npx bun test/failure/fs/damage-btrfs.ts "$work/v.vol" "$2"
  rm -f "$out/$1.btrfs-ptcl-img.zst"
  partclone.btrfs -q -c -s "$work/v.vol" -O "$work/v.btrfs-ptcl-img" >/dev/null 2>&1
  zstd -q -19 "$work/v.btrfs-ptcl-img" -o "$out/$1.btrfs-ptcl-img.zst"
  rm "$work/v.btrfs-ptcl-img"
}
# partclone.btrfs crashes on the first two; the third takes a tree block out of the image, as partclone.btrfs
# before its fix did (0.3.23 here images whole metadata chunks): the good volume is imaged without checksums
# (-a 0) and the image patched
patched() {  # name, damage
  rm -f "$out/$1.btrfs-ptcl-img.zst"
  partclone.btrfs -q -c -a 0 -s "$work/base.vol" -O "$work/p.img" >/dev/null 2>&1
  mv "$work/p.img" "$work/v.btrfs-ptcl-img"
  npx bun test/failure/fs/damage-btrfs.ts "$work/v.btrfs-ptcl-img" "$2"
  zstd -q -19 "$work/v.btrfs-ptcl-img" -o "$out/$1.btrfs-ptcl-img.zst"
  rm "$work/v.btrfs-ptcl-img"
}
patched tree-block-fails-its-checksum bad-checksum
patched loop-in-the-tree loop
image chunk-maps-past-the-end-of-the-volume chunk-past-end
image compressed-extent-does-not-decode compressed-garbage
image data-checksum-mismatch data-checksum
patched tree-block-not-in-the-image drop-block
ls -l "$out"/*.btrfs-ptcl-img.zst
