#!/usr/bin/env bash
# Starts copyist (writer) in front of the PHP fixture CMS on loopback, using proxy.toml.example,
# and prints the URLs to try. Ctrl-C stops everything. State lives in ./demo/ (delete it to reset).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v php >/dev/null || ! php -m 2>/dev/null | grep -qi '^pdo_sqlite$'; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq php-cli php-sqlite3 >/dev/null
  else
    echo "demo.sh: needs php-cli and php-sqlite3 (apt-get install php-cli php-sqlite3)" >&2; exit 1
  fi
fi

cargo build --quiet --bin copyist
mkdir -p demo/cms
CMS_DATA_DIR="$PWD/demo/cms" PHP_CLI_SERVER_WORKERS=2 setsid php -S 127.0.0.1:8081 fixtures/cms/router.php \
  >demo/cms.log 2>&1 &
php_pid=$!
trap 'kill -- -"$php_pid" 2>/dev/null || true; kill "$copyist_pid" 2>/dev/null || true; wait 2>/dev/null' EXIT INT TERM

target/debug/copyist check-config -c proxy.toml.example
COPYIST_LOG=${COPYIST_LOG:-info} target/debug/copyist run -c proxy.toml.example 2>demo/copyist.log &
copyist_pid=$!
for _ in $(seq 100); do
  curl -fsS -o /dev/null http://127.0.0.1:9901/liveness 2>/dev/null && break
  sleep 0.1
done

cat <<MSG

copyist is running in front of the fixture CMS.

  site (through copyist):   http://127.0.0.1:8080/
  create an article:        curl -i -d title=hello -d body=world http://127.0.0.1:8080/articles
  upload a file:            curl -i -F title=pic -F file=@README.md http://127.0.0.1:8080/upload
  what was captured:        target/debug/copyist log list -c proxy.toml.example
  one entry in full:        target/debug/copyist log show 1 -c proxy.toml.example
  the CMS state:            curl http://127.0.0.1:8080/dump
  admin API (loopback):     http://127.0.0.1:9901/api/v1/status

logs: demo/copyist.log, demo/cms.log — Ctrl-C stops the demo.
MSG
wait "$copyist_pid"
