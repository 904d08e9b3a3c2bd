#!/usr/bin/env bash
# Builds the Go app (main.go, against github.com/hashicorp/vault/api as
# pinned by go.mod and go.sum, from the Go module proxy) into
# $CLIENTS_CACHE/go/transit-app, with a copy of those sources beside it in
# src/ (the test checks it against the tree). Does nothing when that binary
# was built from these very sources, pins and Go version (the hash in
# .built-from).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${CLIENTS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kms-sidecar/clients}/go"
command -v go >/dev/null || { echo "go is missing: Go 1.24 or later builds tests/clients/go" >&2; exit 1; }
hash="$(cd "$here" && { go version; cat go.mod go.sum ./*.go; } | sha256sum | cut -d' ' -f1)"
up_to_date() {
  [ -x "$out/transit-app" ] && [ "$(cat "$out/.built-from" 2>/dev/null)" = "$hash" ] || return 1
  for f in "$here"/go.mod "$here"/go.sum "$here"/*.go; do
    cmp -s "$f" "$out/src/$(basename "$f")" || return 1
  done
}
up_to_date && exit 0
echo "building tests/clients/go (github.com/hashicorp/vault/api) into $out"
mkdir -p "$out"
# -modcacherw: a module cache that `rm -rf` can clear; -mod=readonly: go.sum
# is the pin, never rewritten.
(cd "$here" && GOFLAGS="-modcacherw -buildvcs=false -mod=readonly" \
  go build -trimpath -o "$out/transit-app.new" .)
mv "$out/transit-app.new" "$out/transit-app"
rm -rf "$out/src" && mkdir "$out/src" && cp "$here"/go.mod "$here"/go.sum "$here"/*.go "$out/src/"
echo "$hash" > "$out/.built-from"
