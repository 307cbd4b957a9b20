#!/usr/bin/env python3
"""Client side of scripts/bench-replication.sh. Every subcommand prints one line of
space-separated key=value pairs on stdout (the script parses nothing else) and exits non-zero
on failure.

  push     N captured writes into the writer (C connections), each must answer 201 with
           X-Copyist-Seq
  drain    run the resume command, then poll the mirror's admin status every POLL ms until its
           applied_seq reaches the writer's last_seq: how long replaying the backlog took
  latency  writes at a fixed rate on one connection while another thread polls the mirror's
           applied_seq every POLL ms; per write, the time from the writer's answer until the
           mirror's applied_seq covered it
  cms      the CMS time (duration_us of mirror_outcome) a mirror recorded for entries FIRST..LAST
  rtt      round-trip time of GET PATH on one keep-alive connection (to measure the delay proxy)
  fsync    median cost of one fdatasync / sync_file_range of a 4 KiB append to FILE (as bench.sh)

Times use time.perf_counter() within one process; polls are timed at the middle of the poll
request, so a latency is an upper bound with an error under one poll interval.
"""

import argparse
import ctypes
import http.client
import json
import math
import os
import statistics
import subprocess
import sys
import threading
import time


def pct(values, q):
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    s = sorted(values)
    return s[max(0, min(len(s) - 1, math.ceil(q / 100 * len(s)) - 1))]


def out(**kv):
    print(" ".join(f"{k}={v}" for k, v in kv.items()), flush=True)


def body_of(i, size, tag):
    b = b"item=%08d&tag=%s&text=" % (i, tag.encode())
    return b + b"x" * max(0, size - len(b))


def post(conn, path, body):
    conn.request("POST", path, body, {"Content-Type": "application/x-www-form-urlencoded"})
    r = conn.getresponse()
    r.read()
    seq = r.getheader("X-Copyist-Seq")
    return r.status, int(seq) if seq else None


class Admin:
    """GET /api/v1/status on a node's admin listener, on one keep-alive connection."""

    def __init__(self, port):
        self.port = port
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)

    def status(self):
        for attempt in (1, 2):
            try:
                self.conn.request("GET", "/api/v1/status")
                r = self.conn.getresponse()
                data = r.read()
                if r.status != 200:
                    raise RuntimeError(f"admin :{self.port} answered {r.status}: {data[:200]!r}")
                return json.loads(data)
            except (http.client.HTTPException, ConnectionError):
                self.conn.close()
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
                if attempt == 2:
                    raise


