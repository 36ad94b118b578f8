#!/usr/bin/env bash
# What the install holds: the library's exported symbols are exactly the
# API of client.h, its SONAME and every --version carry the one version of
# CMakeLists.txt, the headers, plugins, pkg-config and CMake files are
# there, and the man pages render without a warning.
#   check_layout.sh PREFIX SRC BUILD
. "$(dirname "$0")/common.sh"

LIB="$LIBDIR/libbatchbroker.so.$MAJOR"
# Exported API = BB_API declarations of client.h.
nm -D --defined-only "$LIB" | awk '$2 == "T" { sub(/@.*/, "", $3); print $3 }' | sort \
    >"$WORK/exported"
grep -v '^#' "$SRC/include/batchbroker/client.h" | grep -o 'BB_API [^(]*(' | sed 's/.*[ *]\([a-z_0-9]*\)($/\1/' \
    | sort >"$WORK/declared"
diff -u "$WORK/declared" "$WORK/exported" || fail "exported symbols differ from client.h's BB_API"
echo "ok: $(wc -l <"$WORK/exported") exported functions, as declared"

readelf -d "$LIB" | grep -q "SONAME.*\[libbatchbroker.so.$MAJOR\]" || fail "SONAME"
[ -f "$LIBDIR/libbatchbroker.so.$VERSION" ] || fail "no libbatchbroker.so.$VERSION"
[ -f "$LIBDIR/libbatchbroker.a" ] || fail "no static library"

for v in "$("$PREFIX/sbin/batchbroker" --version)" "$("$PREFIX/bin/bbctl" --version)" \
         "$("$PREFIX/bin/bb-bench" --version)"; do
    case "$v" in
    *" $VERSION "*) echo "ok: $v" ;;
    *) fail "--version says '$v', not $VERSION" ;;
    esac
done
grep -q "#define BB_VERSION_STRING \"$VERSION\"" "$PREFIX/include/batchbroker/version.h" \
    || fail "version.h"
for h in client backend strategy protocol version; do
    [ -f "$PREFIX/include/batchbroker/$h.h" ] || fail "header $h.h not installed"
done

# Plugins: the built-in ones, not the tests' broken ones.
for p in echo synthetic; do
    [ -f "$LIBDIR/batchbroker/bb_backend_$p.so" ] || fail "plugin $p not installed"
done
if ls "$LIBDIR/batchbroker/" | grep -Eq 'badabi|noentry'; then fail "test plugins installed"; fi
[ "$(realpath "$(pkg-config --variable=plugindir batchbroker)")" = "$(realpath "$LIBDIR/batchbroker")" ] \
    || fail "pkg-config plugindir"
[ -f "$LIBDIR/cmake/batchbroker/batchbrokerConfig.cmake" ] || fail "CMake package"

# Man pages: render with man -l, no groff warning, the expected sections.
for page in man8/batchbroker.8 man5/batchbroker.ini.5 man1/bbctl.1 man1/bb-bench.1; do
    f="$PREFIX/share/man/$page"
    [ -f "$f" ] || fail "$page not installed"
    MANWIDTH=80 man -l --warnings=w "$f" >"$WORK/page.txt" 2>"$WORK/page.err"
    [ ! -s "$WORK/page.err" ] || { cat "$WORK/page.err" >&2; fail "$page: warnings"; }
    grep -q '^NAME' "$WORK/page.txt" && grep -q '^SEE ALSO' "$WORK/page.txt" \
        || fail "$page: no NAME or SEE ALSO section"
    grep -q "batchbroker $VERSION" "$WORK/page.txt" || fail "$page: no version in the footer"
    echo "ok: $page renders"
done
# The configuration page is the broker's own key table: every key is in it.
MANWIDTH=200 man -l "$PREFIX/share/man/man5/batchbroker.ini.5" >"$WORK/ini5.txt" 2>/dev/null
"$PREFIX/sbin/batchbroker" --config-reference | awk -F'`' '/^\| `\[/ { print $4 }' >"$WORK/keys"
[ "$(wc -l <"$WORK/keys")" -gt 40 ] || fail "too few keys from --config-reference"
while read -r key; do
    awk -v k="$key" 'index($0, "       " k) == 1 {
            c = substr($0, 8 + length(k), 1); if (c == "" || c == " ") found = 1 }
        END { exit !found }' "$WORK/ini5.txt" || fail "batchbroker.ini(5) lacks key $key"
done <"$WORK/keys"
echo "ok: batchbroker.ini(5) has all $(wc -l <"$WORK/keys") keys"
MANPATH="$PREFIX/share/man" man -w bbctl | grep -q "^$PREFIX/share/man/man1/bbctl.1" \
    || fail "man -w bbctl does not find the installed page"
echo "layout ok"
