#!/usr/bin/env python3
"""Builds a VMware SESparse ("space efficient sparse") vmdk image for tests.

No tool on this machine creates SESparse images (qemu-img only reads them),
so tests make their own: a text descriptor NAME.vmdk (createType="seSparse",
one "RW <sectors> SESPARSE" extent line, optional parentFileNameHint) and the
extent NAME-sesparse.vmdk, laid out as SPECS.md's VMDK write-up and qemu-img
7.2 read it:

  sector 0        constant header: 26 little-endian u64 fields then 304
                  bytes of zero padding -- magic 0xcafebabe, version
                  0x200000001, capacity (sectors), grain size (8 sectors),
                  grain table size (64 sectors), flags, 4 reserved, then
                  (offset, size) pairs in sectors: volatile header, journal
                  header, journal, grain directory, grain tables, free
                  bitmap, backmap, grains
  volatile hdr    u64 magic 0xcafecafe, free GT number, next transaction
                  sequence number, replay-journal flag, 480 bytes of zeros
  grain dir       u64 entries, one per 16 MiB (4096 grains): 0 unallocated,
                  0x1000000000000000 | n = grain table n of the tables area
  grain tables    4096 u64 entries each (32 KiB): top nibble 0 unallocated
                  (the parent's data), 1 unmapped and 2 zero (zeros), 3
                  allocated: cluster c of the grains area stored as
                  3 << 60 | (c & 0xfff) << 48 | c >> 12

Usage: mk-sesparse.py DIR NAME SIZE [options]; see --help. It also writes
the content the image should read as (--expect FILE), from the grains it
placed and the parent's raw content (--parent-raw FILE).
"""
import argparse
import os
import struct
import sys

SECTOR = 512
GRAIN = 4096
GT_ENTRIES = 4096
GT_BYTES = GT_ENTRIES * 8
CONST_FIELDS = [
    "magic", "version", "capacity", "grain_size", "grain_table_size", "flags",
    "reserved1", "reserved2", "reserved3", "reserved4",
    "volatile_header_offset", "volatile_header_size",
    "journal_header_offset", "journal_header_size",
    "journal_offset", "journal_size",
    "grain_dir_offset", "grain_dir_size",
    "grain_tables_offset", "grain_tables_size",
    "free_bitmap_offset", "free_bitmap_size",
    "backmap_offset", "backmap_size",
    "grains_offset", "grains_size",
]
VOLATILE_FIELDS = ["magic", "free_gt_number", "next_txn_seq_number", "replay_journal"]
KINDS = {"unalloc": 0, "unmapped": 1, "zero": 2, "data": 3}


def grain_data(index, byte):
    """Distinct content per grain: its index, then a fill byte."""
    return struct.pack("<Q", index) + bytes([byte]) * (GRAIN - 8)


def encode_allocated(cluster):
    return (3 << 60) | ((cluster & 0xFFF) << 48) | (cluster >> 12)


