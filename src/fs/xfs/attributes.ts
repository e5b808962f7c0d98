// XFS extended attributes: short-form (xfs_attr_shortform), leaf (xfs_attr_leafblock, xfs_attr3_leaf_hdr), da node (xfs_da_intnode, xfs_da3_node_hdr), remote values (xfs_attr3_rmt_hdr), remote symlinks (xfs_dsymlink_hdr) and ACLs (xfs_acl), per xfsprogs libxfs/xfs_da_format.h and xfs_format.h.
import { type Superblock, hex, u64, view, xfsCrc } from "./superblock.ts";

const ATTR_LEAF_MAGIC = 0xfbee;
const ATTR3_LEAF_MAGIC = 0x3bee;
const DA_NODE_MAGIC = 0xfebe;
const DA3_NODE_MAGIC = 0x3ebe;
const ATTR3_RMT_MAGIC = 0x5841524d; // "XARM"
const SYMLINK_MAGIC = 0x58534c4d; // "XSLM"
const DA3_CRC_OFFSET = 12;
/** both remote headers: magic, offset, bytes, crc, uuid, owner, blkno, lsn */
export const REMOTE_HEADER = 56;
const REMOTE_CRC_OFFSET = 12;

/** xfs_attr_leaf_entry flags: value in the leaf, and the namespaces (none = user) */
const ATTR = { local: 0x1, root: 0x2, secure: 0x4, parent: 0x8, incomplete: 0x80 } as const;

const encoder = new TextEncoder();
const PREFIX = { user: encoder.encode("user."), trusted: encoder.encode("trusted."), security: encoder.encode("security.") };
const ACL_NAMES = new Map([
  ["SGI_ACL_FILE", encoder.encode("system.posix_acl_access")],
  ["SGI_ACL_DEFAULT", encoder.encode("system.posix_acl_default")],
]);

/** An attribute as stored: its namespace flags, name, and value (inline) or where a remote value is. */
export interface RawAttr {
  flags: number;
  name: Uint8Array;
  value?: Uint8Array;
  remote?: { block: number; length: number };
}

export type Problem = { problem: string; at: number };

/** Short-form attributes in the attribute fork: totsize, count, then (namelen, valuelen, flags, name, value). */
export function shortFormAttrs(fork: Uint8Array): RawAttr[] | Problem {
  if (fork.length < 4) return { problem: "short-form attribute header does not fit the fork", at: 0 };
  const v = view(fork);
  const total = v.getUint16(0);
  const count = fork[2]!;
  if (total < 4 || total > fork.length) return { problem: `short-form attributes of ${total} bytes do not fit the ${fork.length}-byte fork`, at: 0 };
  const out: RawAttr[] = [];
  let pos = 4;
  for (let i = 0; i < count; i++) {
    if (pos + 3 > total) return { problem: `short-form attribute ${i} runs past the attributes' ${total} bytes`, at: pos };
    const namelen = fork[pos]!;
    const valuelen = fork[pos + 1]!;
    const end = pos + 3 + namelen + valuelen;
    if (end > total) return { problem: `short-form attribute ${i} (name ${namelen}, value ${valuelen} bytes) runs past the attributes' ${total} bytes`, at: pos };
    out.push({ flags: fork[pos + 2]!, name: fork.slice(pos + 3, pos + 3 + namelen), value: fork.slice(pos + 3 + namelen, end) });
    pos = end;
  }
  return out;
}

/** Checks the v5 header of a da block (leaf or node): crc, owner, block number. */
function checkDa3(block: Uint8Array, ino: number, daddr: number): Problem | undefined {
  const v = view(block);
  const { stored, computed } = xfsCrc(block, DA3_CRC_OFFSET);
  if (stored !== computed) return { problem: `attribute block of inode ${ino} has crc 0x${hex(stored)}, computed 0x${hex(computed)}`, at: DA3_CRC_OFFSET };
  if (u64(v, 48) !== ino) return { problem: `attribute block belongs to inode ${v.getBigUint64(48)}, not ${ino}`, at: 48 };
  if (u64(v, 16) !== daddr) return { problem: `attribute block of inode ${ino} says it is at sector ${v.getBigUint64(16)}, not ${daddr}`, at: 16 };
  return undefined;
}

