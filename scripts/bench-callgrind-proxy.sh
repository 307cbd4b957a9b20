#!/usr/bin/env bash
# Instructions per pass-through GET (1 KiB, keep-alive) for copyist and for nginx's proxy_pass,
# each under `valgrind --tool=callgrind` in front of the same native nginx origin (issue 6).
# Wall-clock benchmarks on a shared machine are noise; instruction counts are not.
#
#   scripts/bench-callgrind-proxy.sh             copyist and nginx, 64 connections, 20000 GETs
#   CG_REQUESTS=N CG_CONNS=N                     load
#   CG_ONLY=copyist|nginx                        one of the two
#   BENCH_COPYIST=path                           a prebuilt copyist (default: build release)
#   CG_KEEP=1                                    keep the work dir (callgrind.out.* for
#                                                callgrind_annotate)
#
# Counting starts after every connection made one request (pools warm) and stops after the
# last, so start-up and connection set-up are not in the numbers; the whole process is counted
# (all threads), and the table divides by the number of requests.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
REQUESTS=${CG_REQUESTS:-20000}
CONNS=${CG_CONNS:-64}
say() { printf '[callgrind %s] %s\n' "$(date +%T)" "$*" >&2; }
for tool in valgrind callgrind_control nginx python3 curl; do
  command -v "$tool" >/dev/null || { say "$tool is required"; exit 1; }
done
if [ -n "${BENCH_COPYIST:-}" ]; then
  COPYIST=$(realpath "$BENCH_COPYIST")
else
  cargo build --release --quiet --bin copyist
  COPYIST="${CARGO_TARGET_DIR:-$ROOT/target}/release/copyist"
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/copyist-cg.XXXXXX")
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill -TERM -- "-$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [ "${CG_KEEP:-0}" = 1 ]; then say "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
start() { # name cmd...: own process group
  local name=$1; shift
  setsid "$@" >"$WORK/$name.out" 2>"$WORK/$name.err" </dev/null &
  PIDS+=($!)
  LAST_PID=$!
}
wait_http() {
  for _ in $(seq 600); do curl -fsS -o /dev/null --max-time 2 "$1" 2>/dev/null && return 0; sleep 0.1; done
  say "nothing answers at $1"; tail -n 20 "$WORK"/*.err >&2; exit 1
}
read -r P_ORIGIN P_NGINX P_COPYIST P_ADMIN <<<"$(python3 -c '
import socket; s=[socket.socket() for _ in range(4)]
[x.bind(("127.0.0.1", 0)) for x in s]; print(*[x.getsockname()[1] for x in s])')"

mkdir -p "$WORK/www" "$WORK/origin/tmp" "$WORK/nginx/tmp" "$WORK/copyist"
python3 -c 'import sys; sys.stdout.write(("copyist-bench-" * 80)[:1024])' >"$WORK/www/1k"
USER_LINE=""; [ "$(id -u)" = 0 ] && USER_LINE="user root root;"
nginx_top() { # dir master(on|off)
  cat <<CONF
$USER_LINE
worker_processes 1;
daemon off;
master_process $2;
pid $1/nginx.pid;
error_log $1/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  keepalive_timeout 120s;
  client_body_temp_path $1/tmp/body;
  proxy_temp_path $1/tmp/proxy;
  fastcgi_temp_path $1/tmp/fastcgi;
  uwsgi_temp_path $1/tmp/uwsgi;
  scgi_temp_path $1/tmp/scgi;
CONF
}
{ nginx_top "$WORK/origin" on; cat <<CONF
  sendfile on;
  server {
    listen 127.0.0.1:$P_ORIGIN backlog=4096;
    root $WORK/www;
    location = /1k { default_type application/octet-stream; }
  }
}
CONF
} >"$WORK/origin/nginx.conf"
# The same proxy_pass configuration as scripts/bench.sh, in one process (no master) so that
# callgrind counts the process that does the work.
{ nginx_top "$WORK/nginx" off; cat <<CONF
  upstream origin { server 127.0.0.1:$P_ORIGIN; keepalive 64; keepalive_requests 1000000; }
  server {
    listen 127.0.0.1:$P_NGINX backlog=4096;
    location / {
      proxy_pass http://origin;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host \$http_host;
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto \$scheme;
      proxy_set_header X-Forwarded-Host \$host;
    }
  }
}
CONF
} >"$WORK/nginx/nginx.conf"
cat >"$WORK/copyist/proxy.toml" <<CONF
[node]
name = "bench"
role = "writer"
data_dir = "$WORK/copyist/data"

[public]
listen = "127.0.0.1:$P_COPYIST"

[origin]
url = "http://127.0.0.1:$P_ORIGIN"

[admin]
listen = "127.0.0.1:$P_ADMIN"
CONF

start origin nginx -p "$WORK/origin" -c "$WORK/origin/nginx.conf" -e "$WORK/origin/error.log"
wait_http "http://127.0.0.1:$P_ORIGIN/1k"

measure() { # name port cmd...: prints instructions per request
  local name=$1 port=$2; shift 2
  start "$name" valgrind --tool=callgrind --instr-atstart=no \
    --callgrind-out-file="$WORK/callgrind.out.$name" "$@"
  local pid=$LAST_PID
  wait_http "http://127.0.0.1:$port/1k"
  # Warm-up: every connection once (and the origin pool filled), not counted.
  python3 "$ROOT/scripts/bench/fixed_load.py" "127.0.0.1:$port" /1k "$CONNS" "$CONNS"
  callgrind_control -i on "$pid" >/dev/null 2>&1
  python3 "$ROOT/scripts/bench/fixed_load.py" "127.0.0.1:$port" /1k "$CONNS" "$REQUESTS"
  callgrind_control -i off "$pid" >/dev/null 2>&1
  callgrind_control -d "$pid" >/dev/null 2>&1
  # The dump is written as callgrind.out.NAME.1 (plus per-thread files with --separate-threads).
  local total
  total=$(cat "$WORK/callgrind.out.$name".* 2>/dev/null | awk '/^(summary|totals):/ {s += $2} END {print s + 0}')
  kill -TERM -- "-$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  echo $((total / REQUESTS))
}

declare -A IPR=()
if [ "${CG_ONLY:-nginx}" != copyist ]; then
  say "nginx proxy_pass under callgrind: $REQUESTS GETs over $CONNS connections"
  IPR[nginx]=$(measure nginx "$P_NGINX" nginx -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" -e "$WORK/nginx/error.log")
fi
if [ "${CG_ONLY:-copyist}" != nginx ]; then
  say "copyist under callgrind: $REQUESTS GETs over $CONNS connections"
  IPR[copyist]=$(COPYIST_LOG=warn measure copyist "$P_COPYIST" "$COPYIST" run -c "$WORK/copyist/proxy.toml")
fi
echo "| proxy | instructions/request (user space, callgrind) |"
echo "|---|---:|"
for k in nginx copyist; do [ -n "${IPR[$k]:-}" ] && echo "| $k | ${IPR[$k]} |"; done
