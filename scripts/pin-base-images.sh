#!/usr/bin/env bash
# Pins the Dockerfile's base images by digest: each `FROM docker.io/library/NAME:TAG[@sha256:...]` line gets
# the digest the registry serves for NAME:TAG now (the multi-platform index, so every architecture stays
# buildable). Run it where Docker Hub is reachable (this project's development machines cannot reach it),
# review the diff, commit it; run it again to move to a newer base image (security updates).
#
#   scripts/pin-base-images.sh            rewrite the Dockerfile's FROM lines
#   scripts/pin-base-images.sh --print    print "image digest" per base image, change nothing
#
# The digest is not taken on the registry's word: the manifest is fetched and its sha256 must equal the
# Docker-Content-Digest header. Needs curl and python3. Exit 1 when a digest cannot be learned or checked.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

print_only=0
case "${1:-}" in
    '') ;;
    --print) print_only=1 ;;
    *) echo "usage: $0 [--print]" >&2; exit 2 ;;
esac

accept="application/vnd.oci.image.index.v1+json,application/vnd.docker.distribution.manifest.list.v2+json"
digest_of() {  # digest_of NAME TAG: the verified digest of docker.io/library/NAME:TAG
    local name="$1" tag="$2" token tmp header body
    token="$(curl -fsS "https://auth.docker.io/token?service=registry.docker.io&scope=repository:library/$name:pull" |
        python3 -c 'import json, sys; print(json.load(sys.stdin)["token"])')"
    tmp="$(mktemp -d)"
    curl -fsS -D "$tmp/headers" -o "$tmp/manifest" -H "Authorization: Bearer $token" -H "Accept: $accept" \
        "https://registry-1.docker.io/v2/library/$name/manifests/$tag"
    header="$(tr -d '\r' <"$tmp/headers" | awk -F': ' 'tolower($1) == "docker-content-digest" { print $2 }')"
    body="sha256:$(sha256sum "$tmp/manifest" | cut -d' ' -f1)"
    rm -rf "$tmp"
    if [[ "$header" != "$body" ]]; then
        echo "pin-base-images: $name:$tag: header digest '$header' != sha256 of the manifest '$body'" >&2
        return 1
    fi
    echo "$body"
}

status=0
while read -r image; do
    ref="${image%@*}"                      # docker.io/library/NAME:TAG
    path="${ref#docker.io/library/}"
    name="${path%%:*}" tag="${path#*:}"
    if [[ "$ref" != docker.io/library/*:* || "$name" == "$path" ]]; then
        echo "pin-base-images: $image: not docker.io/library/NAME:TAG" >&2
        status=1
        continue
    fi
    if ! digest="$(digest_of "$name" "$tag")"; then status=1; continue; fi
    echo "$ref $digest"
    if [[ "$print_only" == 0 ]]; then
        sed -i -E "s#^FROM ${ref//./\\.}(@sha256:[0-9a-f]{64})?( |\$)#FROM $ref@$digest\\2#" Dockerfile
    fi
done < <(awk '/^FROM / { print $2 }' Dockerfile)
exit "$status"
