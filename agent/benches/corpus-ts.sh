#!/usr/bin/env bash
# corpus-ts.sh - the wan benchmark's own series `ts`, next to the shared
# corpus (../shared/corpus/fetch.sh): six releases of the TypeScript npm
# package, unpacked as npm ships them (~120 files, ~22 MB). It reproduces
# what a large JS/TS package does across releases: big bundled files edited
# throughout, files added, and one 8.6 MB file (lib/tsserver.js) shrunk to
# a 26 kB shim in 5.5.
#
# Usage (from the project root): bash agent/benches/corpus-ts.sh [DEST]
#   DEST defaults to target/corpus; the series goes to DEST/ts/v1 .. v6.
# Needs npm and network access to the npm registry.
set -euo pipefail
umask 022
export LC_ALL=C TZ=UTC
VERSIONS=(5.4.5 5.5.2 5.5.3 5.5.4 5.6.2 5.6.3)
DEST=${1:-target/corpus}
DL="$DEST/downloads/npm-ts"
mkdir -p "$DL"
for k in "${!VERSIONS[@]}"; do
    v=${VERSIONS[$k]}
    tgz="$DL/typescript-$v.tgz"
    if [ ! -s "$tgz" ]; then
        (cd "$DL" && npm pack "typescript@$v" --silent >/dev/null)
    fi
    out="$DEST/ts/v$((k + 1))"
    rm -rf "$out"
    mkdir -p "$out"
    tar -xzf "$tgz" -C "$out" --strip-components=1 --no-same-owner
    find "$out" -exec touch -h -d @1704067200 {} +
    echo "ts v$((k + 1))  typescript-$v  files=$(find "$out" -type f | wc -l) bytes=$(du -sb "$out" | cut -f1)"
done
