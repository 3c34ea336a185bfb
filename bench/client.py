"""A minimal HTTP/1.1 keep-alive client on raw asyncio streams, and the closed-loop load generator built on
it (the fallback when wrk is not installed: ``python -m bench.client``, same arguments and output
as ``wrk.lua`` beside this module). httpx would spend more CPU per request than the service does."""

import argparse
import asyncio
import contextlib
import itertools
import random
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path

import msgspec

from .stats import LoadResult, summarize


class Connection:
    """One keep-alive connection: one request at a time, as one worker's client holds it."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, host: str, port: int) -> "Connection":
        return cls(*await asyncio.open_connection(host, port, limit=2**24))

    def send(self, method: str, path: str, body: bytes | None = None, extra: str = "") -> None:
        """``extra``: more header lines, each ending in CRLF."""
        head = f"{method} {path} HTTP/1.1\r\nHost: bench\r\n{extra}"
        if body is not None:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        self.writer.write(head.encode() + b"\r\n" + (body or b""))

    async def receive(self) -> tuple[int, bytes]:
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.lower() == b"content-length":
                length = int(value)
        return status, await self.reader.readexactly(length)

    async def request(
        self, method: str, path: str, body: bytes | None = None, extra: str = ""
    ) -> tuple[int, bytes]:
        self.send(method, path, body, extra)
        return await self.receive()

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


class _Task(msgspec.Struct):
    id: int
    worker_id: str | None


_decode_task = msgspec.json.Decoder(_Task).decode


def _requests(mode: str, params: Sequence[str]) -> Iterator[tuple[str, str, bytes | None, str]]:
    """What wrk.lua sends in each mode (method, path, body, more header lines); ids are shared by all
    connections of this one process."""
    if mode == "healthz":
        yield from itertools.repeat(("GET", "/healthz", None, ""))
    elif mode == "dispatch":
        wait = params[0] if params else "0"
        extra = f',"wait_seconds":{wait}' if wait != "0" else ""
        for n in itertools.count(1):
            yield "POST", "/dispatch/next", f'{{"worker_id":"w0-{n}"{extra}}}'.encode(), ""
    elif mode == "dispatch_near":
        # Vans at random places in the Bay Area's bounding box (bench.sql's stations are there too).
        rng = random.Random(0)
        for n in itertools.count(1):
            lat, lon = rng.uniform(37.2, 37.9), rng.uniform(-122.55, -121.7)
            yield (
                "POST",
                "/dispatch/next",
                f'{{"worker_id":"w0-{n}","lat":{lat:.5f},"lon":{lon:.5f}}}'.encode(),
                "",
            )
    elif mode == "dispatch_auth":
        keys = Path(params[0]).read_text().split()
        for key in itertools.cycle(keys):
            yield "POST", "/dispatch/next", b"{}", f"Authorization: Bearer {key}\r\n"
    else:
        first, last = int(params[0]), int(params[1])
        size = int(params[2]) if len(params) > 2 else 1
        for start in range(first, last + 1, size):
            if mode == "approve":
                yield "POST", "/task/approve", b'{"suggestion_id":%d}' % start, ""
            elif mode == "approve_many":
                ids = ",".join(map(str, range(start, min(start + size, last + 1))))
                yield "POST", "/tasks/approve", f'{{"suggestion_ids":[{ids}]}}'.encode(), ""
            elif mode == "complete":
                yield "POST", f"/task/{start}/complete", b"{}", ""
            else:
                raise ValueError(f"unknown mode {mode}")


async def closed_loop(
    host: str, port: int, mode: str, connections: int, duration: float, params: Sequence[str]
) -> tuple[LoadResult, list[str]]:
    """``connections`` clients, each sending its next request when the previous answer arrived."""
    requests = _requests(mode, params)
    statuses: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    latencies: list[float] = []
    seen: list[str] = []
    deadline = time.monotonic() + duration

    async def client() -> None:
        try:
            conn = await Connection.open(host, port)
        except OSError:
            errors["connect"] += 1
            return
        try:
            for method, path, body, extra in requests:
                if time.monotonic() >= deadline:
                    return
                start = time.perf_counter()
                try:
                    status, payload = await conn.request(method, path, body, extra)
                except (OSError, asyncio.IncompleteReadError):
                    errors["read"] += 1
                    return
                latencies.append(time.perf_counter() - start)
                statuses[str(status)] += 1
                if status == 200 and mode in ("dispatch", "dispatch_near", "dispatch_auth"):
                    task = _decode_task(payload)
                    seen.append(f"{task.id} {task.worker_id}\n")
        finally:
            await conn.close()

    started = time.monotonic()
    await asyncio.gather(*(client() for _ in range(connections)))
    elapsed = time.monotonic() - started
    return summarize(latencies, statuses, errors, elapsed), seen


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.client", description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--connections", type=int, required=True)
    parser.add_argument("--duration", type=float, required=True)
    parser.add_argument("mode")
    parser.add_argument("out", type=Path)
    parser.add_argument("params", nargs="*")
    args = parser.parse_args(argv)
    import uvloop

    result, seen = uvloop.run(
        closed_loop("127.0.0.1", args.port, args.mode, args.connections, args.duration, args.params)
    )
    if args.mode in ("dispatch", "dispatch_near", "dispatch_auth"):
        Path(f"{args.out}.ids.0").write_text("".join(seen))
    args.out.write_bytes(msgspec.json.encode(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
