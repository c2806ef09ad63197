"""Minimal keep-alive HTTP/1.1 load client for benchmarks.

httpx spends more CPU per request than the gateway does on a cache hit, so on a 2-core
machine it would measure itself. This client sends a pre-encoded request over N persistent
connections and only parses what it must (status line, Content-Length, chunked ends).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field


@dataclass
class LoadResult:
    latencies_ms: list[float] = field(default_factory=list)
    errors: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    tiers: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


def encode_post(host: str, port: int, path: str, body: bytes,
                headers: dict[str, str] | None = None) -> bytes:
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}:{port}", "Content-Type: application/json",
             f"Content-Length: {len(body)}", "Connection: keep-alive"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding") == "chunked":
        parts = []
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.strip(), 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                break
            parts.append(await reader.readexactly(size))
            await reader.readexactly(2)
        body = b"".join(parts)
    else:
        body = await reader.read()
    return status, headers, body


async def run_load(host: str, port: int, requests: list[bytes], *, concurrency: int,
                   total: int) -> LoadResult:
    """Send ``total`` requests (cycling through ``requests``) over ``concurrency`` connections."""
    result = LoadResult()
    counter = iter(range(total))

    async def worker() -> None:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            for i in counter:
                payload = requests[i % len(requests)]
                t0 = time.perf_counter()
                writer.write(payload)
                status, headers, _ = await _read_response(reader)
                result.latencies_ms.append((time.perf_counter() - t0) * 1000)
                result.statuses[status] = result.statuses.get(status, 0) + 1
                tier = headers.get("x-reprise-cache", "-")
                result.tiers[tier] = result.tiers.get(tier, 0) + 1
                if status != 200:
                    result.errors += 1
        finally:
            writer.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    result.seconds = time.perf_counter() - t0
    return result


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    k = min(len(s) - 1, max(0, round(p / 100 * (len(s) - 1))))
    return s[k]


def server_timing(header: str) -> dict[str, float]:
    """The gateway's ``Server-Timing: exact;dur=0.12, embed;dur=2.3`` as {"exact": 0.12, …}."""
    out = {}
    for part in filter(None, (p.strip() for p in header.split(","))):
        name, _, dur = part.partition(";dur=")
        with contextlib.suppress(ValueError):
            out[name] = float(dur)
    return out
