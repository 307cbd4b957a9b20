#!/usr/bin/env bash
# Replication benchmark: a copyist writer and a copyist mirror, each in front of its own nginx
# "CMS", on 127.0.0.1. Measures the targets of issue 3: with 50 ms added round trip between
# writer and mirror, replication throughput reaches at least 90% of what the mirror's CMS can
# apply serially; a caught-up mirror applies an entry within its CMS's own time plus one round
# trip plus 10 ms at p99.
#
#   scripts/bench-replication.sh                 default run (about 1.5-3 min after the build)
#   BENCH_QUICK=1 scripts/bench-replication.sh   smoke test (under 1 min): fewer writes, shorter runs
#   BENCH_N=N                 writes replayed per throughput run (default 2000; quick 300)
#   BENCH_LAT_RATE=R BENCH_LAT_SECONDS=S   caught-up latency load (default 20/s for 10 s; quick 5 s)
#   BENCH_SECONDS=N           length of each baseline wrk run (default 10; quick 3)
#   BENCH_DELAY_MS=MS         one-way delay added by the proxy (default 25, i.e. 50 ms round trip)
#   BENCH_WINDOW=N            the writer's [replication] window (default 32, copyist's default)
#   BENCH_DRAIN_TIMEOUT=S     longest wait for a mirror to replay its backlog (default 180)
#   BENCH_KEEP=1              keep the temp dir (logs, configs) instead of deleting it
#   BENCH_COPYIST=path        use this copyist binary instead of building target/release
#   BENCH_WAIT_IDLE=N         first wait up to N s for the machine to be under 10% busy
#
# Everything runs from a fresh temp dir and is stopped on exit. Prints a Markdown table and
# writes it to target/bench/replication.md. Process handling, pinning and the nginx origin are
# those of scripts/bench.sh; the round trip comes from scripts/bench/delay_proxy.py (netem is
# not available everywhere), the clients from scripts/bench/replication.py.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
HELPER=$ROOT/scripts/bench/replication.py
DELAY_PROXY=$ROOT/scripts/bench/delay_proxy.py

if [ "${BENCH_QUICK:-0}" = 1 ]; then
  N=${BENCH_N:-300} LAT_SECONDS=${BENCH_LAT_SECONDS:-5} BASE_SECONDS=${BENCH_SECONDS:-3} SYSCALL_N=100
else
  N=${BENCH_N:-2000} LAT_SECONDS=${BENCH_LAT_SECONDS:-10} BASE_SECONDS=${BENCH_SECONDS:-10} SYSCALL_N=300
fi
LAT_RATE=${BENCH_LAT_RATE:-20}
DELAY_MS=${BENCH_DELAY_MS:-25}
RTT_MS=$(awk -v d="$DELAY_MS" 'BEGIN {printf "%g", 2 * d}')
DRAIN_TIMEOUT=${BENCH_DRAIN_TIMEOUT:-180}
WINDOW=${BENCH_WINDOW:-32}
BODY_BYTES=256     # a small form post: stays inline in the log entry (inline_max 16 KiB)
PUSH_CONNS=4       # the writer serialises captured writes anyway; 4 keep its write lock busy
POLL_MS=2          # how often the mirror's applied_seq is polled while measuring latency
DRAIN_POLL_MS=5    # ... and while timing a backlog (seconds long; polls cost the mirror CPU)
FDATASYNC_N=100    # samples of one fdatasync on the same disk, per probe

say() { printf '[bench-repl %s] %s\n' "$(date +%T)" "$*" >&2; }
die() { say "error: $*"; exit 1; }

# --- 1. tools -------------------------------------------------------------------------------
missing=()
command -v nginx >/dev/null || missing+=(nginx-light)
command -v wrk >/dev/null || missing+=(wrk)
command -v curl >/dev/null || missing+=(curl)
command -v python3 >/dev/null || missing+=(python3)
command -v strace >/dev/null || missing+=(strace)
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    say "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    say "missing ${missing[*]}: apt-get install ${missing[*]} (as root)"
  fi
fi
for tool in nginx wrk curl python3 taskset timeout; do
  command -v "$tool" >/dev/null || die "$tool is required"
done
HAVE_STRACE=0
if command -v strace >/dev/null && strace -f -qq -e trace=fdatasync -o /dev/null true 2>/dev/null; then
  HAVE_STRACE=1
fi

if [ -n "${BENCH_COPYIST:-}" ]; then
  COPYIST=$(realpath "$BENCH_COPYIST")
  GIT_REV="prebuilt $BENCH_COPYIST"
else
  say "building copyist (release)"
  cargo build --release --quiet --bin copyist \
    || die "cargo build failed; BENCH_COPYIST=path/to/copyist benches a prebuilt binary instead"
  COPYIST="${CARGO_TARGET_DIR:-$ROOT/target}/release/copyist"
  GIT_REV="git $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  git diff --quiet HEAD -- src Cargo.toml Cargo.lock 2>/dev/null || GIT_REV+=", uncommitted changes in src"
fi
[ -x "$COPYIST" ] || die "no copyist binary at $COPYIST"

