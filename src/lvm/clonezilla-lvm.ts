// Clonezilla's LVM files (clonezilla scripts/sbin/ocs-functions save_logv/restore_logv): lvm_vg_dev.list, lvm_logv.list, lvm_<VG>.conf.
import { ImageError } from "../errors.ts";
import { isUuid } from "./label.ts";
import { readVolumeGroup, type LogicalVolume, type PhysicalVolume, type VolumeGroup } from "./metadata.ts";

export const VG_DEV_LIST = "lvm_vg_dev.list";
export const LOGV_LIST = "lvm_logv.list";
const MAX_LIST = 1 << 20;
const MAX_CONF = 4 << 20;
const VG_NAME = /^[A-Za-z0-9_.+][A-Za-z0-9_.+-]{0,126}$/;

/** What the folder needs to give: its files' text by name, and their paths for messages. */
export interface LvmFiles {
  has(name: string): boolean;
  text(name: string, max: number): string | undefined;
  path(name: string): string;
}

export interface SavedPv {
  /** the PV's device file name ("sda2", "nvme0n1p3", "cciss-c0d0p2") */
  partition: string;
  uuid: string;
  /** its section of the VG metadata */
  pv: PhysicalVolume;
}

export interface SavedLv {
  lv: LogicalVolume;
  /** "/dev/vg0/root" */
  device: string;
  /** Clonezilla's name for its image files and swap info: "vg0-root" */
  imageName: string;
  /** `file -Ls` of it when saved (lvm_logv.list); "" when the list lacks it */
  fileDescription: string;
  isSwap: boolean;
}

export interface SavedVg {
  vg: VolumeGroup;
  conf: string;
  pvs: SavedPv[];
  lvs: SavedLv[];
}

export interface SavedLvm {
  vgs: SavedVg[];
  /** every LVM file read */
  files: string[];
  /** what is missing or disagrees, one line each */
  problems: string[];
}

/** ocs to_ocs_dev_img_name: "/dev/vg0/root" → "vg0-root" */
export function lvImageName(vg: string, lv: string): string {
  return `${vg}-${lv}`;
}

/** undefined when the folder has no lvm_vg_dev.list (no LVM saved). `deviceFileName` maps /dev/sda2 → sda2 as the folder's other files do. */
export function readSavedLvm(files: LvmFiles, deviceFileName: (dev: string) => string): SavedLvm | undefined {
  if (!files.has(VG_DEV_LIST)) return undefined;
  const problems: string[] = [];
  const read = [VG_DEV_LIST];
  const devList = files.text(VG_DEV_LIST, MAX_LIST)!;
  const byVg = new Map<string, { partition: string; uuid: string }[]>();
  for (const [i, line] of devList.split("\n").entries()) {
    if (line.trim() === "") continue;
    const [vg, dev, uuid, ...rest] = line.trim().split(/\s+/);
    if (!vg || !dev || !uuid || rest.length || !dev.startsWith("/dev/") || !isUuid(uuid)) {
      throw new ImageError({ file: files.path(VG_DEV_LIST) }, `line ${i + 1} is not "VG /dev/PV PV-UUID"`, JSON.stringify(line.slice(0, 80)));
    }
    if (vg === "/NOT_FOUND") {
      problems.push(`${dev} is an LVM PV without a volume group (${VG_DEV_LIST}): restored as a bare PV is not attempted`);
      continue;
    }
    if (!VG_NAME.test(vg)) throw new ImageError({ file: files.path(VG_DEV_LIST) }, `line ${i + 1}: not a VG name`, JSON.stringify(vg.slice(0, 40)));
    const list = byVg.get(vg) ?? [];
    list.push({ partition: deviceFileName(dev), uuid });
    byVg.set(vg, list);
  }
  const logv = files.has(LOGV_LIST) ? files.text(LOGV_LIST, MAX_LIST)! : "";
  if (files.has(LOGV_LIST)) read.push(LOGV_LIST);
  else problems.push(`no ${LOGV_LIST}: which LVs were saved is taken from the image file names`);
  const descriptions = new Map<string, string>();
  for (const line of logv.split("\n")) {
    const m = /^\/dev\/([^/\s]+)\/(\S+)\s*(.*)$/.exec(line.trim());
    if (m) descriptions.set(`${m[1]}/${m[2]}`, m[3]!);
  }
  const vgs: SavedVg[] = [];
  for (const [name, pvList] of byVg) {
    const conf = `lvm_${name}.conf`;
    if (!files.has(conf)) {
      problems.push(`${conf} is missing: the PVs of ${name} (${pvList.map((p) => p.partition).join(", ")}) cannot be rebuilt`);
      continue;
    }
    read.push(conf);
    const vg = readVolumeGroup(files.text(conf, MAX_CONF)!, { file: files.path(conf), offset: 0 });
    if (vg.name !== name) throw new ImageError({ file: files.path(conf) }, `holds VG ${vg.name}, ${VG_DEV_LIST} says ${name}`);
    const pvs: SavedPv[] = [];
    for (const p of pvList) {
      const pv = vg.pvs.find((x) => x.id === p.uuid);
      if (!pv) throw new ImageError({ file: files.path(VG_DEV_LIST) }, `PV ${p.uuid} of ${p.partition} is not in ${conf}`);
      pvs.push({ ...p, pv });
    }
    for (const pv of vg.pvs) if (!pvs.some((p) => p.pv === pv)) problems.push(`${name}: PV ${pv.key} (${pv.id}) is in ${conf} but not in ${VG_DEV_LIST}: its extents cannot be placed`);
    const lvs: SavedLv[] = vg.lvs.map((lv) => {
      const fileDescription = descriptions.get(`${name}/${lv.name}`) ?? "";
      return { lv, device: `/dev/${name}/${lv.name}`, imageName: lvImageName(name, lv.name), fileDescription, isSwap: /swap/i.test(fileDescription) };
    });
    for (const lv of lvs) if (lv.lv.layout !== "linear" && lv.lv.layout !== "striped") problems.push(`${name}/${lv.lv.name} is a ${lv.lv.layout} LV: its extents are not plain data and are written as holes`);
    vgs.push({ vg, conf: files.path(conf), pvs, lvs });
  }
  return { vgs, files: read, problems };
}
