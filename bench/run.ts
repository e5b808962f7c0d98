// npm run bench: every benchmark, each comparing imgtool with the peer tool and the machine's floor
// in the same run and printing its table.
const scripts = [
  "restore.ts",
  "btrfs.ts",
  "btrfs-receive.ts",
  "pipe.ts",
  "seek-index.ts",
  "seek-codecs.ts",
  "disk.ts",
  "fit.ts",
  "fs.ts",
  "fs-exfat.ts",
  "fs-xfs.ts",
  "fs-btrfs.ts",
  "serve.ts",
  "parallel.ts",
  "memory.ts",
  "lvm.ts",
];
for (const script of scripts) {
  console.log(`\n## bench/${script}\n`);
  const r = Bun.spawnSync([process.execPath, `${import.meta.dir}/${script}`], { stdout: "inherit", stderr: "inherit" });
  if (r.exitCode !== 0) process.exit(r.exitCode ?? 1);
}
