#!/usr/bin/env bash
# Benchmark: copyist against nginx proxy_pass, both in front of the same origin, on 127.0.0.1.
# Measures the targets of issue 2: pass-through GET throughput within 10% of nginx, a 1 GiB
# captured upload under 64 MiB peak RSS, at most two fsyncs per captured write.
#
#   scripts/bench.sh                 default run (~6 min): 10 s per measurement, 3 repeats
#   BENCH_QUICK=1 scripts/bench.sh   smoke test: 2 s, 1 repeat, no 1 GiB upload
#   BENCH_SECONDS=N BENCH_REPEATS=N  override duration and repeats
#   BENCH_KEEP=1                     keep the temp dir (logs, configs) instead of deleting it
#   BENCH_COPYIST=path               use this copyist binary instead of building target/release
#   BENCH_WAIT_IDLE=N                first wait up to N s for the machine to be under 10% busy
#
# Everything runs from a fresh temp dir and is stopped on exit. Prints a Markdown table and
# writes it to target/bench/results.md. Missing nginx/wrk/curl/strace are installed with
# apt-get when running as root on Debian.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

if [ "${BENCH_QUICK:-0}" = 1 ]; then
  DUR=2 REPEATS=1 BIG=0
else
  DUR=${BENCH_SECONDS:-10} REPEATS=${BENCH_REPEATS:-3} BIG=1
fi
CONNS=64           # scenario a
POST_BYTES=4096    # scenario c/d: stays inline in the log entry (inline_max 16 KiB)
BLOB_BYTES=65536   # scenario d, second row: goes to the blob store
FSYNC_N=200        # scenario d: sequential captured POSTs counted under strace
FDATASYNC_N=100    # scenario c: samples of one fdatasync on the same disk, per probe

say() { printf '[bench %s] %s\n' "$(date +%T)" "$*" >&2; }
die() { say "error: $*"; exit 1; }

# --- 1. tools -------------------------------------------------------------------------------
missing=()
command -v nginx >/dev/null || missing+=(nginx-light)
command -v wrk >/dev/null || missing+=(wrk)
command -v curl >/dev/null || missing+=(curl)
command -v strace >/dev/null || missing+=(strace)
command -v python3 >/dev/null || missing+=(python3)
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    say "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    say "missing ${missing[*]}: apt-get install ${missing[*]} (as root)"
  fi
fi
for tool in nginx wrk curl python3 taskset; do
  command -v "$tool" >/dev/null || die "$tool is required"
done
HAVE_STRACE=0
if command -v strace >/dev/null && strace -f -qq -e trace=fdatasync -o /dev/null true 2>/dev/null; then
  HAVE_STRACE=1
fi

if [ -n "${BENCH_COPYIST:-}" ]; then
  COPYIST=$(realpath "$BENCH_COPYIST")
else
  say "building copyist (release)"
  cargo build --release --quiet --bin copyist \
    || die "cargo build failed; BENCH_COPYIST=path/to/copyist benches a prebuilt binary instead"
  COPYIST="${CARGO_TARGET_DIR:-$ROOT/target}/release/copyist"
fi
[ -x "$COPYIST" ] || die "no copyist binary at $COPYIST"
if [ -n "${BENCH_COPYIST:-}" ]; then
  GIT_REV="prebuilt $BENCH_COPYIST"
else
  GIT_REV="git $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  git diff --quiet HEAD -- src Cargo.toml Cargo.lock 2>/dev/null || GIT_REV+=", uncommitted changes in src"
fi

# --- processes: every service gets its own process group, all stopped on exit ----------------
WORK=$(mktemp -d "${TMPDIR:-/tmp}/copyist-bench.XXXXXX")
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

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  for name in "${!SVC[@]}"; do stop_svc "$name"; done
  if [ "${BENCH_KEEP:-0}" = 1 ]; then say "kept $WORK"; else rm -rf "$WORK"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- 4. pinning: services on CPU 0, the load generator alone on CPU 1 -------------------------