/** A block of the attribute fork's da tree: a leaf's attributes, or a node's child blocks (in the fork). */
export function attrBlock(sb: Superblock, block: Uint8Array, ino: number, daddr: number): { attrs: RawAttr[] } | { children: number[]; level: number } | Problem {
  const v = view(block);
  const magic = v.getUint16(8);
  const v3 = sb.version === 5;
  if (magic === (v3 ? DA3_NODE_MAGIC : DA_NODE_MAGIC)) {
    if (v3) {
      const bad = checkDa3(block, ino, daddr);
      if (bad) return bad;
    }
    const header = v3 ? 64 : 16;
    const count = v.getUint16(header - (v3 ? 8 : 4));
    const level = v.getUint16(header - (v3 ? 6 : 2));
    if (count === 0 || header + count * 8 > block.length) return { problem: `attribute node of inode ${ino} claims ${count} entries, more than it holds`, at: header - 4 };
    const children: number[] = [];
    for (let i = 0; i < count; i++) children.push(v.getUint32(header + i * 8 + 4));
    return { children, level };
  }
  if (magic !== (v3 ? ATTR3_LEAF_MAGIC : ATTR_LEAF_MAGIC)) return { problem: `attribute block of inode ${ino} has magic 0x${hex(magic)}`, at: 8 };
  if (v3) {
    const bad = checkDa3(block, ino, daddr);
    if (bad) return bad;
  }
  const header = v3 ? 80 : 32;
  const countAt = v3 ? 56 : 12;
  const count = v.getUint16(countAt);
  if (header + count * 8 > block.length) return { problem: `attribute leaf of inode ${ino} claims ${count} entries, more than it holds`, at: countAt };
  const attrs: RawAttr[] = [];
  for (let i = 0; i < count; i++) {
    const e = header + i * 8;
    const nameIdx = v.getUint16(e + 4);
    const flags = block[e + 6]!;
    if (flags & ATTR.local) {
      if (nameIdx + 3 > block.length) return { problem: `attribute ${i} of inode ${ino}'s leaf lies past its block`, at: e };
      const valuelen = v.getUint16(nameIdx);
      const namelen = block[nameIdx + 2]!;
      const end = nameIdx + 3 + namelen + valuelen;
      if (end > block.length) return { problem: `attribute ${i} of inode ${ino}'s leaf (name ${namelen}, value ${valuelen} bytes) runs past its block`, at: nameIdx };
      attrs.push({ flags, name: block.slice(nameIdx + 3, nameIdx + 3 + namelen), value: block.slice(nameIdx + 3 + namelen, end) });
    } else {
      if (nameIdx + 9 > block.length) return { problem: `attribute ${i} of inode ${ino}'s leaf lies past its block`, at: e };
      const namelen = block[nameIdx + 8]!;
      if (nameIdx + 9 + namelen > block.length) return { problem: `attribute ${i} of inode ${ino}'s leaf (name ${namelen} bytes) runs past its block`, at: nameIdx };
      attrs.push({ flags, name: block.slice(nameIdx + 9, nameIdx + 9 + namelen), remote: { block: v.getUint32(nameIdx), length: v.getUint32(nameIdx + 4) } });
    }
  }
  return { attrs };
}

/**
 * The payload of one block of a remote value or remote symlink: on v5 after a header that is
 * checked (magic, crc, owner, block number, offset and length of the piece).
 */
export function remotePiece(sb: Superblock, block: Uint8Array, kind: "attribute" | "symlink", ino: number, daddr: number, offset: number, want: number): Uint8Array | Problem {
  if (sb.version !== 5) return block.subarray(0, want);
  const v = view(block);
  const magic = kind === "attribute" ? ATTR3_RMT_MAGIC : SYMLINK_MAGIC;
  if (v.getUint32(0) !== magic) return { problem: `remote ${kind} block of inode ${ino} has magic 0x${hex(v.getUint32(0))}`, at: 0 };
  const { stored, computed } = xfsCrc(block, REMOTE_CRC_OFFSET);
  if (stored !== computed) return { problem: `remote ${kind} block of inode ${ino} has crc 0x${hex(stored)}, computed 0x${hex(computed)}`, at: REMOTE_CRC_OFFSET };
  if (u64(v, 32) !== ino) return { problem: `remote ${kind} block belongs to inode ${v.getBigUint64(32)}, not ${ino}`, at: 32 };
  if (u64(v, 40) !== daddr) return { problem: `remote ${kind} block of inode ${ino} says it is at sector ${v.getBigUint64(40)}`, at: 40 };
  if (v.getUint32(4) !== offset || v.getUint32(8) !== want) return { problem: `remote ${kind} block of inode ${ino} holds bytes ${v.getUint32(4)}+${v.getUint32(8)}, expected ${offset}+${want}`, at: 4 };
  return block.subarray(REMOTE_HEADER, REMOTE_HEADER + want);
}

/**
 * The names Linux lists for a stored attribute (namespace prefix added; an ACL both as
 * system.posix_acl_* in the kernel's format and, as for every root-namespace name, as trusted.*),
 * with their values; none for what Linux does not list.
 */
export function linuxXattrs(flags: number, name: Uint8Array, value: Uint8Array): { name: Uint8Array; value: Uint8Array }[] {
  if (flags & (ATTR.incomplete | ATTR.parent)) return [];
  if (flags & ATTR.root) {
    const out = [{ name: concat(PREFIX.trusted, name), value }];
    const acl = ACL_NAMES.get(new TextDecoder().decode(name));
    const converted = acl && aclToXattr(value);
    if (acl && converted) out.unshift({ name: acl, value: converted });
    return out;
  }
  return [{ name: concat(flags & ATTR.secure ? PREFIX.security : PREFIX.user, name), value }];
}

/** xfs_acl (big-endian count, then tag, id, perm) as the kernel's posix_acl xattr (version 2, little-endian tag, perm, id). */
function aclToXattr(disk: Uint8Array): Uint8Array | undefined {
  if (disk.length < 4) return undefined;
  const d = view(disk);
  const count = d.getUint32(0);
  if (4 + count * 12 > disk.length) return undefined;
  const out = new Uint8Array(4 + count * 8);
  const o = view(out);
  o.setUint32(0, 2, true);
  for (let i = 0; i < count; i++) {
    const tag = d.getUint32(4 + i * 12);
    const id = d.getUint32(8 + i * 12);
    const perm = d.getUint16(12 + i * 12);
    o.setUint16(4 + i * 8, tag, true);
    o.setUint16(6 + i * 8, perm, true);
    o.setUint32(8 + i * 8, tag === 0x02 || tag === 0x08 ? id : 0xffffffff, true);
  }
  return out;
}

function concat(a: Uint8Array, b: Uint8Array): Uint8Array {
  const out = new Uint8Array(a.length + b.length);
  out.set(a);
  out.set(b, a.length);
  return out;
}