# --- processes: every service gets its own process group, all stopped on exit ----------------
WORK=$(mktemp -d "${TMPDIR:-/tmp}/copyist-bench-repl.XXXXXX")
declare -A SVC=()   # name -> pid (= process group id, thanks to setsid)
COPYIST_VERSION=$("$COPYIST" --version)
# Our own copy: a rebuild of target/release during the run must not change what is measured.
cp "$COPYIST" "$WORK/copyist-bin" && COPYIST=$WORK/copyist-bin

alive() { # pid: running and not a zombie
  [ -r "/proc/$1/stat" ] && [ "$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -c1)" != Z ]
}

stop_svc() {
  local name=$1 pid=${SVC[$1]:-}
  [ -n "$pid" ] || return 0
  unset "SVC[$name]"
  kill -TERM -- "-$pid" 2>/dev/null || true
  for _ in $(seq 100); do alive "$pid" || break; sleep 0.05; done
  kill -KILL -- "-$pid" 2>/dev/null || true  # stragglers (nginx workers) and a stuck leader
  wait "$pid" 2>/dev/null || true
}

# bounded limit cmd...: runs cmd under `timeout` in the background and waits for it. A signal to
# this script then interrupts the wait at once (bash defers traps while a foreground command
# runs, and ignores a Ctrl-C the command survived); cleanup stops the command's process group
# (timeout makes one). Output goes where the caller redirects it: no $(...) subshell.
FG_PID=""
bounded() {
  local limit=$1 rc=0; shift
  timeout "$limit" "$@" &
  FG_PID=$!
  wait "$FG_PID" || rc=$?
  FG_PID=""
  return "$rc"
}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [ -n "$FG_PID" ]; then
    kill -TERM -- "-$FG_PID" 2>/dev/null || kill -TERM "$FG_PID" 2>/dev/null || true
    wait "$FG_PID" 2>/dev/null || true
  fi
  for name in "${!SVC[@]}"; do stop_svc "$name"; done
  if [ "${BENCH_KEEP:-0}" = 1 ]; then say "kept $WORK"; else rm -rf "$WORK"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- pinning: the mirror's "machine" on CPU 0, the writer's and the "network" on CPU 1 ---------
# As in bench.sh the load generators get a CPU of their own from what is measured: the mirror
# (whose apply rate is the subject) and its CMS. The writer, its CMS, the clients and the delay
# proxy share CPU 1; on a real cluster the writer is another machine.
NCPU=$(nproc)
if [ "$NCPU" -ge 2 ]; then
  PIN_MIRROR=(taskset -c 0) PIN_WRITER=(taskset -c 1) PIN_LOAD=(taskset -c 1)
  PINNING="mirror-1 and its nginx CMS on CPU 0 (taskset -c 0); writer-1, its nginx CMS, wrk, the python clients and the delay proxy on CPU 1 (so each copyist runs one tokio worker)"
else
  PIN_MIRROR=() PIN_WRITER=() PIN_LOAD=()
  PINNING="none (1 CPU): both nodes, clients and the delay proxy share the CPU"
fi

start_svc() { # name pin-array-name cmd...: starts cmd in its own process group, pinned
  local name=$1 pin="$2[@]"; shift 2
  ${!pin} setsid "$@" >"$WORK/$name.out" 2>"$WORK/$name.err" </dev/null &
  SVC[$name]=$!
}

wait_http() { # url name
  for _ in $(seq 200); do
    curl -fsS -o /dev/null --max-time 1 "$1" 2>/dev/null && return 0
    alive "${SVC[$2]}" || break
    sleep 0.05
  done
  tail -n 20 "$WORK/$2.err" >&2 || true
  die "$2 did not come up at $1"
}

free_ports() { # n: n distinct free loopback ports
  python3 - "$1" <<'PY'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket(); s.bind(("127.0.0.1", 0)); socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
PY
}
read -r P_WORIGIN P_MORIGIN P_WPUB P_WADMIN P_WREPL P_MPUB P_MADMIN P_MREPL P_DELAY P_RTTPROXY \
  <<<"$(free_ports 10)"

# --- 2. origins: two nginx "CMS"es; POST /items reads the whole body, answers 201 -------------
mkdir -p "$WORK/www"
: >"$WORK/www/items"
printf 'ok\n' >"$WORK/www/healthz"
NGINX_USER=""
[ "$(id -u)" = 0 ] && NGINX_USER="user root root;"

origin_conf() { # name port pin-array-name: one worker, no access log, own temp paths
  local dir=$WORK/$1
  mkdir -p "$dir/tmp"
  cat >"$dir/nginx.conf" <<EOF
$NGINX_USER
worker_processes 1;
daemon off;
master_process on;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  keepalive_timeout 120s;
  client_body_temp_path $dir/tmp/body;
  proxy_temp_path $dir/tmp/proxy;
  fastcgi_temp_path $dir/tmp/fastcgi;
  uwsgi_temp_path $dir/tmp/uwsgi;
  scgi_temp_path $dir/tmp/scgi;
  server {
    listen 127.0.0.1:$2 backlog=4096;
    root $WORK/www;
    location = /healthz { default_type text/plain; }
    # As in bench.sh: the origin must consume the whole body before answering (as a CMS does).
    # mirror_request_body makes nginx read it in the precontent phase; the static handler then
    # refuses POST with 405, which error_page turns into a 201.
    location = /items {
      mirror /_drop;
      mirror_request_body on;
      error_page 405 =201 @created;
    }
    location = /_drop { internal; return 204; }
    location @created { default_type text/plain; return 201 "created\n"; }
  }
}
EOF
  start_svc "$1" "$3" nginx -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log"
}