NCPU=$(nproc)
if [ "$NCPU" -ge 2 ]; then
  PIN_SVC=(taskset -c 0) PIN_LOAD=(taskset -c 1)
  PINNING="origin, nginx proxy and copyist pinned to CPU 0 (taskset -c 0); wrk/curl/python clients on CPU 1 (taskset -c 1)"
else
  PIN_SVC=() PIN_LOAD=()
  PINNING="none (1 CPU): load generator shares the CPU with the proxies"
fi

start_svc() { # name cmd...: starts cmd in its own process group, pinned with the services
  local name=$1; shift
  "${PIN_SVC[@]}" setsid "$@" >"$WORK/$name.out" 2>"$WORK/$name.err" </dev/null &
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
read -r P_ORIGIN P_NGINX P_COPYIST P_ADMIN P_UNGINX P_UCOPYIST P_UADMIN P_SCOPYIST P_SADMIN \
  <<<"$(free_ports 9)"

# --- 2. origin: nginx serving 1 KiB for GET /1k; POST /upload reads every byte, answers 201 ----
mkdir -p "$WORK/www"
python3 -c 'import sys; sys.stdout.write(("copyist-bench-" * 80)[:1024])' >"$WORK/www/1k"
: >"$WORK/www/upload"
NGINX_USER=""
[ "$(id -u)" = 0 ] && NGINX_USER="user root root;"

nginx_conf() { # dir: common top of an nginx config (one worker, no access log, own temp paths)
  mkdir -p "$1/tmp"
  cat <<EOF
$NGINX_USER
worker_processes 1;
daemon off;
master_process on;
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
  client_max_body_size 2g;
EOF
}

start_nginx() { # name conf-body-file
  local dir=$WORK/$1
  start_svc "$1" nginx -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log"
}

mkdir -p "$WORK/origin"
{
  nginx_conf "$WORK/origin"
  # The origin must consume the whole upload before answering (as a CMS does): `return` alone
  # answers before reading the body. mirror_request_body makes nginx read the whole body in the
  # precontent phase; the static handler then refuses POST with 405, which error_page turns into
  # a 201 whose body says how many request bytes were read.
  cat <<EOF
  sendfile on;
  server {
    listen 127.0.0.1:$P_ORIGIN backlog=4096;
    root $WORK/www;
    location = /1k { default_type application/octet-stream; }
    location = /upload {
      mirror /_drop;
      mirror_request_body on;
      error_page 405 =201 @created;
    }
    location = /_drop { internal; return 204; }
    location @created { default_type text/plain; return 201 "read \$request_length\n"; }
  }
}
EOF
} >"$WORK/origin/nginx.conf"

proxy_nginx_conf() { # name port
  mkdir -p "$WORK/$1"
  {
    nginx_conf "$WORK/$1"
    cat <<EOF
  upstream origin {
    server 127.0.0.1:$P_ORIGIN;
    keepalive 64;
    keepalive_requests 1000000;
  }
  server {
    listen 127.0.0.1:$2 backlog=4096;
    location / {
      proxy_pass http://origin;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host \$http_host;
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto \$scheme;
      proxy_set_header X-Forwarded-Host \$host;
      proxy_read_timeout 300s;
      proxy_send_timeout 300s;
    }
  }
}
EOF
  } >"$WORK/$1/nginx.conf"
}

copyist_conf() { # name public-port admin-port
  mkdir -p "$WORK/$1"
  cat >"$WORK/$1/proxy.toml" <<EOF
[node]
name = "bench"
role = "writer"
data_dir = "$WORK/$1/data"

[public]
listen = "127.0.0.1:$2"
max_body_bytes = "2GiB"

[origin]
url = "http://127.0.0.1:$P_ORIGIN"
response_timeout = "300s"

[admin]
listen = "127.0.0.1:$3"
EOF
}

start_copyist() { # name public-port admin-port [wrapper...]
  local name=$1 port=$2 admin=$3; shift 3
  copyist_conf "$name" "$port" "$admin"
  start_svc "$name" "$@" "$COPYIST" run -c "$WORK/$name/proxy.toml"
  wait_http "http://127.0.0.1:$admin/liveness" "$name"
  wait_http "http://127.0.0.1:$port/1k" "$name"
}

