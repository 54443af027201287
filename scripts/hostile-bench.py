#!/usr/bin/env python3
"""Measures what hostile clients cost a running server (issue 13's figures; not part of `make test`).

    scripts/hostile-bench.py partial-frames PORT SERVER_PID METRICS_PORT N
        N logged-in connections (900 per source address 127.0.0.x) each send all but 16 bytes of a frame
        declaring the largest data field (MAX_FRAME_BYTES, 16 KiB): prints the server's RSS before and
        after, per connection, teltonika_buffered_bytes and how many connections the budget closed.

    scripts/hostile-bench.py slowloris PORT SECONDS N
        A normal device sends 5-record packets, one at a time, 20 per second, for SECONDS with no other
        client, then again beside N connections that each trickle a packet one byte every 2 s: prints
        the device's ACK latency p50/p99/max in both runs and how many trickling connections were cut.
"""
import socket
import struct
import sys
import threading
import time
import urllib.request


def source(i):
    return (f'127.0.0.{1 + i // 900}', 0)


def login(s, i):
    s.sendall(bytes([0, 15]) + ('35%013d' % i).encode())
    return s.recv(1) == b'\x01'


def rss(pid):
    for line in open(f'/proc/{pid}/status'):
        if line.startswith('VmRSS:'):
            return int(line.split()[1])


def metric(metrics_port, name):
    body = urllib.request.urlopen(f'http://127.0.0.1:{metrics_port}/metrics', timeout=10).read().decode()
    for line in body.splitlines():
        if line.startswith(name + ' '):
            return float(line.split()[-1])
    return None


def crc16(data):
    crc = 0
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


def packet(records, t):
    """A Codec 8 packet of `records` records with one IO element each."""
    body = bytes([0x08, records])
    for r in range(records):
        body += struct.pack('>QB', t + r, 1) + bytes(15) + bytes([1, 1, 1, 1, 1, 0, 0, 0])
    body += bytes([records])
    return bytes(4) + struct.pack('>I', len(body)) + body + struct.pack('>I', crc16(body))


def partial_frames(port, pid, metrics_port, n):
    before = rss(pid)
    socks = []
    logged_in = 0
    frame = bytes(4) + struct.pack('>I', 16384) + bytes(16384 + 4 - 16)
    for i in range(n):
        s = socket.create_connection(('127.0.0.1', port), source_address=source(i))
        s.settimeout(10)
        if login(s, i):
            logged_in += 1
        try:
            s.sendall(frame)
        except OSError:
            pass
        socks.append(s)
    time.sleep(3)
    after = rss(pid)
    closed = metric(metrics_port, 'teltonika_buffer_budget_refusals_total')
    buffered = metric(metrics_port, 'teltonika_buffered_bytes')
    print(f'connections={n} logged_in={logged_in} rss_before_kib={before} rss_after_kib={after} '
          f'rss_growth_mib={(after - before) / 1024:.1f} per_connection_kib={(after - before) / n:.2f} '
          f'buffered_bytes={buffered:.0f} closed_by_budget={closed:.0f}')


def device_latencies(port, seconds):
    s = socket.create_connection(('127.0.0.1', port), source_address=('127.0.0.250', 0))
    s.settimeout(10)
    assert login(s, 999_999)
    latencies = []
    end = time.time() + seconds
    t = 1_700_000_000_000
    while time.time() < end:
        p = packet(5, t)
        t += 5
        start = time.perf_counter()
        s.sendall(p)
        assert s.recv(4) == struct.pack('>I', 5)
        latencies.append((time.perf_counter() - start) * 1000)
        time.sleep(0.05)
    s.close()
    latencies.sort()
    pick = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))]
    return len(latencies), pick(0.5), pick(0.99), latencies[-1]


def slowloris(port, seconds, n):
    base = device_latencies(port, seconds)
    stop = threading.Event()
    cut = [0]

    def trickle():
        socks = []
        for i in range(n):
            s = socket.create_connection(('127.0.0.1', port), source_address=source(i + 900))
            s.settimeout(10)
            login(s, 100_000 + i)
            s.setblocking(False)
            socks.append(s)
        body = packet(1, 1_700_000_000_000)
        offset = 0
        while not stop.is_set() and socks:
            alive = []
            for s in socks:
                try:
                    s.send(body[offset % len(body):offset % len(body) + 1])
                    alive.append(s)
                except OSError:
                    cut[0] += 1
            socks = alive
            offset += 1
            stop.wait(2)

    thread = threading.Thread(target=trickle)
    thread.start()
    time.sleep(2)
    loaded = device_latencies(port, seconds)
    stop.set()
    thread.join()
    print(f'alone: packets={base[0]} ack_ms_p50={base[1]:.2f} p99={base[2]:.2f} max={base[3]:.2f}')
    print(f'beside {n} slowloris connections: packets={loaded[0]} ack_ms_p50={loaded[1]:.2f} p99={loaded[2]:.2f} '
          f'max={loaded[3]:.2f} trickling_connections_cut={cut[0]}')


if __name__ == '__main__':
    if len(sys.argv) == 6 and sys.argv[1] == 'partial-frames':
        partial_frames(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
    elif len(sys.argv) == 5 and sys.argv[1] == 'slowloris':
        slowloris(int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]))
    else:
        sys.exit(__doc__)
