# teltonika-ingest container image.
#
#   docker build --build-arg REVISION="$(git rev-parse --short=12 HEAD)" -t teltonika-ingest:0.4.0 .
#   docker run --rm --stop-timeout 45 -p 5027:5027 -p 9090:9090 -e REDIS_URL=redis://redis:6379 teltonika-ingest:0.4.0
#
# --stop-timeout 45: docker stop waits 10 s by default before SIGKILL, less than the 30 s drain
# (SHUTDOWN_TIMEOUT_MS); 45 s lets the server answer what is in flight and exit by itself.
#
# Base images are fully qualified (no registry or namespace left to the daemon's configuration) and meant
# to be pinned by digest: scripts/pin-base-images.sh writes the digest Docker Hub serves for each tag
# (checked against the manifest's own sha256) into the FROM lines. `make check-deploy` shows whether they
# are pinned; REQUIRE_DIGEST_PINS=1 makes an unpinned FROM fail it (release pipelines).
#
# Stage 1 builds the release binary with scripts/release.sh, the same script `make release` runs, so a CI
# image build proves the release steps. Stage 2 is a slim Debian with only the shared libraries the
# binary needs: the Swift standard library and Foundation are linked statically (--static-swift-stdlib);
# what stays dynamic is libc, libm, libstdc++ and libgcc_s (all in bookworm-slim) and hiredis.

FROM docker.io/library/swift:6.3.1-bookworm AS builder

# Debian stable only ships security and bug fixes within a release, and the base image is pinned.
# Pinning apt versions would break the build whenever Debian replaces the pinned version in the archive.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libhiredis-dev libssl-dev \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY . .

ARG REVISION=unknown
RUN REVISION="${REVISION}" scripts/release.sh \
    && install -D -m 0755 .build/release/teltonika-ingest /out/teltonika-ingest


FROM docker.io/library/debian:bookworm-slim

ARG REVISION=unknown
LABEL org.opencontainers.image.title="teltonika-ingest" \
      org.opencontainers.image.description="Ingestion server for Teltonika GPS trackers (TCP 5027) publishing to Redis Streams" \
      org.opencontainers.image.source="https://github.com/teltonika-ingest/teltonika-ingest" \
      org.opencontainers.image.documentation="https://github.com/teltonika-ingest/teltonika-ingest/blob/main/OPERATIONS.md" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.base.name="docker.io/library/debian:bookworm-slim"

# libhiredis0.14 and libssl3 (rediss://): the shared libraries the binary needs beyond bookworm-slim.
# ca-certificates: the system trust store, the default for rediss:// (REDIS_TLS_CA_FILE unset).
# tini: PID 1. The kernel delivers no default-action signals to a PID 1 that has no handler and nobody
# reaps orphans (e.g. the crash backtracer); tini forwards SIGTERM/SIGINT/SIGHUP to the server (which
# drains and exits itself) and exits with the server's exit status.
# The user gets a fixed uid/gid 10001 so Kubernetes' runAsUser and file ownership agree.
# Versions are not pinned for the reason given in the builder stage.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libhiredis0.14 libssl3 ca-certificates tini \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 teltonika \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin teltonika

COPY --from=builder /out/teltonika-ingest /usr/local/bin/teltonika-ingest
# With the static stdlib the Swift crash backtracer only runs when this helper ships and
# SWIFT_BACKTRACE names it; a crash then prints a symbolicated backtrace to the log before exiting.
COPY --from=builder /usr/libexec/swift/linux/swift-backtrace-static /usr/local/libexec/swift-backtrace-static

ENV SWIFT_BACKTRACE=enable=yes,interactive=no,swift-backtrace=/usr/local/libexec/swift-backtrace-static \
    TELTONIKA_PORT=5027 \
    METRICS_HOST=0.0.0.0 \
    METRICS_PORT=9090 \
    LOG_FORMAT=json

USER 10001:10001
EXPOSE 5027/tcp 9090/tcp
STOPSIGNAL SIGTERM

# Liveness (/healthz: the event loops answer), not readiness: a container whose Redis is down is alive and
# not ready, and must not be reported unhealthy (an orchestrator acting on health would restart it, which
# does not help; OPERATIONS.md, "Long Redis outage policy"). Without adding a package: the image has no
# curl or wget, and curl would pull in libcurl4 with OpenSSL, Kerberos, LDAP and SSH libraries (~10 MB)
# for one GET. bash (already in the base image) opens the TCP connection through /dev/tcp, sends the
# request and checks the status line; `timeout` (coreutils) bounds a server that accepts but never
# answers. Exec form, because /bin/sh is dash, which has no /dev/tcp.
HEALTHCHECK --interval=10s --timeout=5s --start-period=15s --retries=3 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/${METRICS_PORT:-9090} && printf 'GET /healthz HTTP/1.1\\r\\nHost: 127.0.0.1\\r\\nConnection: close\\r\\n\\r\\n' >&3 && timeout 3 head -n 1 <&3 | grep -q '^HTTP/1\\.[01] 200 '"]

ENTRYPOINT ["/usr/bin/tini", "--", "/usr/local/bin/teltonika-ingest"]
CMD ["serve"]