cpu_busy() { # percent of all CPUs busy over one second (anything running, this script included)
  local a b
  a=$(awk '/^cpu / {print $2 + $3 + $4 + $7 + $8, $5 + $6}' /proc/stat); sleep 1
  b=$(awk '/^cpu / {print $2 + $3 + $4 + $7 + $8, $5 + $6}' /proc/stat)
  awk -v a="$a" -v b="$b" 'BEGIN {split(a, x, " "); split(b, y, " "); busy = y[1] - x[1]; idle = y[2] - x[2]
    printf "%.0f", 100 * busy / (busy + idle)}'
}
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
start_nginx origin
wait_http "http://127.0.0.1:$P_ORIGIN/1k" origin
proxy_nginx_conf nginx "$P_NGINX"
start_nginx nginx
wait_http "http://127.0.0.1:$P_NGINX/1k" nginx
start_copyist copyist "$P_COPYIST" "$P_ADMIN"

declare -A URL=(
  [direct]="http://127.0.0.1:$P_ORIGIN"
  [nginx]="http://127.0.0.1:$P_NGINX"
  [copyist]="http://127.0.0.1:$P_COPYIST"
)

# --- measurement helpers ------------------------------------------------------------------
declare -A R=()    # "metric.target" -> space-separated samples
add() { R[$1]="${R[$1]:-} $2"; }
median() { # samples...: median, or empty
  [ $# -gt 0 ] || return 0
  printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'
}
med() { median ${R[$1]:-}; }
last() { local v=(${R[$1]:-}); echo "${v[-1]}"; }
calc() { awk "BEGIN {printf \"%.6g\", $1}"; }
ERRORS=""

# run_wrk target conns method body-bytes path seconds: sets WRK_RPS and WRK_P50 (us)
WRK_RPS="" WRK_P50="" WRK_REQS=""
run_wrk() {
  local target=$1 conns=$2 method=$3 bytes=$4 path=$5 secs=$6 out line f
  local -A kv=()
  out=$(BENCH_METHOD=$method BENCH_BODY_BYTES=$bytes timeout $((secs + 60)) "${PIN_LOAD[@]}" \
    wrk -t1 -c"$conns" -d"${secs}s" --latency -s "$ROOT/scripts/bench/wrk.lua" "${URL[$target]}$path" \
    2>&1) || die "wrk failed against $target: $out"
  line=$(grep '^BENCH ' <<<"$out") || die "no summary from wrk: $out"
  for f in ${line#BENCH }; do kv[${f%%=*}]=${f#*=}; done
  if [ "${kv[errors]}" != 0 ] || [ "${kv[status_errors]}" != 0 ]; then
    ERRORS+="- $target $method ${bytes}B x$conns: ${kv[errors]} socket errors, ${kv[status_errors]} non-2xx/3xx"$'\n'
  fi
  WRK_RPS=$(awk -v r="${kv[requests]}" -v d="${kv[duration_us]}" 'BEGIN {printf "%.1f", r / (d / 1e6)}')
  WRK_P50=${kv[p50_us]}
  WRK_REQS=${kv[requests]}
}

# CPU time of the process serving a target: the origin's or nginx's worker(s), or copyist.
CLK_TCK=$(getconf CLK_TCK)
serving_pids() { # target
  case $1 in
    direct) ps -o pid= --ppid "${SVC[origin]}" ;;
    nginx) ps -o pid= --ppid "${SVC[nginx]}" ;;
    copyist) echo "${SVC[copyist]}" ;;
  esac
}
cpu_ticks() { # pids...: utime + stime (all threads), in clock ticks
  local p sum=0
  for p in "$@"; do sum=$((sum + $(sed 's/.*) //' "/proc/$p/stat" | awk '{print $12 + $13}'))); done
  echo "$sum"
}

order() { # repeat-index: interleave, alternating which proxy goes first
  if [ $(($1 % 2)) = 0 ]; then echo "direct nginx copyist"; else echo "direct copyist nginx"; fi
}