def cmd_push(a):
    lock = threading.Lock()
    state = {"next": 0, "ok": 0, "bad": [], "seqs": []}
    tag = "push%d" % int(time.time())

    def worker():
        conn = http.client.HTTPConnection("127.0.0.1", a.port, timeout=120)
        while True:
            with lock:
                i = state["next"]
                if i >= a.n:
                    return
                state["next"] += 1
            status, seq = post(conn, a.path, body_of(i, a.bytes, tag))
            with lock:
                if status == 201 and seq is not None:
                    state["ok"] += 1
                    state["seqs"].append(seq)
                elif len(state["bad"]) < 5:
                    state["bad"].append(status)

    start = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(a.conns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    secs = time.perf_counter() - start
    seqs = state["seqs"]
    out(ok=state["ok"], n=a.n, secs=f"{secs:.3f}", rate=f"{state['ok'] / secs:.1f}",
        first=min(seqs) if seqs else 0, last=max(seqs) if seqs else 0,
        bad=",".join(map(str, state["bad"])) or "none")
    return 0 if state["ok"] == a.n else 1


def cmd_drain(a):
    mirror, writer = Admin(a.mirror_admin), Admin(a.writer_admin)
    w = writer.status()
    target = w["last_seq"]
    before = mirror.status()["applied_seq"]
    period = a.poll_ms / 1000
    start = time.perf_counter()
    subprocess.run(a.resume, check=True, stdout=subprocess.DEVNULL)
    resumed = time.perf_counter()
    first = None
    applied = before
    deadline = start + a.timeout
    while True:
        t0 = time.perf_counter()
        m = mirror.status()
        t1 = time.perf_counter()
        applied = m["applied_seq"]
        if m.get("halt"):
            out(error="halted", halt=json.dumps(m["halt"]).replace(" ", ""))
            return 1
        if first is None and applied > before:
            first = (t0 + t1) / 2 - start
        if applied >= target:
            done = (t0 + t1) / 2 - start
            break
        if t1 > deadline:
            done = t1 - start
            break
        time.sleep(max(0.0, t0 + period - time.perf_counter()))
    n = applied - before
    out(n=n, want=target - before, from_seq=before, to_seq=applied, secs=f"{done:.3f}",
        rate=f"{n / done:.1f}", first_apply_ms=f"{(first or 0) * 1000:.1f}",
        resume_cmd_ms=f"{(resumed - start) * 1000:.1f}", timed_out=int(applied < target))
    return 0 if applied >= target else 1


def cmd_latency(a):
    mirror = Admin(a.mirror_admin)
    before = mirror.status()["applied_seq"]
    answers = {}  # seq -> perf_counter time the writer's answer was read
    polls = []  # (time, applied_seq)
    failures = []
    sending = threading.Event()
    sending.set()
    tag = "lat%d" % int(time.time())
    count = int(a.rate * a.seconds)

    def sender():
        conn = http.client.HTTPConnection("127.0.0.1", a.port, timeout=60)
        start = time.perf_counter()
        try:
            for i in range(count):
                due = start + i / a.rate
                pause = due - time.perf_counter()
                if pause > 0:
                    time.sleep(pause)
                status, seq = post(conn, a.path, body_of(i, a.bytes, tag))
                t = time.perf_counter()
                if status == 201 and seq is not None:
                    answers[seq] = t
                else:
                    failures.append(status)
        finally:
            sending.clear()

    def poller():
        period = a.poll_ms / 1000
        deadline = None
        while True:
            t0 = time.perf_counter()
            m = mirror.status()
            t1 = time.perf_counter()
            polls.append(((t0 + t1) / 2, m["applied_seq"]))
            if m.get("halt"):
                return
            if not sending.is_set():
                if deadline is None:
                    deadline = t1 + a.settle
                last = max(answers) if answers else before
                if m["applied_seq"] >= last or t1 > deadline:
                    return
            time.sleep(max(0.0, t0 + period - time.perf_counter()))

    threads = [threading.Thread(target=poller), threading.Thread(target=sender)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    lat, missing = [], 0
    i = 0
    for seq in sorted(answers):
        while i < len(polls) and polls[i][1] < seq:
            i += 1
        if i == len(polls):
            missing += 1
            continue
        lat.append((polls[i][0] - answers[seq]) * 1000)
    gaps = [(polls[k + 1][0] - polls[k][0]) * 1000 for k in range(len(polls) - 1)]
    if not lat:
        out(error="no_latencies", sent=len(answers), failures=len(failures), missing=missing)
        return 1
    if a.dump:
        with open(a.dump, "w") as f:
            json.dump({"latency_ms": lat, "seqs": sorted(answers)}, f)
    out(n=len(lat), sent=count, failures=len(failures), missing=missing,
        first_seq=min(answers), last_seq=max(answers),
        p50_ms=f"{pct(lat, 50):.2f}", p90_ms=f"{pct(lat, 90):.2f}", p99_ms=f"{pct(lat, 99):.2f}",
        max_ms=f"{max(lat):.2f}", min_ms=f"{min(lat):.2f}",
        poll_p50_ms=f"{pct(gaps, 50):.2f}" if gaps else "n/a",
        poll_p99_ms=f"{pct(gaps, 99):.2f}" if gaps else "n/a")
    return 0 if not failures and not missing else 1


def cmd_cms(a):
    conn = http.client.HTTPConnection("127.0.0.1", a.admin, timeout=10)
    us = []
    for seq in range(a.first, a.last + 1):
        conn.request("GET", f"/api/v1/log/{seq}")
        r = conn.getresponse()
        data = r.read()
        if r.status != 200:
            continue
        mo = json.loads(data).get("mirror_outcome")
        if mo:
            us.append(mo["duration_us"])
    if not us:
        out(error="no_mirror_outcomes")
        return 1
    out(n=len(us), p50_us=pct(us, 50), p99_us=pct(us, 99), max_us=max(us))
    return 0


def cmd_rtt(a):
    conn = http.client.HTTPConnection("127.0.0.1", a.port, timeout=10)
    samples = []
    for i in range(a.n + 2):
        t = time.perf_counter()
        conn.request("GET", a.path)
        r = conn.getresponse()
        r.read()
        if i >= 2:  # the first two include the connection set-up
            samples.append((time.perf_counter() - t) * 1000)
        time.sleep(0.005)
    out(n=len(samples), p50_ms=f"{pct(samples, 50):.3f}", p99_ms=f"{pct(samples, 99):.3f}",
        min_ms=f"{min(samples):.3f}")
    return 0


def cmd_fsync(a):
    libc = ctypes.CDLL(None, use_errno=True)
    libc.sync_file_range.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    fd = os.open(a.file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    buf = b"x" * 4096

    def median_us(sync):
        samples = []
        for _ in range(a.n):
            t = time.perf_counter()
            off = os.lseek(fd, 0, os.SEEK_END)
            os.write(fd, buf)
            sync(off)
            samples.append((time.perf_counter() - t) * 1e6)
        return round(statistics.median(samples)), round(pct(samples, 99))

    f50, f99 = median_us(lambda off: os.fdatasync(fd))
    # sync_file_range(WAIT_BEFORE | WRITE | WAIT_AFTER) over the bytes just written
    s50, _ = median_us(lambda off: libc.sync_file_range(fd, off, len(buf), 1 | 2 | 4))
    os.close(fd)
    os.unlink(a.file)
    out(fdatasync_us=f50, fdatasync_p99_us=f99, sfr_us=s50)
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("push")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--path", default="/items")
    p.add_argument("--n", type=int, required=True)
    p.add_argument("--conns", type=int, default=4)
    p.add_argument("--bytes", type=int, default=256)
    p = sub.add_parser("drain")
    p.add_argument("--mirror-admin", type=int, required=True)
    p.add_argument("--writer-admin", type=int, required=True)
    p.add_argument("--poll-ms", type=float, default=2)
    p.add_argument("--timeout", type=float, default=180)
    p.add_argument("resume", nargs="+", help="the command that resumes shipping")
    p = sub.add_parser("latency")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--path", default="/items")
    p.add_argument("--mirror-admin", type=int, required=True)
    p.add_argument("--rate", type=float, default=20)
    p.add_argument("--seconds", type=float, default=10)
    p.add_argument("--bytes", type=int, default=256)
    p.add_argument("--poll-ms", type=float, default=2)
    p.add_argument("--settle", type=float, default=30, help="longest wait after the last write")
    p.add_argument("--dump", help="write every latency to this JSON file")
    p = sub.add_parser("cms")
    p.add_argument("--admin", type=int, required=True)
    p.add_argument("--first", type=int, required=True)
    p.add_argument("--last", type=int, required=True)
    p = sub.add_parser("rtt")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--path", default="/healthz")
    p.add_argument("--n", type=int, default=100)
    p = sub.add_parser("fsync")
    p.add_argument("--file", required=True)
    p.add_argument("--n", type=int, default=100)
    a = ap.parse_args()
    return globals()["cmd_" + a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
