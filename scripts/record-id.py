#!/usr/bin/env python3
"""Prints the record_id of every record of a Teltonika AVL packet, computed here without the server's code.

    scripts/record-id.py IMEI FRAME_HEX          # one line per record: index, record_id, wire bytes (hex)
    scripts/record-id.py --xxh64 HEX             # XXH64 (seed 0) of the bytes, to compare with `xxhsum -H1`

record_id = XXH64(seed 0) of IMEI digits (ASCII) + codec ID byte + the record's wire bytes, written as 16
lowercase hex digits (docs/record-schema.md). XXH64 follows the xxHash specification; this copy was checked
against xxhsum 0.8.1 (`xxhsum -H1`) on lengths 0 to 1000. The record walk follows PROTOCOL.md section 3.
Only the standard library is used, so a consumer can recompute ids anywhere.
"""
import sys

M = (1 << 64) - 1
P1, P2, P3, P4, P5 = (0x9E3779B185EBCA87, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9,
                      0x85EBCA77C2B2AE63, 0x27D4EB2F165667C5)


def rotl(x, r):
    return ((x << r) | (x >> (64 - r))) & M


def rnd(acc, lane):
    return rotl((acc + lane * P2) & M, 31) * P1 & M


def xxh64(data, seed=0):
    n, i = len(data), 0
    if n >= 32:
        v = [(seed + P1 + P2) & M, (seed + P2) & M, seed, (seed - P1) & M]
        while i + 32 <= n:
            v = [rnd(v[k], int.from_bytes(data[i + 8 * k:i + 8 * k + 8], "little")) for k in range(4)]
            i += 32
        h = (rotl(v[0], 1) + rotl(v[1], 7) + rotl(v[2], 12) + rotl(v[3], 18)) & M
        for lane in v:
            h = ((h ^ rnd(0, lane)) * P1 + P4) & M
    else:
        h = (seed + P5) & M
    h = (h + n) & M
    while i + 8 <= n:
        h = (rotl(h ^ rnd(0, int.from_bytes(data[i:i + 8], "little")), 27) * P1 + P4) & M
        i += 8
    if i + 4 <= n:
        h = (rotl(h ^ (int.from_bytes(data[i:i + 4], "little") * P1 & M), 23) * P2 + P3) & M
        i += 4
    while i < n:
        h = rotl(h ^ (data[i] * P5 & M), 11) * P1 & M
        i += 1
    h ^= h >> 33
    h = h * P2 & M
    h ^= h >> 29
    h = h * P3 & M
    return h ^ (h >> 32)


def records(frame):
    """Yields (codec byte, record bytes) of an AVL packet frame (preamble, length, data, CRC)."""
    codec, count = frame[8], frame[9]
    idw, cw = (1, 1) if codec == 0x08 else (2, 2) if codec == 0x8E else (2, 1)  # 0x10: Codec 16
    def num(o, w):
        return int.from_bytes(frame[o:o + w], "big")
    o = 10
    for _ in range(count):
        start = o
        o += 24 + idw + (1 if codec == 0x10 else 0) + cw  # timestamp ... event IO ID, generation type, N total
        for width in (1, 2, 4, 8):
            o += cw + num(o, cw) * (idw + width)
        if codec == 0x8E:
            nx, o = num(o, 2), o + 2
            for _ in range(nx):
                o += 4 + num(o + 2, 2)
        yield codec, frame[start:o]


def main(argv):
    if len(argv) == 3 and argv[1] == "--xxh64":
        print(f"{xxh64(bytes.fromhex(argv[2])):016x}")
        return 0
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    imei, frame = argv[1].encode("ascii"), bytes.fromhex(argv[2])
    for index, (codec, record) in enumerate(records(frame)):
        print(index, f"{xxh64(imei + bytes([codec]) + record):016x}", record.hex())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
