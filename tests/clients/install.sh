#!/usr/bin/env bash
# Installs or builds every client app of tests/clients/ into the clients
# cache (see tests/clients/README.md); each <folder>/install.sh does nothing
# when its client is already there.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
export CLIENTS_CACHE="${CLIENTS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kms-sidecar/clients}"
for install in "$here"/*/install.sh; do
  "$install"
done
