#!/usr/bin/env python3
"""A fixed number of keep-alive GETs over C connections (for instruction counts under callgrind,
where a fixed-duration load generator like wrk would make the count depend on speed).

    fixed_load.py HOST:PORT PATH CONNECTIONS REQUESTS

Each connection sends its next request when the previous response is complete
(Content-Length framing only, which is what the benchmark's origin sends). Exits non-zero on
any non-200 answer or a closed connection.
"""
import asyncio
import sys


async def worker(host, port, path, count, failures):
    reader, writer = await asyncio.open_connection(host, port)
    request = (f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
               "User-Agent: fixed_load\r\nAccept: */*\r\n\r\n").encode()
    for _ in range(count):
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        if not lines[0].startswith(b"HTTP/1.1 200"):
            failures.append(lines[0])
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        await reader.readexactly(length)
    writer.close()


async def main():
    hostport, path, conns, total = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    host, _, port = hostport.rpartition(":")
    failures = []
    per = [total // conns + (1 if i < total % conns else 0) for i in range(conns)]
    await asyncio.gather(*(worker(host, int(port), path, n, failures) for n in per))
    if failures:
        print(f"{len(failures)} failed: {failures[:3]}", file=sys.stderr)
        sys.exit(1)


asyncio.run(main())
