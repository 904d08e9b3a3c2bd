#!/usr/bin/env bash
# node-vault's app: app.js with the packages of package-lock.json (`npm ci`),
# in $CLIENTS_CACHE/node. Does nothing when the copy there was made from
# these very files; remakes it when any changed.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
dest="${CLIENTS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kms-sidecar/clients}/node"
key="$(cat "$here/package.json" "$here/package-lock.json" "$here/app.js" | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$dest/.key" 2>/dev/null)" = "$key" ]; then
  exit 0
fi
echo "installing node-vault's app into $dest"
rm -rf "$dest"
mkdir -p "$dest"
cp "$here/package.json" "$here/package-lock.json" "$dest/"
(cd "$dest" && npm ci --ignore-scripts --omit=dev --no-audit --no-fund --loglevel=error)
cp "$here/app.js" "$dest/app.js"
echo "$key" > "$dest/.key"