# One fdatasync (and one sync_file_range, as sled's flush does) on the same disk, right after
# each captured-POST run so that it sees the same disk weather: medians in us, stored in R.
probe_sync() {
  local f s
  read -r f s <<<"$("${PIN_SVC[@]}" python3 - "$WORK/fdatasync.probe" "$FDATASYNC_N" <<'PY2'
import ctypes, os, statistics, sys, time
libc = ctypes.CDLL(None, use_errno=True)
libc.sync_file_range.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
buf, n = b"x" * 4096, int(sys.argv[2])
def median_us(sync):
    samples = []
    for _ in range(n):
        t = time.perf_counter(); off = os.lseek(fd, 0, os.SEEK_END); os.write(fd, buf); sync(off)
        samples.append((time.perf_counter() - t) * 1e6)
    return round(statistics.median(samples))
fdatasync = median_us(lambda off: os.fdatasync(fd))
# sync_file_range(WAIT_BEFORE | WRITE | WAIT_AFTER) over the bytes just written
sfr = median_us(lambda off: libc.sync_file_range(fd, off, len(buf), 1 | 2 | 4))
print(fdatasync, sfr)
PY2
)"
  [ -n "${s:-}" ] || die "fdatasync probe failed"
  add probe.fdatasync "$f"; add probe.sfr "$s"
  say "probe: fdatasync $f us, sync_file_range $s us"
}

scenario() { # key conns method bytes path [hook run after each copyist run]
  local key=$1 conns=$2 method=$3 bytes=$4 path=$5 hook=${6:-} t i pids before cpu
  for t in direct nginx copyist; do run_wrk "$t" "$conns" "$method" "$bytes" "$path" 1; done
  for ((i = 0; i < REPEATS; i++)); do
    for t in $(order "$i"); do
      pids=$(serving_pids "$t")
      before=$(cpu_ticks $pids)
      run_wrk "$t" "$conns" "$method" "$bytes" "$path" "$DUR"
      cpu=$(awk -v t=$(($(cpu_ticks $pids) - before)) -v hz="$CLK_TCK" -v n="$WRK_REQS" \
        'BEGIN {printf "%.2f", t / hz * 1e6 / n}')
      add "$key.rps.$t" "$WRK_RPS"; add "$key.p50.$t" "$WRK_P50"; add "$key.cpu.$t" "$cpu"
      say "$key $t run $((i + 1))/$REPEATS: $WRK_RPS req/s, p50 $WRK_P50 us, $cpu us CPU/request"
      if [ "$t" = copyist ] && [ -n "$hook" ]; then "$hook"; fi
    done
    # the ratio of this repeat's pair: robust to load that drifts between repeats
    add "$key.ratio" "$(calc "$(last "$key.rps.copyist") / $(last "$key.rps.nginx")")"
  done
}

# --- 5a/b/c. throughput and latency ---------------------------------------------------------
say "a. GET 1 KiB, $CONNS connections, ${DUR}s x $REPEATS"
scenario a "$CONNS" GET 0 /1k
say "b. GET 1 KiB, 1 connection"
scenario b 1 GET 0 /1k
say "c. POST $POST_BYTES B, 1 connection (captured by copyist)"
scenario c 1 POST "$POST_BYTES" /upload probe_sync
FDATASYNC_US=$(med probe.fdatasync) SFR_US=$(med probe.sfr)

