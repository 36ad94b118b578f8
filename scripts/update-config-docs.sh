#!/usr/bin/env bash
# Regenerate the key table in docs/configuration.md from the broker's own
# table (batchbroker --config-reference). tests/test_config.c fails until the
# docs match the code.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-build/broker/batchbroker}
table=$(mktemp)
trap 'rm -f "$table"' EXIT
"$bin" --config-reference > "$table"
awk -v table="$table" '
    /^\| section \| key \|/ && !done { while ((getline line < table) > 0) print line; skip = 1; done = 1; next }
    skip && /^\|/ { next }
    { skip = 0; print }
' docs/configuration.md > docs/configuration.md.new
mv docs/configuration.md.new docs/configuration.md
