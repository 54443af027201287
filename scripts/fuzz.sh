#!/usr/bin/env bash
# Builds the libFuzzer targets and runs them one after the other: the Codec8 framer and decoders, then the
# PROXY v2 header parser (a sixth of the time, at least 1 s: one small pure function).
#
#   scripts/fuzz.sh [SECONDS]     (default 60 in all; `make fuzz` calls this)
#
# Build:     .build-fuzz/fuzz-codec8 (Sources/Codec8/*.swift + Fuzz/*.swift, -O, fuzzer + ASan);
#            .build-fuzz/fuzz-proxy-header (Sources/Ingest/Proxy/ProxyHeader.swift + Fuzz/ProxyHeader/*.swift)
# Seeds:     .build-fuzz/seeds/, regenerated from Tests/Fixtures/frames.tsv and udp-datagrams.tsv on every run;
#            .build-fuzz/seeds-proxy-header/ (the header vectors of Tests/IngestTests/ProxyHeaderTests.swift)
# Corpus:    Fuzz/corpus-run/, Fuzz/corpus-proxy-header/ (kept between runs, git-ignored)
# Crashes:   Fuzz/crashes/ (crash-*, timeout-*, oom-*, leak-*), git-ignored
# Exit:      0 when the run ends without a finding, non-zero on a crash or a build failure.
# Env:       SWIFTC (default: swiftc on PATH, else /opt/swift/usr/bin/swiftc), FUZZ_ARGS (extra libFuzzer flags)
set -euo pipefail

duration="${1:-60}"
case "$duration" in
    '' | *[!0-9]*) echo "usage: $0 [SECONDS]" >&2; exit 2 ;;
esac

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

swiftc="${SWIFTC:-}"
if [[ -z "$swiftc" ]]; then
    if command -v swiftc >/dev/null 2>&1; then swiftc="$(command -v swiftc)"
    elif [[ -x /opt/swift/usr/bin/swiftc ]]; then swiftc=/opt/swift/usr/bin/swiftc
    else echo "fuzz.sh: swiftc not found (set SWIFTC)" >&2; exit 2
    fi
fi

# Swift's own crash backtracer runs inside the ASan process and trips ASan itself; libFuzzer prints the stack.
export SWIFT_BACKTRACE="${SWIFT_BACKTRACE:-enable=no}"

build="$root/.build-fuzz"
bin="$build/fuzz-codec8"
seeds="$build/seeds"
corpus="$root/Fuzz/corpus-run"
crashes="$root/Fuzz/crashes"
mkdir -p "$build" "$corpus" "$crashes"

# lld ships with the toolchain and links the sanitizer runtimes without gold's export warnings.
linker=()
if [[ -x "$(dirname "$swiftc")/ld.lld" ]]; then linker=(-use-ld=lld); fi

proxy_seconds=$(( duration / 6 > 0 ? duration / 6 : 1 ))
codec_seconds=$(( duration - proxy_seconds > 0 ? duration - proxy_seconds : 1 ))
proxy_bin="$build/fuzz-proxy-header"
proxy_seeds="$build/seeds-proxy-header"
proxy_corpus="$root/Fuzz/corpus-proxy-header"
mkdir -p "$proxy_corpus"