# --- 5f. steady RSS after the load (main instances) ------------------------------------------
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
hwm_kib() { awk '/^VmHWM:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
group_rss_kib() { # pid: sum of VmRSS over the process and its children (nginx master + workers)
  local sum=0 p
  for p in "$1" $(ps -o pid= --ppid "$1"); do sum=$((sum + $(rss_kib "$p"))); done
  echo "$sum"
}
sleep 1
STEADY_NGINX=$(group_rss_kib "${SVC[nginx]}")
STEADY_COPYIST=$(rss_kib "${SVC[copyist]}")
say "steady RSS: nginx (all processes) ${STEADY_NGINX} KiB, copyist ${STEADY_COPYIST} KiB"

# --- 5d. fsyncs per captured write, counted by strace --------------------------------------
post_loop() { # port n bytes unique: n sequential POSTs, prints "start end ok" (epoch seconds)
  "${PIN_LOAD[@]}" python3 - "$@" <<'PY'
import http.client, sys, time
port, n, size, unique = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1"
conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
ok, start = 0, time.time()
for i in range(n):
    body = b"%012d-%f-" % (i, start) if unique else b""
    body += b"x" * (size - len(body))
    conn.request("POST", "/upload", body, {"Content-Type": "application/octet-stream"})
    r = conn.getresponse(); r.read()
    ok += r.status == 201 and r.getheader("X-Copyist-Seq") is not None
print(start, time.time(), ok)
PY
}
FSYNC_SMALL="" FSYNC_BLOB="" FSYNC_BG_SMALL="" FSYNC_BG_BLOB="" SFR_SMALL="" SFR_BLOB=""
if [ "$HAVE_STRACE" = 1 ]; then
  say "d. fsync/fdatasync per captured write under strace ($FSYNC_N x $POST_BYTES B, $FSYNC_N x $BLOB_BYTES B)"
  start_copyist straced "$P_SCOPYIST" "$P_SADMIN" \
    strace -f -qq -ttt -e trace=fsync,fdatasync,sync_file_range -o "$WORK/strace.txt"
  post_loop "$P_SCOPYIST" 10 "$POST_BYTES" 1 >/dev/null   # warm-up: sled creates its files
  read -r s1 e1 ok1 <<<"$(post_loop "$P_SCOPYIST" "$FSYNC_N" "$POST_BYTES" 1)"
  read -r s2 e2 ok2 <<<"$(post_loop "$P_SCOPYIST" "$FSYNC_N" "$BLOB_BYTES" 1)"
  # Name every thread, so that sled's periodic "log flusher" (an fsync every 500 ms, off the
  # request path) is reported apart from the fsyncs a request waits for.
  cp_pid=$(ps -o pid= --ppid "${SVC[straced]}" | awk 'NR == 1 {print $1}')
  for t in /proc/"$cp_pid"/task/*; do
    printf '%s %s\n' "${t##*/}" "$(tr ' ' _ <"$t/comm")"
  done >"$WORK/strace.threads" 2>/dev/null || true
  stop_svc straced
  [ -n "${ok1:-}" ] && [ -n "${ok2:-}" ] || die "POST loop against the straced copyist failed"
  [ "$ok1" = "$FSYNC_N" ] && [ "$ok2" = "$FSYNC_N" ] || ERRORS+="- strace run: only $ok1 and $ok2 of $FSYNC_N POSTs answered 201 with X-Copyist-Seq"$'\n'
  per_write() { # start end regex fg|bg: syscalls started inside the window, per write
    awk -v s="$1" -v e="$2" -v re="$3" -v want="$4" -v n="$FSYNC_N" -v tf="$WORK/strace.threads" '
      BEGIN { while ((getline l < tf) > 0) { split(l, a, " "); if (a[2] == "log_flusher") bg[a[1]] = 1 } }
      $2 >= s && $2 <= e && $3 ~ re && ((want == "bg") == ($1 in bg)) {c++}
      END {printf "%.2f", c / n}' "$WORK/strace.txt"
  }
  SYNC_RE='^(fsync|fdatasync)\('
  FSYNC_SMALL=$(per_write "$s1" "$e1" "$SYNC_RE" fg)
  FSYNC_BLOB=$(per_write "$s2" "$e2" "$SYNC_RE" fg)
  FSYNC_BG_SMALL=$(per_write "$s1" "$e1" "$SYNC_RE" bg)
  FSYNC_BG_BLOB=$(per_write "$s2" "$e2" "$SYNC_RE" bg)
  SFR_SMALL=$(per_write "$s1" "$e1" '^sync_file_range\(' fg)
  SFR_BLOB=$(per_write "$s2" "$e2" '^sync_file_range\(' fg)
  say "fsync+fdatasync per write: $FSYNC_SMALL (inline), $FSYNC_BLOB (blob); background $FSYNC_BG_SMALL, $FSYNC_BG_BLOB; sync_file_range: $SFR_SMALL, $SFR_BLOB"