# --- certificates and configs ---------------------------------------------------------------
CERTS=$WORK/certs
"$COPYIST" certs init --dir "$CERTS" >/dev/null
"$COPYIST" certs node writer-1 --dir "$CERTS" --host 127.0.0.1 >/dev/null
"$COPYIST" certs node mirror-1 --dir "$CERTS" --host 127.0.0.1 >/dev/null
WCONF=$WORK/writer/writer.toml
MCONF=$WORK/mirror/mirror.toml
mkdir -p "$WORK/writer" "$WORK/mirror"

writer_conf() { # mirror-url: the writer's config, shipping to mirror-1 at that address
  cat >"$WCONF" <<EOF
[node]
name = "writer-1"
role = "writer"
data_dir = "$WORK/writer/data"

[public]
listen = "127.0.0.1:$P_WPUB"

[origin]
url = "http://127.0.0.1:$P_WORIGIN"

[admin]
listen = "127.0.0.1:$P_WADMIN"

[replication]
listen = "127.0.0.1:$P_WREPL"
ca = "$CERTS/ca.pem"
cert = "$CERTS/writer-1.pem"
key = "$CERTS/writer-1.key"
window = $WINDOW

[[mirrors]]
name = "mirror-1"
url = "$1"
EOF
  "$COPYIST" check-config -c "$WCONF" >/dev/null || die "bad writer config $WCONF"
}

cat >"$MCONF" <<EOF
[node]
name = "mirror-1"
role = "mirror"
data_dir = "$WORK/mirror/data"

[public]
listen = "127.0.0.1:$P_MPUB"

[origin]
url = "http://127.0.0.1:$P_MORIGIN"

[admin]
listen = "127.0.0.1:$P_MADMIN"

[replication]
listen = "127.0.0.1:$P_MREPL"
ca = "$CERTS/ca.pem"
cert = "$CERTS/mirror-1.pem"
key = "$CERTS/mirror-1.key"

[writer]
name = "writer-1"
url = "https://127.0.0.1:$P_WREPL"
EOF
"$COPYIST" check-config -c "$MCONF" >/dev/null || die "bad mirror config $MCONF"

start_copyist() { # name config admin-port pin-array-name
  start_svc "$1" "$4" "$COPYIST" run -c "$2"
  wait_http "http://127.0.0.1:$3/liveness" "$1"
}

