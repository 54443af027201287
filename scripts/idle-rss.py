#!/usr/bin/env python3
# Opens N logged-in idle device connections to a running server (900 per source address 127.0.0.x) and
# reports its RSS growth per connection;
# with METRICS_PORT, also how long a /metrics scrape takes with those connections open.
# Usage: scripts/idle-rss.py PORT SERVER_PID N [METRICS_PORT]
import resource, socket, sys, time, urllib.request
port = int(sys.argv[1]); pid = int(sys.argv[2]); n = int(sys.argv[3])
# This process holds the N sockets: its soft descriptor limit up to the hard one (a shell's is often 1,024).
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
if soft != resource.RLIM_INFINITY and soft < n + 64:
    want = n + 64 if hard == resource.RLIM_INFINITY else min(n + 64, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    if want < n + 64:
        sys.exit(f'idle-rss: {n} connections need {n + 64} descriptors; the hard limit is {hard}')
metrics_port = int(sys.argv[4]) if len(sys.argv) > 4 else None
def rss():
    for l in open(f'/proc/{pid}/status'):
        if l.startswith('VmRSS:'): return int(l.split()[1])
def scrapes(count=20):
    times = []
    for _ in range(count):
        start = time.perf_counter()
        body = urllib.request.urlopen(f'http://127.0.0.1:{metrics_port}/metrics', timeout=10).read()
        times.append((time.perf_counter() - start) * 1000)
    times.sort()
    return times[len(times) // 2], times[-1], len(body), body
base = rss()
idle = scrapes() if metrics_port else None
socks = []
for i in range(n):
    # From 127.0.0.1, .2, ...: 900 each, below the server's MAX_CONNECTIONS_PER_IP (1,000 by default).
    s = socket.create_connection(('127.0.0.1', port), source_address=(f'127.0.0.{1 + i // 900}', 0))
    s.sendall(bytes([0, 15]) + ('35%013d' % i).encode())
    socks.append(s)
ok = 0
for s in socks:
    s.settimeout(10)
    if s.recv(1) == b'\x01': ok += 1
time.sleep(2)
after = rss()
print(f'connections={n} logged_in={ok} rss_before_kib={base} rss_after_kib={after} per_connection_kib={(after-base)/n:.2f}')
if metrics_port:
    p50, worst, size, body = scrapes()
    active = [l for l in body.decode().splitlines() if l.startswith('teltonika_connections_active ')]
    print(f'scrape_ms_p50_idle={idle[0]:.2f} scrape_ms_p50={p50:.2f} scrape_ms_max={worst:.2f} scrape_bytes={size} {active[0] if active else ""}')
