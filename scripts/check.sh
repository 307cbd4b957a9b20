#!/usr/bin/env bash
# The whole test suite, exactly as CI runs it (.ci/run calls this): formatting, lints, tests.
# Installs what the tests need on a fresh Debian machine when it is missing and we are root.
set -euo pipefail
cd "$(dirname "$0")/.."

need_php() { ! command -v php >/dev/null || ! php -m 2>/dev/null | grep -qi '^pdo_sqlite$'; }
if need_php; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "check.sh: installing php-cli and php-sqlite3 for the fixture CMS" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq php-cli php-sqlite3 >/dev/null
  fi
fi
if need_php; then
  # The PHP fixture CMS is part of the suite: without it, tests would not prove anything.
  echo "check.sh: php-cli with pdo_sqlite is required (apt-get install php-cli php-sqlite3)" >&2
  exit 1
fi

cargo fmt --all --check
cargo clippy --all-targets --locked -- -D warnings
cargo test --locked "$@"

# The README's demo command, unattended: a writer and two mirrors must converge. Outside CI a
# ./demo left from your own demo is kept, and this step says it was not run.
if [ -e demo ] && [ "${CI:-}" != true ]; then
  echo "check.sh: ./demo exists (your demo's state); not running scripts/demo.sh --check" >&2
else
  rm -rf demo
  scripts/demo.sh --check
  rm -rf demo
fi