else
  say "d. skipped: strace missing or not permitted"
fi

# --- 5e. large uploads: fresh proxy per run, wall time and peak RSS ---------------------------
make_upload() { # path bytes: a 1 MiB pseudo-random block (seed 1) repeated
  python3 - "$1" "$2" <<'PY'
import random, sys
block = random.Random(1).randbytes(1 << 20)
with open(sys.argv[1], "wb") as f:
    for _ in range(int(sys.argv[2]) >> 20): f.write(block)
PY
}
upload_once() { # target size-label file bytes
  local target=$1 label=$2 file=$3 bytes=$4 url pid="" out hwm=""
  case $target in
    direct) url="http://127.0.0.1:$P_ORIGIN" ;;
    nginx)
      proxy_nginx_conf upnginx "$P_UNGINX"; start_nginx upnginx
      wait_http "http://127.0.0.1:$P_UNGINX/1k" upnginx
      url="http://127.0.0.1:$P_UNGINX" ;;
    copyist)
      rm -rf "$WORK/upcopyist/data"
      start_copyist upcopyist "$P_UCOPYIST" "$P_UADMIN"
      url="http://127.0.0.1:$P_UCOPYIST" ;;
  esac
  sync
  out=$("${PIN_LOAD[@]}" curl -sS --max-time 600 -o "$WORK/upload.body" -w '%{http_code} %{time_total}' \
    -T "$file" -X POST -H 'Expect:' -H 'Content-Type: application/octet-stream' "$url/upload") \
    || die "upload through $target failed: $out"
  read -r code secs <<<"$out"
  local read_bytes; read_bytes=$(awk '{print $2}' "$WORK/upload.body")
  if [ "$code" != 201 ] || [ "${read_bytes:-0}" -lt "$bytes" ]; then
    ERRORS+="- upload $label via $target: HTTP $code, origin read ${read_bytes:-?} bytes"$'\n'
  fi
  case $target in
    nginx) # the worker handles the request; the master only forks it
      for pid in $(ps -o pid= --ppid "${SVC[upnginx]}"); do hwm=$(hwm_kib "$pid"); done
      stop_svc upnginx ;;
    copyist) hwm=$(hwm_kib "${SVC[upcopyist]}"); stop_svc upcopyist; rm -rf "$WORK/upcopyist/data" ;;
  esac
  add "e$label.secs.$target" "$secs"
  [ -n "$hwm" ] && add "e$label.hwm.$target" "$hwm"
  say "upload $label via $target: HTTP $code in ${secs}s, peak RSS ${hwm:-n/a} KiB"
}
SIZES="64M"
[ "$BIG" = 1 ] && SIZES="64M 1G"
for label in $SIZES; do
  case $label in 64M) bytes=$((64 << 20)) ;; 1G) bytes=$((1 << 30)) ;; esac
  say "e. upload $label, fresh proxy per run"
  make_upload "$WORK/upload.$label" "$bytes"
  for ((i = 0; i < REPEATS; i++)); do
    for t in $(order "$i"); do upload_once "$t" "$label" "$WORK/upload.$label" "$bytes"; done
  done
  rm -f "$WORK/upload.$label"
done

# --- 6. report ------------------------------------------------------------------------------
f0() { [ -n "$1" ] && awk -v x="$1" 'BEGIN {printf "%.0f", x}' || printf 'n/a'; }
fs() { [ -n "$1" ] && awk -v x="$1" 'BEGIN {printf "%+.0f", x}' || printf 'n/a'; }
f2() { [ -n "$1" ] && awk -v x="$1" 'BEGIN {printf "%.2f", x}' || printf 'n/a'; }
mib() { [ -n "$1" ] && awk -v x="$1" 'BEGIN {printf "%.1f MiB", x / 1024}' || printf 'n/a'; }
verdict() { [ "$1" = 1 ] && printf 'met' || printf '**MISSED**'; }

