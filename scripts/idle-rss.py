#!/usr/bin/env python3
# Opens N logged-in idle device connections to a running server and reports its RSS growth per connection.
# Usage: scripts/idle-rss.py PORT SERVER_PID N
import socket, sys, time, subprocess, os
port = int(sys.argv[1]); pid = int(sys.argv[2]); n = int(sys.argv[3])
def rss():
    for l in open(f'/proc/{pid}/status'):
        if l.startswith('VmRSS:'): return int(l.split()[1])
base = rss()
socks = []
for i in range(n):
    s = socket.create_connection(('127.0.0.1', port))
    s.sendall(bytes([0, 15]) + ('35%013d' % i).encode())
    socks.append(s)
ok = 0
for s in socks:
    s.settimeout(10)
    if s.recv(1) == b'\x01': ok += 1
time.sleep(2)
after = rss()
print(f'connections={n} logged_in={ok} rss_before_kib={base} rss_after_kib={after} per_connection_kib={(after-base)/n:.2f}')
