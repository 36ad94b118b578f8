#!/usr/bin/env bash
# ctest fixture: install the build into a fresh prefix for the other checks.
#   install.sh PREFIX BUILD
set -euo pipefail
PREFIX=$1 BUILD=$2
rm -rf "$PREFIX"
cmake --install "$BUILD" --prefix "$PREFIX" >/dev/null
echo "installed into $PREFIX"