a_d=$(med a.rps.direct) a_n=$(med a.rps.nginx) a_c=$(med a.rps.copyist)
a_ratio=$(med a.ratio)
b_d=$(med b.p50.direct) b_n=$(med b.p50.nginx) b_c=$(med b.p50.copyist)
b_rd=$(med b.rps.direct) b_rn=$(med b.rps.nginx) b_rc=$(med b.rps.copyist)
c_d=$(med c.p50.direct) c_n=$(med c.p50.nginx) c_c=$(med c.p50.copyist)
c_rd=$(med c.rps.direct) c_rn=$(med c.rps.nginx) c_rc=$(med c.rps.copyist)
c_extra=$(calc "$c_c - $c_n")
c_syncs=$(calc "$c_extra / $FDATASYNC_US")
# What the counted syscalls should cost if each took as long as the probe's median.
c_model=$(calc "${FSYNC_SMALL:-2} * $FDATASYNC_US + ${SFR_SMALL:-0} * $SFR_US")

rows=()
rows+=("| a. GET 1 KiB, $CONNS conns: req/s | $(f0 "$a_d") | $(f0 "$a_n") | $(f0 "$a_c") | copyist/nginx $(f2 "$a_ratio"), median of paired runs (target ≥ 0.90: $(verdict "$(awk -v r="$a_ratio" 'BEGIN {print (r >= 0.9)}')")) |")
rows+=("| a. CPU per request (user+sys) of the origin (direct) / the proxy | $(f2 "$(med a.cpu.direct)") µs | $(f2 "$(med a.cpu.nginx)") µs | $(f2 "$(med a.cpu.copyist)") µs | copyist/nginx $(f2 "$(calc "$(med a.cpu.copyist) / $(med a.cpu.nginx)")") |")
rows+=("| b. GET 1 KiB, 1 conn: p50 latency | $(f0 "$b_d") µs | $(f0 "$b_n") µs ($(fs "$(calc "$b_n - $b_d")")) | $(f0 "$b_c") µs ($(fs "$(calc "$b_c - $b_d")")) | added latency, copyist − nginx: $(fs "$(calc "$b_c - $b_n")") µs |")
rows+=("| b. GET 1 KiB, 1 conn: req/s | $(f0 "$b_rd") | $(f0 "$b_rn") | $(f0 "$b_rc") | copyist/nginx $(f2 "$(calc "$b_rc / $b_rn")") |")
rows+=("| c. POST 4 KiB, 1 conn: p50 latency | $(f0 "$c_d") µs | $(f0 "$c_n") µs | $(f0 "$c_c") µs | copyist − nginx = $(f0 "$c_extra") µs ≈ $(f2 "$c_syncs") × one fdatasync (${FSYNC_SMALL:-2} fdatasync + ${SFR_SMALL:-?} sync_file_range ≈ $(f0 "$c_model") µs) |")
rows+=("| c. CPU per request (user+sys) of the origin (direct) / the proxy | $(f2 "$(med c.cpu.direct)") µs | $(f2 "$(med c.cpu.nginx)") µs | $(f2 "$(med c.cpu.copyist)") µs | copyist/nginx $(f2 "$(calc "$(med c.cpu.copyist) / $(med c.cpu.nginx)")") |")
rows+=("| c. POST 4 KiB, 1 conn: req/s | $(f0 "$c_rd") | $(f0 "$c_rn") | $(f0 "$c_rc") | copyist/nginx $(f2 "$(calc "$c_rc / $c_rn")") |")
rows+=("| c. one fdatasync (4 KiB append, same disk, after each copyist run, median) | | | | $FDATASYNC_US µs (per probe: $(echo ${R[probe.fdatasync]})) |")
rows+=("| c. one sync_file_range WAIT_BEFORE+WRITE+WAIT_AFTER (4 KiB append, as sled's flush does) | | | | $SFR_US µs |")
if [ -n "$FSYNC_SMALL" ]; then
  rows+=("| d. fsync+fdatasync per captured 4 KiB write (inline, $FSYNC_N POSTs) | | | $FSYNC_SMALL | target ≤ 2: $(verdict "$(awk -v r="$FSYNC_SMALL" 'BEGIN {print (r <= 2)}')") |")
  rows+=("| d. fsync+fdatasync per captured 64 KiB write (blob store) | | | $FSYNC_BLOB | informational: blob file + its directory + 2 log commits |")
  rows+=("| d. background fsyncs per write (sled's 500 ms flusher), 4 KiB / 64 KiB | | | $FSYNC_BG_SMALL / $FSYNC_BG_BLOB | not on the request path |")
  rows+=("| d. sync_file_range per captured write (sled flush), 4 KiB / 64 KiB | | | $SFR_SMALL / $SFR_BLOB | informational (waits for writeback, no cache flush) |")
