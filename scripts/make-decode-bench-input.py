#!/usr/bin/env python3
"""Writes the large hex capture that `decode` and `replay` are measured on (docs/PERFORMANCE.md).

    scripts/make-decode-bench-input.py OUT [--packets 30000] [--seed 19]

Deterministic (a seeded PRNG, no network): the same arguments give the same bytes. The file has the
shape `teltonika-ingest decode` reads: one hex frame per line, `#` comment lines, blank lines, an IMEI
login line at the start of each simulated device's session, now and then a keep-alive `FF`, a trailing
`# comment` after a frame, a line in upper case or ending in CRLF. Every frame is a valid Codec 8 or
Codec 8 Extended AVL packet (two to one) of 4 to 14 records with 10 to 20 IO elements each (1, 2, 4
and 8 byte values; IDs above 255 and a variable-length element in some 8E records), so that decode
exits 0. With the defaults: about 50 MB, 30,000 packets, about 270,000 records.

The last line of standard output is `records=N packets=N lines=N bytes=N`.
"""

import argparse
import random
import struct
import sys


def crc16_ibm(data: bytes) -> int:
    crc = 0
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


def io_section(rng: random.Random, extended: bool) -> bytes:
    """The IO part of one record: event ID, total count, N1, N2, N4, N8 (and NX for 8E) groups."""
    count = rng.randint(10, 20)
    widths = [rng.choice((1, 1, 1, 2, 2, 4, 8)) for _ in range(count)]
    id_limit = 1500 if extended else 255
    ids = rng.sample(range(1, id_limit), count)
    groups = {1: [], 2: [], 4: [], 8: []}
    for io_id, width in zip(ids, widths):
        groups[width].append((io_id, rng.getrandbits(8 * width)))
    variable = []
    if extended and rng.random() < 0.2:
        variable.append((rng.randint(256, 1500), bytes(rng.getrandbits(8) for _ in range(rng.randint(20, 60)))))
    total = count + len(variable)
    id_fmt, n_fmt = (">H", ">H") if extended else (">B", ">B")
    out = struct.pack(id_fmt, rng.choice(ids)) + struct.pack(n_fmt, total)
    for width in (1, 2, 4, 8):
        out += struct.pack(n_fmt, len(groups[width]))
        for io_id, value in groups[width]:
            out += struct.pack(id_fmt, io_id) + value.to_bytes(width, "big")
    if extended:
        out += struct.pack(">H", len(variable))
        for io_id, value in variable:
            out += struct.pack(">HH", io_id, len(value)) + value
    return out


def avl_packet(rng: random.Random, timestamp_ms: int, records: int, extended: bool) -> bytes:
    data = bytes([0x8E if extended else 0x08, records])
    for i in range(records):
        data += struct.pack(">QB", timestamp_ms + i * 1000, rng.choice((0, 0, 0, 1, 2)))
        data += struct.pack(
            ">iihHBH",
            rng.randint(-1_800_000_000, 1_800_000_000),  # longitude, 1e-7 degrees
            rng.randint(-900_000_000, 900_000_000),  # latitude
            rng.randint(-50, 3000),  # altitude, m
            rng.randint(0, 359),  # angle
            rng.randint(0, 20),  # satellites
            rng.randint(0, 130),  # speed, km/h
        )
        data += io_section(rng, extended)
    data += bytes([records])
    return b"\0\0\0\0" + struct.pack(">I", len(data)) + data + struct.pack(">I", crc16_ibm(data))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out")
    parser.add_argument("--packets", type=int, default=30_000)
    parser.add_argument("--seed", type=int, default=19)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    records = packets = lines = size = 0
    timestamp_ms = 1_764_000_000_000
    with open(args.out, "wb") as out:

        def line(text: str, end: str = "\n") -> None:
            nonlocal lines, size
            raw = (text + end).encode("ascii")
            out.write(raw)
            lines += 1
            size += len(raw)

        line(f"# decode benchmark input: {args.packets} AVL packets, seed {args.seed}")
        line("# written by scripts/make-decode-bench-input.py; one hex frame per line")
        device = 0
        while packets < args.packets:
            if packets % 500 == 0:
                device += 1
                line("")
                line(f"# device {device}")
                line("000f" + f"35630704{device:07d}".encode("ascii").hex())
            if rng.random() < 0.01:
                line("FF")
            n = rng.randint(4, 14)
            frame = avl_packet(rng, timestamp_ms, n, extended=rng.random() < 1 / 3).hex()
            timestamp_ms += n * 1000
            roll = rng.random()
            if roll < 0.10:
                frame = frame.upper()
            elif roll < 0.12:
                frame += f"  # packet {packets + 1}"
            line(frame, "\r\n" if rng.random() < 0.01 else "\n")
            records += n
            packets += 1
            if rng.random() < 0.005:
                line("")
    print(f"records={records} packets={packets} lines={lines} bytes={size}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
