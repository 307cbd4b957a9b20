#!/usr/bin/env python3
"""A TCP proxy that adds a fixed one-way delay to every chunk, in each direction.

Used by scripts/bench-replication.sh to put a round trip between the writer and a mirror on
loopback, where netem is not available: with --delay-ms 25 each byte reaches the other side
25 ms after the proxy read it, so a request/answer exchange gains 50 ms. It is a pure delay,
not a bandwidth limit: chunks are timestamped when read and written in order once their time
has come, so many chunks can be in flight at once (as on a long, fat link). TLS passes through
untouched (the proxy only sees bytes).

    delay_proxy.py --listen 127.0.0.1:PORT --upstream 127.0.0.1:PORT --delay-ms 25

Prints "ready" on stdout once listening; stops on SIGTERM/SIGINT. On exit (and on SIGUSR1)
prints to stderr how late chunks were written compared with the wanted delay.
"""

import argparse
import asyncio
import signal
import socket
import statistics
import sys

LATE_US = []  # how much later than due each chunk was written, in microseconds (sampled)


def addr(text):
    host, _, port = text.rpartition(":")
    return host, int(port)


def nodelay(writer):
    sock = writer.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass


async def pipe(reader, writer, delay, loop):
    """Copies reader to writer, each chunk `delay` seconds after it was read."""
    queue = asyncio.Queue()

    async def receive():
        try:
            while True:
                data = await reader.read(1 << 16)
                queue.put_nowait((loop.time() + delay, data))
                if not data:
                    return
        except (ConnectionError, OSError):
            queue.put_nowait((loop.time(), None))  # reset: pass it on without delay

    async def send():
        while True:
            due, data = await queue.get()
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if data is None:
                writer.transport.abort()
                return
            if not data:
                if writer.can_write_eof():
                    writer.write_eof()
                return
            if len(LATE_US) < 200000:
                LATE_US.append((loop.time() - due) * 1e6)
            writer.write(data)
            await writer.drain()

    rx = asyncio.ensure_future(receive())
    try:
        await send()
    finally:
        rx.cancel()


async def handle(client_r, client_w, upstream, delay):
    loop = asyncio.get_running_loop()
    try:
        server_r, server_w = await asyncio.open_connection(*upstream)
    except OSError:
        client_w.transport.abort()
        return
    nodelay(client_w)
    nodelay(server_w)
    up = asyncio.ensure_future(pipe(client_r, server_w, delay, loop))
    down = asyncio.ensure_future(pipe(server_r, client_w, delay, loop))
    try:
        await asyncio.gather(up, down)
    except (ConnectionError, OSError, asyncio.CancelledError):
        pass  # a reset, or the proxy stopping: nothing to report
    finally:
        up.cancel()
        down.cancel()
        for w in (client_w, server_w):
            w.close()


def report():
    if LATE_US:
        s = sorted(LATE_US)
        p = lambda q: s[min(len(s) - 1, int(q * len(s)))]
        print(f"delay_proxy: {len(s)} chunks; written late by p50 {p(0.5):.0f} us, "
              f"p99 {p(0.99):.0f} us, max {s[-1]:.0f} us (mean {statistics.fmean(s):.0f} us)",
              file=sys.stderr, flush=True)


async def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--listen", required=True, type=addr)
    ap.add_argument("--upstream", required=True, type=addr)
    ap.add_argument("--delay-ms", required=True, type=float, help="one-way delay per direction")
    args = ap.parse_args()
    delay = args.delay_ms / 1000.0
    server = await asyncio.start_server(
        lambda r, w: handle(r, w, args.upstream, delay), *args.listen, backlog=128)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGUSR1, report)
    print("ready", flush=True)
    async with server:
        await stop.wait()
    report()


if __name__ == "__main__":
    asyncio.run(main())