else
  rows+=("| d. fsync+fdatasync per captured write | | | n/a | strace unavailable |")
fi
for label in $SIZES; do
  sd=$(med "e$label.secs.direct") sn=$(med "e$label.secs.nginx") sc=$(med "e$label.secs.copyist")
  hn=$(med "e$label.hwm.nginx") hc=$(med "e$label.hwm.copyist")
  name=${label/M/ MiB}; name=${name/G/ GiB}
  rows+=("| e. upload $name: wall time | $(f2 "$sd") s | $(f2 "$sn") s | $(f2 "$sc") s | copyist/nginx $(f2 "$(calc "$sc / $sn")") |")
  target=""
  [ "$label" = 1G ] && target=" (target < 64 MiB: $(verdict "$(awk -v h="$hc" 'BEGIN {print (h < 65536)}')"))"
  rows+=("| e. upload $name: peak RSS (VmHWM) | | $(mib "$hn") (worker) | $(mib "$hc") | copyist$target |")
done
rows+=("| f. steady RSS after a–c | | $(mib "$STEADY_NGINX") (all processes) | $(mib "$STEADY_COPYIST") | copyist includes sled's page cache (cache_capacity 64 MiB) |")

LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)
CPU_MODEL=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)
REPORT=$(
  cat <<EOF
# copyist benchmark

- date: $(date -u '+%Y-%m-%d %H:%M UTC')
- machine: $NCPU CPUs, $CPU_MODEL, $(awk '/MemTotal/ {printf "%.0f GiB RAM", $2 / 1048576}' /proc/meminfo), kernel $(uname -r), temp dir on $(findmnt -no FSTYPE -T "$WORK" 2>/dev/null || echo '?')
- versions: $COPYIST_VERSION ($GIT_REV), $(nginx -v 2>&1 | sed 's/^nginx version: //'), wrk $(wrk -v 2>&1 | awk 'NR == 1 {print $2}'), $(curl --version | awk 'NR == 1 {print $1, $2}'), $(rustc --version | awk '{print $1, $2}')
- other load: CPUs ${BUSY_BEFORE}% busy in the second before the run; load average $LOAD_BEFORE before, $LOAD_AFTER after
- run: ${DUR}s per measurement, $REPEATS repeat(s), medians; nginx and copyist interleaved; 1 s warm-up per target
- pinning: $PINNING; so all of copyist's threads share CPU 0 (tokio sizes its pool from the affinity mask), nginx runs 1 worker process
- origin: nginx, static 1 KiB file for GET /1k; POST /upload reads the whole body (mirror_request_body) then answers 201
- copyist: defaults (proxy.toml.example) but max_body_bytes 2GiB and origin response_timeout 300s; log level info (no per-request lines)
- nginx proxy: proxy_pass to an upstream with keepalive 64, HTTP/1.1, default request buffering, access_log off
- uploads: one 1 MiB pseudo-random block repeated, sent with curl -T; a fresh proxy per upload (copyist with an empty data_dir, so no dedup), \`sync\` before each

| scenario | direct | nginx | copyist | ratio / target |
|---|---|---|---|---|
$(printf '%s\n' "${rows[@]}")
EOF
  if [ -n "$ERRORS" ]; then printf '\nErrors seen during the run:\n%s' "$ERRORS"; fi
)
mkdir -p "$ROOT/target/bench"
printf '%s\n' "$REPORT" | tee "$ROOT/target/bench/results.md"
say "written to target/bench/results.md"
