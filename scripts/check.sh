#!/usr/bin/env bash
# The whole test suite, exactly as CI runs it (.ci/run calls this): formatting, lints, tests.
# Installs what the tests need on a fresh Debian machine when it is missing and we are root.
set -euo pipefail
cd "$(dirname "$0")/.."

# What the integration tests run for real: the PHP fixture CMS (php-cli + pdo_sqlite), HAProxy in
# front of a cluster, headless Chromium for the admin status page, strace for storage faults,
# faketime for clock skew, nftables and iproute2 for network partitions.
missing() {
  local m=()
  # `php -m` into a variable first: `| grep -q` under pipefail can fail on php's SIGPIPE.
  local mods
  mods=$(php -m 2>/dev/null || true)
  if ! command -v php >/dev/null || ! grep -qi '^pdo_sqlite$' <<<"$mods"; then
    m+=(php-cli php-sqlite3)
  fi
  [ -x /usr/sbin/haproxy ] || command -v haproxy >/dev/null || m+=(haproxy)
  command -v chromium >/dev/null || m+=(chromium)
  # Clock-skew tests (RELIABILITY.md G6) run a mirror under faketime.
  command -v faketime >/dev/null || m+=(faketime)
  # The storage fault tests (tests/it/storage.rs) inject EIO/ENOSPC/slow fsync with strace.
  command -v strace >/dev/null || m+=(strace)
  # One-way partitions in the network-namespace tests (tests/it/support/netns.rs).
  command -v nft >/dev/null || [ -x /usr/sbin/nft ] || m+=(nftables)
  # ip netns / veth / tc for the same tests (not in every minimal image).
  command -v ip >/dev/null || [ -x /usr/sbin/ip ] || m+=(iproute2)
  echo "${m[@]:-}"
}
pkgs=$(missing)
if [ -n "$pkgs" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "check.sh: installing $pkgs" >&2
  apt-get update -qq
  # shellcheck disable=SC2086
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $pkgs >/dev/null
  pkgs=$(missing)
fi
if [ -n "$pkgs" ]; then
  # Without them tests would not prove anything: refuse rather than skip.
  echo "check.sh: the test suite needs these Debian packages: $pkgs (apt-get install $pkgs)" >&2
  exit 1
fi

cargo fmt --all --check
cargo clippy --all-targets --all-features --locked -- -D warnings
# The crash-point tests (tests/it/crashpoints.rs) need the crash points compiled in.
cargo test --locked --features failpoints "$@"

# The README's demo command, unattended: a writer and two mirrors must converge. Outside CI a
# ./demo left from your own demo is kept, and this step says it was not run.
if [ -e demo ] && [ "${CI:-}" != true ]; then
  echo "check.sh: ./demo exists (your demo's state); not running scripts/demo.sh --check" >&2
else
  rm -rf demo
  scripts/demo.sh --check
  rm -rf demo
fi
