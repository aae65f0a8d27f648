#!/usr/bin/env bash
# What a user gets from `cmake --install`: installs BUILD_DIR into a scratch
# prefix, checks the package (no test-only header, no header that includes a
# missing one, C++17 declared, no absolute library paths of this machine, the
# programs), then configures, builds and runs an outside project against it.
#   check_install.sh BUILD_DIR CONSUMER_SOURCE_DIR WITH_APPS(0|1) [consumer cmake args...]
# The consumer gets the build's compiler and flags (a sanitizer build needs
# them to link). Scratch space is BUILD_DIR/packaging_check (a fixed path, so
# ccache hits on the next run), removed on exit.
set -euo pipefail
build=$(cd "$1" && pwd)
consumer_src=$2
with_apps=$3
shift 3

work="$build/packaging_check"
rm -rf "$work"
trap 'rm -rf "$work"' EXIT
prefix="$work/prefix"
fail() { echo "check_install: $*" >&2; exit 1; }

cmake --install "$build" --prefix "$prefix" >/dev/null

# Headers: the internal ones (connex/src, e.g. file_io.h) stay out, and every connex header an
# installed header includes is installed.
[[ -d "$prefix/include/connex" ]] || fail "no include/connex in the prefix"
[[ ! -e "$prefix/include/connex/file_io.h" ]] || fail "file_io.h (test-only) is installed"
while IFS= read -r line; do
  file=${line%%:*}
  inc=$(sed -E 's/.*#include *"(connex\/[^"]+)".*/\1/' <<<"${line#*:}")
  [[ -e "$prefix/include/$inc" ]] || fail "${file#"$prefix/"} includes $inc, which is not installed"
done < <(grep -rH '#include *"connex/' "$prefix/include/connex" || true)

# The exported target: C++17 declared; no absolute paths (a library path of
# this machine, e.g. /usr/lib/libgloo.so or libc10.so); everything else is
# relative to the prefix or found by connexConfig.cmake.
targets=("$prefix"/lib*/cmake/connex/connexTargets.cmake)
[[ -f "${targets[0]}" ]] || fail "connexTargets.cmake is not installed"
grep -q 'INTERFACE_COMPILE_FEATURES "[^"]*cxx_std_17' "${targets[0]}" ||
  fail "${targets[0]#"$prefix/"} does not declare cxx_std_17"
if grep -nE '^ *(INTERFACE|IMPORTED)_[A-Z_]+ "([^"]*;)?/' "$prefix"/lib*/cmake/connex/connexTargets*.cmake; then
  fail "the installed targets name absolute paths (above)"
fi

if [[ $with_apps == 1 ]]; then
  [[ -x "$prefix/bin/connex" ]] || fail "bin/connex is not installed"
  "$prefix/bin/connex" --help | grep -q train || fail "bin/connex --help does not list the subcommands"
  # `connex bench` runs the connex_bench installed beside it.
  "$prefix/bin/connex" bench --help >/dev/null || fail "bin/connex bench --help failed"
fi

launcher=()
if command -v ccache >/dev/null; then
  launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
  export CCACHE_SLOPPINESS=include_file_mtime,include_file_ctime  # the headers were just installed
fi
cmake -S "$consumer_src" -B "$work/consumer" -DCMAKE_PREFIX_PATH="$prefix" "${launcher[@]}" "$@" >"$work/configure.log" 2>&1 ||
  { cat "$work/configure.log"; fail "configuring the consumer failed"; }
cmake --build "$work/consumer" >"$work/build.log" 2>&1 || { cat "$work/build.log"; fail "building the consumer failed"; }
"$work/consumer/consumer"
echo "check_install: ok"
