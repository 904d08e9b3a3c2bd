#!/usr/bin/env bash
# Builds the Spring Vault app (pom.xml, src/) into $CLIENTS_CACHE/java:
# app.jar and lib/ (its dependencies from Maven Central), run with
# `java -jar app.jar`. Maven builds a copy of the sources in a scratch folder
# of the cache, so nothing built lands in the tree; its repository stays in
# ~/.m2. Does nothing when the build of these exact sources is there.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cache="${CLIENTS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kms-sidecar/clients}"
dest="$cache/java"

key="$(cd "$here" && find pom.xml src -type f | LC_ALL=C sort | xargs sha256sum | sha256sum | cut -d' ' -f1)"
if [[ -f "$dest/app.jar" && "$(cat "$dest/.key" 2>/dev/null)" == "$key" ]]; then
  exit 0
fi

for tool in java mvn; do
  command -v "$tool" >/dev/null || { echo "java client: $tool not found (a JDK 17 and Maven are needed)" >&2; exit 1; }
done
echo "java client: building Spring Vault app into $dest" >&2
mkdir -p "$cache"
work="$(mktemp -d "$cache/.java-build.XXXXXX")"
trap 'rm -rf "$work"' EXIT
cp -R "$here/pom.xml" "$here/src" "$work/"
mvn -q -B -Dstyle.color=never -f "$work/pom.xml" package
mkdir "$work/out"
mv "$work/target/app.jar" "$work/target/lib" "$work/out/"
# The sources it was built from, which the tests compare with the tree's.
mkdir "$work/out/src"
cp "$here/pom.xml" "$here/src/main/java/app/TransitApp.java" "$work/out/src/"
echo "$key" >"$work/out/.key"
rm -rf "$dest"
mv "$work/out" "$dest"
