#!/usr/bin/env bash
# Release build of the server binary: `make release` and the Dockerfile both run this, so the image is
# built exactly as a developer builds a release.
#
#   scripts/release.sh            build, then print the binary's path (last line of output); the crash
#                                 backtracer swift-backtrace-static is copied beside the binary
#   scripts/release.sh --print    print the build command only (also: DRY_RUN=1)
#
# Static Swift stdlib (the binary needs only libc, libstdc++, libgcc_s and libhiredis at run time).
# The revision is compiled in as a C string literal (Sources/CBuildInfo) and reported by
# teltonika_build_info{revision}: $REVISION when set (the Dockerfile passes its build argument), else
# `git rev-parse --short=12 HEAD` in a git checkout, else "unknown".
# Env: SWIFT (default swift), REVISION, DRY_RUN.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

dry_run="${DRY_RUN:-0}"
case "${1:-}" in
    '') ;;
    --print | --dry-run) dry_run=1 ;;
    *) echo "usage: $0 [--print]" >&2; exit 2 ;;
esac

revision="${REVISION:-}"
if [[ -z "$revision" ]]; then
    revision="$(git rev-parse --short=12 HEAD 2>/dev/null || true)"
    revision="${revision:-unknown}"
fi
# It becomes a C string literal: refuse anything that would need escaping there.
if [[ ! "$revision" =~ ^[A-Za-z0-9._+-]{1,64}$ ]]; then
    echo "release.sh: REVISION must be 1-64 characters of [A-Za-z0-9._+-], got: $revision" >&2
    exit 2
fi

swift="${SWIFT:-swift}"
flags=(-c release --product teltonika-ingest --static-swift-stdlib)
# Package.swift reads TELTONIKA_REVISION and defines it for CBuildInfo alone (a new revision recompiles one C file).
cmd=(env "TELTONIKA_REVISION=$revision" "$swift" build "${flags[@]}")

if [[ "$dry_run" == 1 ]]; then
    printf '%q ' "${cmd[@]}"
    echo
    exit 0
fi

echo "release.sh: revision $revision" >&2
"${cmd[@]}"
bin="$("$swift" build "${flags[@]}" --show-bin-path)"
# The crash backtracer for static-stdlib binaries, beside the binary: deploy/systemd installs it to
# /usr/local/libexec and names it in SWIFT_BACKTRACE (the Dockerfile does the same in the image).
toolchain="$(dirname "$(dirname "$(readlink -f "$(command -v "$swift")")")")"
helper="$toolchain/libexec/swift/linux/swift-backtrace-static"
if [[ -x "$helper" ]]; then
    install -m 0755 "$helper" "$bin/swift-backtrace-static"
else
    echo "release.sh: no $helper in the toolchain: crashes will print no backtrace" >&2
fi
echo "$bin/teltonika-ingest"