# --- helpers ----------------------------------------------------------------------------------
declare -A R=()    # metric -> value (or space-separated samples)
add() { R[$1]="${R[$1]:-}${R[$1]:+ }$2"; }
median() { # samples...: median, or empty
  [ $# -gt 0 ] || return 0
  printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'
}
med() { median ${R[$1]:-}; }
calc() { awk "BEGIN {printf \"%.6g\", $1}"; }
ERRORS=""

# helper SUBCOMMAND ARGS...: runs scripts/bench/replication.py on the load CPU, bounded in time;
# its key=value line becomes KV[key].
declare -A KV=()
helper() {
  local limit=$1 line f; shift
  KV=()
  line=""
  bounded "$limit" "${PIN_LOAD[@]}" python3 "$HELPER" "$@" >"$WORK/helper.out" 2>"$WORK/helper.err" || {
    line=$(cat "$WORK/helper.out")
    ERRORS+="- replication.py $1 failed: ${line:-no output} $(tail -n 3 "$WORK/helper.err" | tr '\n' ' ')"$'\n'
    say "replication.py $1 failed: ${line:-no output}; $(tail -n 3 "$WORK/helper.err" | tr '\n' ' ')"
  }
  line=$(cat "$WORK/helper.out")
  for f in $line; do KV[${f%%=*}]=${f#*=}; done
}

probe_sync() { # median cost of one fdatasync on the disk holding both nodes' data, stored in R
  helper 120 fsync --file "$WORK/fdatasync.probe" --n "$FDATASYNC_N"
  [ -n "${KV[fdatasync_us]:-}" ] || die "fdatasync probe failed"
  add probe.fdatasync "${KV[fdatasync_us]}"; add probe.fdatasync_p99 "${KV[fdatasync_p99_us]}"
  add probe.sfr "${KV[sfr_us]}"
  say "probe: fdatasync ${KV[fdatasync_us]} us (p99 ${KV[fdatasync_p99_us]}), sync_file_range ${KV[sfr_us]} us"
}

json_get() { # url python-expression-on-d
  curl -fsS --max-time 5 "$1" | python3 -c "import json, sys; d = json.load(sys.stdin); print($2)"
}
writer_status() { json_get "http://127.0.0.1:$P_WADMIN/api/v1/status" "$1"; }
mirror_status() { json_get "http://127.0.0.1:$P_MADMIN/api/v1/status" "$1"; }

wait_caught_up() { # what: the mirror's applied_seq equals the writer's last_seq, streaming
  local last applied state deadline=$((SECONDS + 60))
  while [ "$SECONDS" -lt "$deadline" ]; do
    last=$(writer_status 'd["last_seq"]') || last=x
    applied=$(mirror_status 'd["applied_seq"]') || applied=y
    state=$(writer_status 'd["mirrors"][0]["state"]') || state=?
    [ "$last" = "$applied" ] && [ "$state" = streaming ] && return 0
    if [ "$(mirror_status 'd["halt"] is not None')" = True ]; then
      die "the mirror halted: $(mirror_status 'd["halt"]')"
    fi
    sleep 0.1
  done
  die "$1: the mirror did not catch up within 60 s (writer last_seq $last, mirror applied_seq $applied, state $state)"
}

CLK_TCK=$(getconf CLK_TCK)
cpu_ticks() { # pids...: utime + stime (all threads), in clock ticks
  local p sum=0
  for p in "$@"; do sum=$((sum + $(sed 's/.*) //' "/proc/$p/stat" | awk '{print $12 + $13}'))); done
  echo "$sum"
}
nginx_workers() { ps -o pid= --ppid "${SVC[$1]}"; }

cpu_busy() { # percent of all CPUs busy over one second (anything running, this script included)
  local a b
  a=$(awk '/^cpu / {print $2 + $3 + $4 + $7 + $8, $5 + $6}' /proc/stat); sleep 1
  b=$(awk '/^cpu / {print $2 + $3 + $4 + $7 + $8, $5 + $6}' /proc/stat)
  awk -v a="$a" -v b="$b" 'BEGIN {split(a, x, " "); split(b, y, " "); busy = y[1] - x[1]; idle = y[2] - x[2]
    printf "%.0f", 100 * busy / (busy + idle)}'
}

# run_wrk url seconds: a serial POST loop (1 connection, 1 thread); sets WRK_RPS, WRK_P50, WRK_P99 (us)
run_wrk() {
  local url=$1 secs=$2 out line f
  local -A kv=()
  BENCH_METHOD=POST BENCH_BODY_BYTES=$BODY_BYTES bounded $((secs + 60)) "${PIN_LOAD[@]}" \
    wrk -t1 -c1 -d"${secs}s" --latency -s "$ROOT/scripts/bench/wrk.lua" "$url" >"$WORK/wrk.out" 2>&1 \
    || die "wrk failed against $url: $(cat "$WORK/wrk.out")"
  out=$(cat "$WORK/wrk.out")
  line=$(grep '^BENCH ' <<<"$out") || die "no summary from wrk: $out"
  for f in ${line#BENCH }; do kv[${f%%=*}]=${f#*=}; done
  if [ "${kv[errors]}" != 0 ] || [ "${kv[status_errors]}" != 0 ]; then
    ERRORS+="- wrk $url: ${kv[errors]} socket errors, ${kv[status_errors]} non-2xx/3xx"$'\n'
  fi
  WRK_RPS=$(awk -v r="${kv[requests]}" -v d="${kv[duration_us]}" 'BEGIN {printf "%.1f", r / (d / 1e6)}')
  WRK_P50=${kv[p50_us]} WRK_P99=${kv[p99_us]}
}

baseline() { # run label: the mirror CMS's own serial POST rate at 1 connection
  run_wrk "http://127.0.0.1:$P_MORIGIN/items" 1 >/dev/null   # warm-up
  run_wrk "http://127.0.0.1:$P_MORIGIN/items" "$BASE_SECONDS"
  add base.rps "$WRK_RPS"; add base.p50 "$WRK_P50"; add base.p99 "$WRK_P99"
  say "baseline ($1): mirror CMS serial POST rate $WRK_RPS req/s, p50 $WRK_P50 us, p99 $WRK_P99 us"
}

# throughput key: pause the mirror, push N captured writes, resume, time the replay of the backlog
throughput() {
  local key=$1
  wait_caught_up "$key"
  "$COPYIST" mirror pause mirror-1 --reason "bench: $key backlog" -c "$WCONF" >/dev/null
  for _ in $(seq 50); do
    [ "$(writer_status 'd["mirrors"][0]["state"]')" = paused ] && break
    sleep 0.1
  done
  [ "$(writer_status 'd["mirrors"][0]["state"]')" = paused ] || die "$key: mirror-1 did not pause"
  say "$key: mirror-1 paused; pushing $N writes into the writer ($PUSH_CONNS connections)"
  helper $((N + 120)) push --port "$P_WPUB" --n "$N" --conns "$PUSH_CONNS" --bytes "$BODY_BYTES"
  [ "${KV[ok]:-0}" = "$N" ] || die "$key: only ${KV[ok]:-0} of $N writes answered 201 with X-Copyist-Seq (bad: ${KV[bad]:-?})"
  add "push.rate" "${KV[rate]}"
  say "$key: $N writes captured in ${KV[secs]} s (${KV[rate]}/s, seq ${KV[first]}..${KV[last]})"
  probe_sync   # the disk is quiet now: the writer idle, the mirror paused
  say "$key: resuming mirror-1; timing until its applied_seq reaches the writer's last_seq"
  local cm cw co
  cm=$(cpu_ticks "${SVC[mirror]}") cw=$(cpu_ticks "${SVC[writer]}") co=$(cpu_ticks $(nginx_workers morigin))
  helper $((DRAIN_TIMEOUT + 60)) drain --mirror-admin "$P_MADMIN" --writer-admin "$P_WADMIN" \
    --poll-ms "$DRAIN_POLL_MS" --timeout "$DRAIN_TIMEOUT" -- \
    "$COPYIST" mirror resume mirror-1 --reason "bench: $key" -c "$WCONF"
  [ -n "${KV[rate]:-}" ] || die "$key: drain failed"
  [ "${KV[timed_out]}" = 0 ] || ERRORS+="- $key: the mirror replayed only ${KV[n]} of ${KV[want]} entries within ${DRAIN_TIMEOUT}s"$'\n'
  R[$key.n]=${KV[n]} R[$key.secs]=${KV[secs]} R[$key.rate]=${KV[rate]} R[$key.first]=${KV[first_apply_ms]}
  # CPU time per replayed entry (user+sys, all threads) of each side, over the whole drain
  R[$key.cpu.mirror]=$(calc "($(cpu_ticks "${SVC[mirror]}") - $cm) / $CLK_TCK * 1e6 / ${KV[n]}")
  R[$key.cpu.writer]=$(calc "($(cpu_ticks "${SVC[writer]}") - $cw) / $CLK_TCK * 1e6 / ${KV[n]}")
  R[$key.cpu.cms]=$(calc "($(cpu_ticks $(nginx_workers morigin)) - $co) / $CLK_TCK * 1e6 / ${KV[n]}")
  say "$key: mirror replayed ${KV[n]} entries in ${KV[secs]} s: ${KV[rate]} entries/s (first apply after ${KV[first_apply_ms]} ms); CPU per entry: mirror ${R[$key.cpu.mirror]} us, its CMS ${R[$key.cpu.cms]} us, writer ${R[$key.cpu.writer]} us"
}

# latency key: writes at LAT_RATE/s for LAT_SECONDS on a caught-up, streaming mirror
latency() {
  local key=$1
  wait_caught_up "$key"
  say "$key: caught-up latency, $LAT_RATE writes/s for $LAT_SECONDS s, mirror polled every $POLL_MS ms"
  helper $((${LAT_SECONDS%.*} + 120)) latency --port "$P_WPUB" --mirror-admin "$P_MADMIN" \
    --rate "$LAT_RATE" --seconds "$LAT_SECONDS" --bytes "$BODY_BYTES" --poll-ms "$POLL_MS" \
    --dump "$WORK/$key.json"
  [ -n "${KV[p99_ms]:-}" ] || die "$key: latency run failed"
  [ "${KV[failures]}" = 0 ] && [ "${KV[missing]}" = 0 ] \
    || ERRORS+="- $key: ${KV[failures]} writes failed, ${KV[missing]} never seen applied"$'\n'
  local k
  for k in n p50_ms p90_ms p99_ms max_ms min_ms poll_p99_ms first_seq last_seq; do R[$key.$k]=${KV[$k]}; done
  say "$key: ${KV[n]} writes: p50 ${KV[p50_ms]} ms, p99 ${KV[p99_ms]} ms, max ${KV[max_ms]} ms (poll gap p99 ${KV[poll_p99_ms]} ms)"
  replay_cms_time "$key" "${KV[first_seq]}" "${KV[last_seq]}"
}

replay_cms_time() { # key first last: the CMS time the mirror itself recorded for those replays
  helper 60 cms --admin "$P_MADMIN" --first "$2" --last "$3"
  if [ -n "${KV[p50_us]:-}" ]; then
    R[$1.cms50]=${KV[p50_us]} R[$1.cms99]=${KV[p99_us]}
    say "$1: the mirror's CMS answered its replays in p50 ${R[$1.cms50]} us, p99 ${R[$1.cms99]} us (its own log)"
  fi
}

# --- 3. start ---------------------------------------------------------------------------------
BUSY_BEFORE=$(cpu_busy)
if [ "${BENCH_WAIT_IDLE:-0}" -gt 0 ]; then
  deadline=$((SECONDS + BENCH_WAIT_IDLE))
  while [ "$BUSY_BEFORE" -gt 10 ] && [ "$SECONDS" -lt "$deadline" ]; do
    say "machine ${BUSY_BEFORE}% busy; waiting for it to settle (BENCH_WAIT_IDLE=$BENCH_WAIT_IDLE)"
    sleep 4; BUSY_BEFORE=$(cpu_busy)
  done
fi
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
[ "$BUSY_BEFORE" -le 10 ] || say "warning: the machine is ${BUSY_BEFORE}% busy before the run; results will be noisy"
say "work dir $WORK; pinning: $PINNING"
origin_conf worigin "$P_WORIGIN" PIN_WRITER
origin_conf morigin "$P_MORIGIN" PIN_MIRROR
wait_http "http://127.0.0.1:$P_WORIGIN/healthz" worigin
wait_http "http://127.0.0.1:$P_MORIGIN/healthz" morigin

# The round trip: writer -> delay proxy -> mirror's replication listener (TLS passes through).
start_svc delay PIN_LOAD python3 "$DELAY_PROXY" --listen "127.0.0.1:$P_DELAY" \
  --upstream "127.0.0.1:$P_MREPL" --delay-ms "$DELAY_MS"
# A second instance in front of the mirror's CMS, only to measure the round trip it adds.
start_svc rttproxy PIN_LOAD python3 "$DELAY_PROXY" --listen "127.0.0.1:$P_RTTPROXY" \
  --upstream "127.0.0.1:$P_MORIGIN" --delay-ms "$DELAY_MS"
wait_http "http://127.0.0.1:$P_RTTPROXY/healthz" rttproxy
for _ in $(seq 100); do grep -q ready "$WORK/delay.out" 2>/dev/null && break; sleep 0.05; done
grep -q ready "$WORK/delay.out" || die "the delay proxy did not start: $(cat "$WORK/delay.err")"

start_copyist mirror "$MCONF" "$P_MADMIN" PIN_MIRROR
writer_conf "https://127.0.0.1:$P_MREPL"
start_copyist writer "$WCONF" "$P_WADMIN" PIN_WRITER
wait_caught_up start

# --- 4. baseline: the mirror's CMS alone, serially --------------------------------------------
say "baseline: wrk -t1 -c1 POST $BODY_BYTES B to the mirror's CMS, ${BASE_SECONDS}s"
baseline "before"
helper 60 rtt --port "$P_MORIGIN"; R[rtt.direct]=${KV[p50_ms]:-}
helper 60 rtt --port "$P_RTTPROXY"; R[rtt.proxy]=${KV[p50_ms]:-} R[rtt.proxy99]=${KV[p99_ms]:-}
R[rtt.added]=$(calc "${R[rtt.proxy]:-0} - ${R[rtt.direct]:-0}")
say "round trip through the delay proxy: p50 ${R[rtt.proxy]} ms (p99 ${R[rtt.proxy99]}) vs ${R[rtt.direct]} ms direct: +${R[rtt.added]} ms"

# --- 5. direct: writer -> mirror ------------------------------------------------------------------
throughput direct
latency lat.direct

# --- 6. 50 ms round trip: the writer ships through the delay proxy --------------------------------
say "restarting the writer with mirror-1 at the delay proxy (+${RTT_MS} ms round trip)"
stop_svc writer
writer_conf "https://127.0.0.1:$P_DELAY"
start_copyist writer "$WCONF" "$P_WADMIN" PIN_WRITER
throughput delayed
latency lat.delayed

say "baseline again, after the replication runs"
baseline "after"
probe_sync

# --- 7. what the mirror waits for per applied entry: its syncs, counted and timed by strace ----
# A separate pass (strace slows the mirror down, so its rate is not reported): the mirror is
# restarted under strace, then the same pause / push / resume / drain as above.
SYS_FDS="" SYS_SFR="" SYS_WAIT="" SYS_N=""
if [ "$HAVE_STRACE" = 1 ]; then
  say "mirror's syncs per applied entry under strace ($SYSCALL_N entries)"
  stop_svc mirror
  start_svc mirror PIN_MIRROR strace -f -qq -ttt -T -e trace=fsync,fdatasync,sync_file_range \
    -o "$WORK/mirror.strace" "$COPYIST" run -c "$MCONF"
  wait_http "http://127.0.0.1:$P_MADMIN/liveness" mirror
  wait_caught_up strace
  "$COPYIST" mirror pause mirror-1 --reason "bench: strace backlog" -c "$WCONF" >/dev/null
  helper $((SYSCALL_N + 120)) push --port "$P_WPUB" --n "$SYSCALL_N" --conns "$PUSH_CONNS" --bytes "$BODY_BYTES"
  sleep 1   # let sled's periodic flush of the pause pass by
  t_start=$(date +%s.%N)
  helper $((DRAIN_TIMEOUT + 60)) drain --mirror-admin "$P_MADMIN" --writer-admin "$P_WADMIN" \
    --poll-ms "$DRAIN_POLL_MS" --timeout "$DRAIN_TIMEOUT" -- \
    "$COPYIST" mirror resume mirror-1 --reason "bench: strace" -c "$WCONF"
  t_end=$(date +%s.%N)
  SYS_N=${KV[n]:-0}
  if [ "$SYS_N" -gt 0 ]; then
    # Per applied entry: fsync+fdatasync calls, sync_file_range calls, and the wall time spent
    # inside all of them (strace -T; calls split by other threads are matched by "resumed").
    read -r SYS_FDS SYS_SFR SYS_WAIT <<<"$(awk -v s="$t_start" -v e="$t_end" -v n="$SYS_N" '
      $2 < s || $2 > e { next }
      /(^| )(fsync|fdatasync)\(/ { f++ }
      /(^| )sync_file_range\(/ { r++ }
      /(fsync|fdatasync|sync_file_range)/ && /<[0-9.]+>$/ && !/unfinished/ {
        t = $NF; gsub(/[<>]/, "", t); w += t }
      END { printf "%.2f %.2f %.3f\n", f / n, r / n, w * 1000 / n }' "$WORK/mirror.strace")"
    say "mirror, per applied entry: $SYS_FDS fsync+fdatasync, $SYS_SFR sync_file_range, $SYS_WAIT ms inside them"
  fi
  # Back to a mirror without strace for the final check.
  stop_svc mirror
  start_copyist mirror "$MCONF" "$P_MADMIN" PIN_MIRROR
  wait_caught_up final
else
  say "strace missing or not permitted: syscall counts skipped"
fi

# Everything the writer accepted reached the mirror, nothing halted.
FINAL_LAST=$(writer_status 'd["last_seq"]')
FINAL_APPLIED=$(mirror_status 'd["applied_seq"]')
FINAL_HALT=$(mirror_status 'd["halt"]')
[ "$FINAL_LAST" = "$FINAL_APPLIED" ] && [ "$FINAL_HALT" = None ] \
  || ERRORS+="- at the end: writer last_seq $FINAL_LAST, mirror applied_seq $FINAL_APPLIED, halt $FINAL_HALT"$'\n'
stop_svc delay
stop_svc rttproxy
DELAY_LATE=$(grep -h '^delay_proxy:' "$WORK/delay.err" 2>/dev/null | tail -n 1 | sed 's/^delay_proxy: //') || DELAY_LATE=""

# --- 7. report ------------------------------------------------------------------------------
f0() { [ -n "$1" ] && awk -v x="$1" 'BEGIN {printf "%.0f", x}' || printf 'n/a'; }
f1() { [ -n "$1" ] && awk -v x="$1" 'BEGIN {printf "%.1f", x}' || printf 'n/a'; }
f2() { [ -n "$1" ] && awk -v x="$1" 'BEGIN {printf "%.2f", x}' || printf 'n/a'; }
f3() { [ -n "$1" ] && awk -v x="$1" 'BEGIN {printf "%.3f", x}' || printf 'n/a'; }
verdict() { [ "$1" = 1 ] && printf 'met' || printf '**MISSED**'; }

BASE=$(med base.rps) BASE_P50=$(med base.p50) BASE_P99=$(med base.p99)
FSYNC=$(med probe.fdatasync) FSYNC99=$(med probe.fdatasync_p99) SFR=$(med probe.sfr)
TARGET_RATE=$(calc "0.9 * $BASE")
CMS_MS=$(calc "$BASE_P99 / 1000")   # fallback for the CMS's own time: p99 of its serial POSTs
rows=()
rows+=("| mirror CMS alone: serial POST rate, 1 connection (wrk -t1 -c1, $BODY_BYTES B, ${BASE_SECONDS}s × 2: $(echo ${R[base.rps]})) | $(f0 "$BASE") req/s; p50 $(f0 "$BASE_P50") µs, p99 $(f0 "$BASE_P99") µs | baseline | |")
for key in direct delayed; do
  rate=${R[$key.rate]:-} label="direct" rtt=0
  [ "$key" = delayed ] && label="+$RTT_MS ms RTT (delay proxy)"
  ratio=$(calc "${rate:-0} / $BASE")
  per=$(calc "1000 / ${rate:-1}")
  met=$(awk -v r="${rate:-0}" -v t="$TARGET_RATE" 'BEGIN {print (r >= t)}')
  target="≥ 0.90 × baseline = $(f0 "$TARGET_RATE")/s"
  [ "$key" = direct ] && target="(reference; $target)"
  rows+=("| replication throughput, $label: $N entries replayed after resume | $(f1 "$rate") entries/s ($N in $(f2 "${R[$key.secs]}") s) = $(f3 "$ratio") × baseline; $(f2 "$per") ms per entry ≈ $(f2 "$(calc "$per * 1000 / $FSYNC")") × one fdatasync | $target | $(verdict "$met") |")
done
rows+=("| CPU per replayed entry during the throughput runs (user+sys; direct / +$RTT_MS ms) | mirror $(f0 "${R[direct.cpu.mirror]:-}") / $(f0 "${R[delayed.cpu.mirror]:-}") µs, its CMS $(f0 "${R[direct.cpu.cms]:-}") / $(f0 "${R[delayed.cpu.cms]:-}") µs, writer $(f0 "${R[direct.cpu.writer]:-}") / $(f0 "${R[delayed.cpu.writer]:-}") µs | informational: the mirror's CPU 0 is $(f0 "$(calc "(${R[direct.cpu.mirror]:-0} + ${R[direct.cpu.cms]:-0}) / (1e6 / ${R[direct.rate]:-1}) * 100")")% busy (direct) | |")
rows+=("| throughput with +$RTT_MS ms RTT / direct | $(f2 "$(calc "${R[delayed.rate]:-0} / ${R[direct.rate]:-1}")") | informational: what the round trip costs with window $WINDOW | |")
rows+=("| model: window limit with +$RTT_MS ms RTT, window / RTT | $(f0 "$(calc "$WINDOW * 1000 / $RTT_MS")") entries/s = $(f3 "$(calc "$WINDOW * 1000 / $RTT_MS / $BASE")") × baseline | informational: at most window entries per round trip, however fast the mirror | |")
rows+=("| one fdatasync (4 KiB append, same disk, $FDATASYNC_N samples, median of $(wc -w <<<"${R[probe.fdatasync]}") probes: $(echo ${R[probe.fdatasync]}) µs) | $(f0 "$FSYNC") µs (p99 $(f0 "$FSYNC99") µs); sync_file_range $(f0 "$SFR") µs | informational | |")
if [ -n "$SYS_FDS" ]; then
  rows+=("| mirror: syncs per applied entry (separate pass under strace -f -T, $SYS_N entries; includes sled's 500 ms background flush) | $SYS_FDS fsync+fdatasync, $SYS_SFR sync_file_range; $(f2 "$SYS_WAIT") ms per entry inside them | informational: 2 durable commits per entry (applying, then applied) | |")
fi
ceiling=$(calc "1e6 / ($BASE_P50 + 2 * $FSYNC)")
rows+=("| model: ceiling of a serial apply with 2 fdatasyncs per entry, 1 / (CMS p50 + 2 × fdatasync) | $(f1 "$ceiling") entries/s = $(f3 "$(calc "$ceiling / $BASE")") × baseline | informational: the ceiling of applying one entry at a time durably | |")
for key in direct delayed; do
  k=lat.$key label="direct" rtt=0
  [ "$key" = delayed ] && label="+$RTT_MS ms RTT" rtt=$RTT_MS
  # The CMS's own time: p99 of what the mirror recorded for these very replays (falls back to
  # the p99 of the baseline's serial POSTs if the mirror's log could not be read).
  cms=$CMS_MS
  [ -n "${R[$k.cms99]:-}" ] && cms=$(calc "${R[$k.cms99]} / 1000")
  target=$(calc "$cms + $rtt + 10")
  met=$(awk -v p="${R[$k.p99_ms]:-1e9}" -v t="$target" 'BEGIN {print (p <= t)}')
  rows+=("| caught-up latency, $label: writer's 2xx → mirror's applied_seq covers it ($LAT_RATE/s × ${LAT_SECONDS}s, ${R[$k.n]:-0} writes, polled every $POLL_MS ms) | p50 $(f1 "${R[$k.p50_ms]:-}") ms, p90 $(f1 "${R[$k.p90_ms]:-}") ms, p99 $(f1 "${R[$k.p99_ms]:-}") ms, max $(f1 "${R[$k.max_ms]:-}") ms | p99 ≤ CMS $(f2 "$cms") + RTT $rtt + 10 = $(f1 "$target") ms | $(verdict "$met") |")
done
rows+=("| the mirror's CMS time per replay, from its own log (latency runs; direct / +$RTT_MS ms; used as \"CMS\" in the latency targets) | p50 $(f0 "${R[lat.direct.cms50]:-}") / $(f0 "${R[lat.delayed.cms50]:-}") µs, p99 $(f0 "${R[lat.direct.cms99]:-}") / $(f0 "${R[lat.delayed.cms99]:-}") µs | informational | |")
rows+=("| round trip added by the delay proxy (GET through a second instance, p50) | +$(f2 "${R[rtt.added]}") ms (p50 $(f2 "${R[rtt.proxy]}") ms, p99 $(f2 "${R[rtt.proxy99]}") ms through it; $(f3 "${R[rtt.direct]}") ms direct) | $RTT_MS ms nominal | |")
rows+=("| writer: captured writes while the mirror was paused ($PUSH_CONNS connections) | $(f1 "$(med push.rate)") writes/s (runs: $(echo ${R[push.rate]})) | informational: 2 fdatasyncs per write on the writer | |")

LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)
CPU_MODEL=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)
REPORT=$(
  cat <<EOF
# copyist replication benchmark

- date: $(date -u '+%Y-%m-%d %H:%M UTC')
- machine: $NCPU CPUs, $CPU_MODEL, $(awk '/MemTotal/ {printf "%.0f GiB RAM", $2 / 1048576}' /proc/meminfo), kernel $(uname -r), temp dir on $(findmnt -no FSTYPE -T "$WORK" 2>/dev/null || echo '?') (both nodes' data on the same disk)
- versions: $COPYIST_VERSION ($GIT_REV), $(nginx -v 2>&1 | sed 's/^nginx version: //'), wrk $(wrk -v 2>&1 | awk 'NR == 1 {print $2}'), $(python3 --version), $(rustc --version 2>/dev/null | awk '{print $1, $2}')
- other load: CPUs ${BUSY_BEFORE}% busy in the second before the run; load average $LOAD_BEFORE before, $LOAD_AFTER after
- pinning: $PINNING
- cluster: writer-1 and mirror-1 (copyist defaults but [replication] window = $WINDOW), mTLS with certificates from \`copyist certs\`; each before its own nginx origin whose POST /items reads the body and answers 201
- throughput: \`copyist mirror pause\`, $N captured POSTs of $BODY_BYTES B into the writer, \`copyist mirror resume\`, then the time until the mirror's applied_seq (its admin /api/v1/status, polled every $DRAIN_POLL_MS ms) equals the writer's last_seq; rate = entries / time (includes the new session's first round trip)
- round trip: scripts/bench/delay_proxy.py between the writer and the mirror's replication listener, ${DELAY_MS} ms per chunk each way; the writer restarted with [[mirrors]] url at the proxy${DELAY_LATE:+; chunks written late by: $DELAY_LATE}
- caught-up latency: one client at $LAT_RATE writes/s; per write, from reading the writer's answer to the middle of the first poll of the mirror's status showing it applied (an upper bound, resolution ~$POLL_MS ms); the writer's own 2 fdatasyncs per write share the disk with the mirror's
- targets (issue 3): throughput with +$RTT_MS ms RTT ≥ 0.9 × the mirror CMS's serial rate; caught-up p99 ≤ the CMS's own time (p99 of the CMS time the mirror recorded for those replays) + RTT + 10 ms (RTT taken as 0 for direct)

| scenario | measured | target | met? |
|---|---|---|---|
$(printf '%s\n' "${rows[@]}")
EOF
  if [ -n "$ERRORS" ]; then printf '\nErrors seen during the run:\n%s' "$ERRORS"; fi
)
mkdir -p "$ROOT/target/bench"
printf '%s\n' "$REPORT" | tee "$ROOT/target/bench/replication.md"
say "written to target/bench/replication.md"
