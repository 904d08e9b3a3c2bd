#!/usr/bin/env bash
# hvac's app: a virtualenv with the pinned requirements.txt and a copy of
# app.py, in $CLIENTS_CACHE/python. Does nothing when the copy there was made
# from these very files; remakes it when either changed.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
dest="${CLIENTS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kms-sidecar/clients}/python"
key="$(cat "$here/requirements.txt" "$here/app.py" | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$dest/.key" 2>/dev/null)" = "$key" ]; then
  exit 0
fi
echo "installing hvac's app into $dest"
rm -rf "$dest"
python3 -m venv "$dest"
"$dest/bin/python" -m pip install -q --disable-pip-version-check --no-deps -r "$here/requirements.txt"
broken="$("$dest/bin/python" -m pip check)" || { echo "$broken" >&2; exit 1; }
cp "$here/app.py" "$dest/app.py"
echo "$key" > "$dest/.key"