def parse_int(s):
    return int(s, 0)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("dir")
    ap.add_argument("name")
    ap.add_argument("size", type=parse_int, help="virtual size in bytes (multiple of 512)")
    ap.add_argument("--grain", action="append", default=[], metavar="INDEX:KIND[:BYTE]",
                    help="grain INDEX (4 KiB units) is data (filled with BYTE), zero, "
                         "unmapped or unalloc")
    ap.add_argument("--cluster", action="append", default=[], metavar="INDEX:CLUSTER",
                    help="place data grain INDEX at CLUSTER of the grains area")
    ap.add_argument("--parent", help="parentFileNameHint")
    ap.add_argument("--parent-cid", default="ffffffff", help="parentCID (hex)")
    ap.add_argument("--parent-raw", help="the parent's content, for --expect")
    ap.add_argument("--desc-sectors", type=parse_int, help="sectors on the extent line")
    ap.add_argument("--expect", help="write the content the image reads as here")
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                    help="override a constant header field after layout")
    ap.add_argument("--vset", action="append", default=[], metavar="FIELD=VALUE",
                    help="override a volatile header field")
    ap.add_argument("--gd", action="append", default=[], metavar="INDEX=VALUE",
                    help="override a raw grain directory entry")
    ap.add_argument("--gte", action="append", default=[], metavar="GRAIN=VALUE",
                    help="override the raw grain table entry of grain GRAIN")
    ap.add_argument("--const-pad", type=parse_int, help="a byte in the const header padding")
    ap.add_argument("--volatile-pad", type=parse_int, help="a byte in the volatile padding")
    a = ap.parse_args()

    if a.size % SECTOR:
        sys.exit("size must be a multiple of 512")
    capacity = a.size // SECTOR
    n_grains = (a.size + GRAIN - 1) // GRAIN
    n_gd = max(1, (n_grains + GT_ENTRIES - 1) // GT_ENTRIES)

    kinds = {}
    fill = {}
    for g in a.grain:
        parts = g.split(":")
        idx, kind = parse_int(parts[0]), parts[1]
        if kind not in KINDS or idx >= n_grains:
            sys.exit("bad --grain %s" % g)
        kinds[idx] = KINDS[kind]
        fill[idx] = parse_int(parts[2]) if len(parts) > 2 else (0x41 + idx) & 0xFF
    clusters = {}
    for c in a.cluster:
        idx, cl = (parse_int(x) for x in c.split(":"))
        clusters[idx] = cl
    # Data grains go into the grains area in reverse order unless placed.
    data = sorted((i for i, k in kinds.items() if k == 3), reverse=True)
    used = set(clusters.values())
    nxt = 0
    for i in data:
        if i not in clusters:
            while nxt in used:
                nxt += 1
            clusters[i] = nxt
            used.add(nxt)
    # Grain tables: only for directory entries with a grain that is not unalloc,
    # numbered from the last directory entry down.
    tables = sorted({i // GT_ENTRIES for i, k in kinds.items() if k != 0}, reverse=True)
    gt_number = {t: n for n, t in enumerate(tables)}

    gd_sectors = (n_gd * 8 + SECTOR - 1) // SECTOR
    h = {
        "magic": 0xCAFEBABE, "version": 0x200000001, "capacity": capacity,
        "grain_size": 8, "grain_table_size": 64, "flags": 0,
        "reserved1": 0, "reserved2": 0, "reserved3": 0, "reserved4": 0,
        "volatile_header_offset": 1, "volatile_header_size": 1,
        "journal_header_offset": 2, "journal_header_size": 2,
        "journal_offset": 8, "journal_size": 8,
        "grain_dir_offset": 16, "grain_dir_size": gd_sectors,
    }
    h["grain_tables_offset"] = (16 + gd_sectors + 7) // 8 * 8
    h["grain_tables_size"] = max(1, len(tables)) * (GT_BYTES // SECTOR)
    h["free_bitmap_offset"] = h["grain_tables_offset"] + h["grain_tables_size"]
    h["free_bitmap_size"] = 8
    h["backmap_offset"] = h["free_bitmap_offset"] + 8
    h["backmap_size"] = 8
    h["grains_offset"] = h["backmap_offset"] + 8
    h["grains_size"] = (max(used) + 1 if used else 1) * 8
    v = {"magic": 0xCAFECAFE, "free_gt_number": len(tables), "next_txn_seq_number": 1,
         "replay_journal": 0}

    gd = [0] * n_gd
    for t, n in gt_number.items():
        gd[t] = 0x1000000000000000 | n
    gt = bytearray(max(1, len(tables)) * GT_BYTES)
    raw_gte = {}
    for i, k in kinds.items():
        if k == 0:
            continue
        val = encode_allocated(clusters[i]) if k == 3 else k << 60
        raw_gte[i] = val
    for o in a.gte:
        i, val = (parse_int(x) for x in o.split("="))
        raw_gte[i] = val
    for i, val in raw_gte.items():
        t = i // GT_ENTRIES
        if t not in gt_number:
            sys.exit("--gte %d: its grain table is not allocated" % i)
        struct.pack_into("<Q", gt, gt_number[t] * GT_BYTES + (i % GT_ENTRIES) * 8, val)
    for o in a.gd:
        i, val = (parse_int(x) for x in o.split("="))
        gd[i] = val
    for o in a.set:
        f, val = o.split("=")
        if f not in CONST_FIELDS:
            sys.exit("unknown field %s" % f)
        h[f] = parse_int(val)
    for o in a.vset:
        f, val = o.split("=")
        if f not in VOLATILE_FIELDS:
            sys.exit("unknown field %s" % f)
        v[f] = parse_int(val)

    base = os.path.join(a.dir, a.name)
    ext_name = a.name + "-sesparse.vmdk"
    with open(os.path.join(a.dir, ext_name), "wb") as f:
        const = bytearray(struct.pack("<26Q", *(h[k] for k in CONST_FIELDS)) + bytes(304))
        if a.const_pad is not None:
            const[26 * 8 + 100] = a.const_pad
        f.write(const)
        vol = bytearray(struct.pack("<4Q", *(v[k] for k in VOLATILE_FIELDS)) + bytes(480))
        if a.volatile_pad is not None:
            vol[4 * 8 + 7] = a.volatile_pad
        f.seek(SECTOR)
        f.write(vol)
        f.seek(16 * SECTOR)
        f.write(struct.pack("<%dQ" % n_gd, *gd))
        f.seek((16 + gd_sectors + 7) // 8 * 8 * SECTOR)
        f.write(gt)
        grains_at = (16 + gd_sectors + 7) // 8 * 8 + max(1, len(tables)) * 64 + 16
        for i in data:
            f.seek((grains_at + clusters[i] * 8) * SECTOR)
            f.write(grain_data(i, fill[i]))
        f.truncate((grains_at + (max(used) + 1 if used else 1) * 8) * SECTOR)

    sectors = a.desc_sectors if a.desc_sectors is not None else capacity
    lines = [
        "# Disk DescriptorFile",
        "version=1",
        "CID=5eb1a2c3",
        "parentCID=%s" % a.parent_cid,
        'createType="seSparse"',
    ]
    if a.parent:
        lines.append('parentFileNameHint="%s"' % a.parent)
    lines += [
        "",
        "# Extent description",
        'RW %d SESPARSE "%s"' % (sectors, ext_name),
        "",
        "# The Disk Data Base",
        "#DDB",
        "",
        'ddb.virtualHWVersion = "14"',
        'ddb.geometry.cylinders = "%d"' % max(1, capacity // (16 * 63)),
        'ddb.geometry.heads = "16"',
        'ddb.geometry.sectors = "63"',
        'ddb.adapterType = "lsilogic"',
        "",
    ]
    with open(base + ".vmdk", "w") as f:
        f.write("\n".join(lines))

    if a.expect:
        out = bytearray(a.size)
        if a.parent_raw:
            with open(a.parent_raw, "rb") as f:
                p = f.read(a.size)
            out[:len(p)] = p
        for i, k in kinds.items():
            start = i * GRAIN
            end = min(start + GRAIN, a.size)
            if k in (1, 2):
                out[start:end] = bytes(end - start)
            elif k == 3:
                out[start:end] = grain_data(i, fill[i])[:end - start]
        with open(a.expect, "wb") as f:
            f.write(out)


if __name__ == "__main__":
    main()