echo "fuzz.sh: building $bin" >&2
"$swiftc" -O "${linker[@]}" -sanitize=fuzzer,address -parse-as-library \
    -swift-version 6 -enable-upcoming-feature ExistentialAny \
    -module-name Codec8Fuzz -module-cache-path "$build/module-cache" \
    Sources/Codec8/*.swift Fuzz/*.swift -o "$bin"
echo "fuzz.sh: building $proxy_bin" >&2
"$swiftc" -O "${linker[@]}" -sanitize=fuzzer,address -parse-as-library \
    -swift-version 6 -enable-upcoming-feature ExistentialAny \
    -module-name ProxyHeaderFuzz -module-cache-path "$build/module-cache" \
    Sources/Ingest/Proxy/ProxyHeader.swift Fuzz/ProxyHeader/*.swift -o "$proxy_bin"

# The header vectors of the unit tests: IPv4, IPv6, LOCAL, IPv4 with TLVs, and one followed by a login.
rm -rf "$proxy_seeds"
mkdir -p "$proxy_seeds"
python3 - "$proxy_seeds" <<'PY'
import os, sys
sig = bytes([0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A])
v4 = bytes([127, 0, 0, 2, 127, 0, 0, 1, 0xD4, 0x31, 0x13, 0xA3])
v6 = bytes([0x20, 0x01, 0x0D, 0xB8] + [0] * 11 + [1] + [0] * 15 + [1, 0x01, 0xBB, 0x13, 0xA3])
tlvs = bytes([0x02, 0x00, 0x0B]) + b"example.com" + bytes([0x04, 0x00, 0x03, 0, 0, 0])
seeds = {
    "ipv4": sig + bytes([0x21, 0x11, 0x00, 0x0C]) + v4,
    "ipv6": sig + bytes([0x21, 0x21, 0x00, 0x24]) + v6,
    "local": sig + bytes([0x20, 0x00, 0x00, 0x00]),
    "ipv4-tlvs": sig + bytes([0x21, 0x11, 0x00, 0x20]) + v4 + tlvs,
    "ipv4-login": sig + bytes([0x21, 0x11, 0x00, 0x0C]) + v4 + b"\x00\x0f356307042441013",
}
for name, data in seeds.items():
    with open(os.path.join(sys.argv[1], name), "wb") as f:
        f.write(data)
PY

echo "fuzz.sh: seeding $seeds from Tests/Fixtures/frames.tsv" >&2
rm -rf "$seeds"
mkdir -p "$seeds"
python3 - "$root/Tests/Fixtures/frames.tsv" "$seeds" "$root/Tests/Fixtures/udp-datagrams.tsv" <<'PY'
import binascii, os, sys

out = sys.argv[2]
rows = []
for tsv in (sys.argv[1], sys.argv[3]):
  with open(tsv, encoding="utf-8") as f:
    header = f.readline().rstrip("\n").split("\t")
    col = {name: i for i, name in enumerate(header)}
    for line in f:
        parts = line.rstrip("\n").split("\t")
        if len(parts) <= col["hex"] or not parts[col["hex"]].strip():
            continue
        try:
            data = binascii.unhexlify("".join(parts[col["hex"]].split()))
        except (binascii.Error, ValueError):
            continue
        rows.append((parts[col["id"]], parts[col["expect"]], data))

def write(name, data):
    with open(os.path.join(out, name), "wb") as f:
        f.write(data)

for ident, _, data in rows:
    write("frame-" + ident, data)
write("keepalive", b"\xff")

logins = [d for _, e, d in rows if e == "imei"]
avl = [d for _, e, d in rows if e.startswith("avl:")]
msgs = [d for _, e, d in rows if e.startswith("message:")]
bad = [d for _, e, d in rows if e.startswith("error:")]
login = logins[0] if logins else b"\x00\x0f" + b"356307042441013"
ka = b"\xff"

streams = {
    # login, then a few packets with keep-alives between them
    "stream-login-avl": login + avl[0] + ka + b"".join(avl[1:3]) + ka + ka,
    # login, every small AVL packet and message, keep-alive between each
    "stream-login-mixed": login + b"".join(d + ka for d in (avl + msgs) if len(d) <= 300),
    # packets only (already logged in), ends with a partial frame
    "stream-packets": ka + b"".join(avl[:4]) + (avl[4][: len(avl[4]) // 2] if len(avl) > 4 else b""),
    # login, one packet, then a bad frame (the server closes there)
    "stream-login-bad": login + (avl[0] if avl else b"") + (bad[0] if bad else b"\x00\x00\x00\x01"),
    # 16-digit login followed by messages
    "stream-login16-msgs": b"\x00\x10" + b"3563070424410131" + b"".join(msgs[:3]),
}
for name, data in streams.items():
    write(name, data)
print(f"fuzz.sh: {len(rows)} fixture frames + {len(streams) + 1} streams/keep-alive seeded", file=sys.stderr)
PY

before="$(ls -1 "$crashes" | wc -l)"
echo "fuzz.sh: running fuzz-codec8 for ${codec_seconds}s (artifacts in Fuzz/crashes/)" >&2
status=0
# shellcheck disable=SC2086
"$bin" -max_total_time="$codec_seconds" -rss_limit_mb=2048 -timeout=5 -max_len=8192 \
    -dict="$root/Fuzz/codec8.dict" -artifact_prefix="$crashes/" -print_final_stats=1 \
    ${FUZZ_ARGS:-} "$corpus" "$seeds" || status=$?
if [[ $status -eq 0 ]]; then
    echo "fuzz.sh: running fuzz-proxy-header for ${proxy_seconds}s" >&2
    # shellcheck disable=SC2086
    "$proxy_bin" -max_total_time="$proxy_seconds" -rss_limit_mb=2048 -timeout=5 -max_len=2048 \
        -dict="$root/Fuzz/ProxyHeader/proxy-header.dict" -artifact_prefix="$crashes/proxy-header-" -print_final_stats=1 \
        ${FUZZ_ARGS:-} "$proxy_corpus" "$proxy_seeds" || status=$?
fi
after="$(ls -1 "$crashes" | wc -l)"

if [[ $status -ne 0 || $after -ne $before ]]; then
    echo "fuzz.sh: FAILED (libFuzzer exit $status); artifacts:" >&2
    ls -1t "$crashes" | head -n 10 >&2
    for f in $(ls -1t "$crashes" | head -n 3); do
        echo "  $f: $(python3 -c 'import sys; print(open(sys.argv[1], "rb").read().hex())' "$crashes/$f" | cut -c1-400)" >&2
    done
    echo "reproduce: SWIFT_BACKTRACE=enable=no $bin Fuzz/crashes/<file> ($proxy_bin for proxy-header-*)" >&2
    exit "$(( status == 0 ? 1 : status ))"
fi
echo "fuzz.sh: no crash in ${duration}s" >&2
