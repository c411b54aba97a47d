"""The HTTP server under load, on the loopback only: `python -m deeplab.serve` started here, then N concurrent
clients (a bounded asyncio client on httpx) for a fixed time, with dynamic batching on and off.

    python benchmarks/serve_load.py --checkpoint MODEL --images FOLDER [--clients 16] [--seconds 60]
        [--max-batch 8] [--wait-ms 10] [--workers 1] [--soak 180]

MODEL is anything `checkpoint=` takes (.pt, run folder, model folder, .onnx, OpenVINO .xml); FOLDER holds the
photos the clients send (PNG/JPEG, each request the next one, raw bytes). For batching off (max_batch_size=1)
and on (--max-batch, --wait-ms), the script prints the latency of one client sending one request at a time
(p50, p99) and requests/s, p50, p99 and errors at --clients concurrent clients.
--soak: then --clients clients for that many seconds against the batching server, one request in five bad
(not an image, truncated, too many pixels, an unknown ?output): every good request must get its mask (a PNG of
the photo's size), every bad one its 4xx, and the server's memory (the RSS of all its processes, sampled every
5 s) must stay flat.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from common import describe_machine
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """python -m deeplab.serve in its own process group, stopped by SIGTERM to the group."""

    def __init__(self, checkpoint: str, work: Path, *settings: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(work / f"serve_{self.port}.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "deeplab.serve", f"checkpoint={checkpoint}", f"port={self.port}",
             f"hydra.run.dir={work / str(self.port)}", *settings],
            cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + 300
        while not self.ready():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise SystemExit(f"the server did not start; see {self.log.name}")
            time.sleep(0.5)

    def ready(self) -> bool:
        try:
            return httpx.get(f"{self.url}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def rss_mb(self) -> float:
        """The resident memory of every process of the server's group, in MB."""
        import psutil

        total = 0
        for p in psutil.process_iter(["pid"]):
            try:
                if os.getpgid(p.pid) == self.proc.pid:
                    total += p.memory_info().rss
            except (ProcessLookupError, psutil.Error):
                continue
        return total / 2**20

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        self.proc.wait(timeout=60)
        self.log.close()


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


async def load(url: str, bodies: list[bytes], clients: int, seconds: float) -> dict[str, float]:
    """`clients` clients, each sending its next photo as soon as the previous answer came, for `seconds`."""
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=300, limits=limits) as client:

        async def one_client(k: int) -> None:
            nonlocal errors
            i = k
            while time.perf_counter() < deadline:
                body = bodies[i % len(bodies)]
                i += clients
                tic = time.perf_counter()
                try:
                    r = await client.post(f"{url}/predict", content=body)
                    ok = r.status_code == 200
                except httpx.HTTPError:
                    ok = False
                if ok:
                    latencies.append(time.perf_counter() - tic)
                else:
                    errors += 1

        start = time.perf_counter()
        await asyncio.gather(*(one_client(k) for k in range(clients)))
        elapsed = time.perf_counter() - start
    return {
        "requests_per_s": len(latencies) / elapsed, "p50_ms": 1000 * percentile(latencies, 50),
        "p99_ms": 1000 * percentile(latencies, 99), "errors": errors, "requests": len(latencies),
    }  # fmt: skip


def bad_requests(good: bytes) -> list[tuple[str, bytes, str, int]]:
    """(name, body, ?output, expected status) of the bad requests the soak mixes in."""
    big = io.BytesIO()
    Image.new("RGB", (6000, 5000)).save(big, format="PNG")  # 30 megapixels in a small file
    return [
        ("not an image", b"GIF? no: plain text", "png", 415),
        ("truncated", good[: len(good) // 3], "png", 400),
        ("too many pixels", big.getvalue(), "png", 413),
        ("unknown output", good, "svg", 400),
    ]


async def soak(
    server: Server, bodies: list[bytes], sizes: list[tuple[int, int]], clients: int, seconds: float
) -> dict:
    bad = bad_requests(bodies[0])
    counts = {"good": 0, "good_lost": 0, "bad": 0, "bad_wrong_status": 0}
    rss: list[float] = [server.rss_mb()]
    deadline = time.perf_counter() + seconds
    async with httpx.AsyncClient(timeout=300) as client:

        async def one_client(k: int) -> None:
            i = k
            while time.perf_counter() < deadline:
                i += clients
                if i % 5 == 0:
                    name, body, output, status = bad[(i // 5) % len(bad)]
                    try:
                        r = await client.post(
                            f"{server.url}/predict", params={"output": output}, content=body
                        )
                        wrong = r.status_code != status or "detail" not in r.json()
                    except (httpx.HTTPError, ValueError):
                        wrong = True
                    counts["bad"] += 1
                    counts["bad_wrong_status"] += wrong
                    continue
                j = i % len(bodies)
                try:
                    r = await client.post(f"{server.url}/predict", content=bodies[j])
                    mask = Image.open(io.BytesIO(r.content)) if r.status_code == 200 else None
                    lost = mask is None or mask.size != sizes[j]
                except (httpx.HTTPError, OSError):
                    lost = True
                counts["good"] += 1
                counts["good_lost"] += lost

        async def sample() -> None:
            while time.perf_counter() < deadline:
                await asyncio.sleep(5)
                rss.append(server.rss_mb())

        await asyncio.gather(sample(), *(one_client(k) for k in range(clients)))
    rss.append(server.rss_mb())
    half = len(rss) // 2
    return counts | {
        "rss_start_mb": rss[0], "rss_after_first_half_max_mb": max(rss[1 : half + 1] or rss[:1]),
        "rss_second_half_max_mb": max(rss[half + 1 :] or rss[-1:]), "rss_end_mb": rss[-1],
    }  # fmt: skip


def main(argv: list[str] | None = None) -> dict[str, object]:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--images", type=Path, required=True)
    parser.add_argument("--count", type=int, default=32, help="photos to cycle through")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--single-seconds", type=float, default=30)
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--wait-ms", type=float, default=10)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--amp", default="auto")
    parser.add_argument("--soak", type=float, default=0, help="seconds of mixed good and bad requests")
    args = parser.parse_args(argv)
    print(describe_machine(torch.device("cpu")))
    paths = sorted(p for p in args.images.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))[
        : args.count
    ]
    bodies = [p.read_bytes() for p in paths]
    sizes = [Image.open(p).size for p in paths]
    print(
        f"model {args.checkpoint}; {len(bodies)} photos of {args.images} ({sizes[0][0]}x{sizes[0][1]} first)"
    )
    results: dict[str, object] = {}
    with tempfile.TemporaryDirectory(prefix="deeplab-serve-load-") as tmp:
        for label, batch, wait in (("batching off", 1, 0.0), ("batching on", args.max_batch, args.wait_ms)):
            settings = [f"max_batch_size={batch}", f"max_batch_wait_ms={wait}", f"workers={args.workers}",
                        f"amp={args.amp}"]  # fmt: skip
            server = Server(args.checkpoint, Path(tmp), *settings)
            try:
                asyncio.run(load(server.url, bodies, 1, 5))  # warm-up: every runtime prepares its kernels
                single = asyncio.run(load(server.url, bodies, 1, args.single_seconds))
                many = asyncio.run(load(server.url, bodies, args.clients, args.seconds))
                print(
                    f"{label} (max_batch_size={batch}, max_batch_wait_ms={wait:g}, workers={args.workers}): "
                    f"1 client {single['requests_per_s']:.2f} req/s, p50 {single['p50_ms']:.0f} ms, "
                    f"p99 {single['p99_ms']:.0f} ms | {args.clients} clients {many['requests_per_s']:.2f} req/s, "
                    f"p50 {many['p50_ms']:.0f} ms, p99 {many['p99_ms']:.0f} ms, errors {many['errors']} "
                    f"of {many['requests'] + many['errors']}"
                )
                results[label] = {"single": single, "clients": many}
                if args.soak and batch > 1:
                    s = asyncio.run(soak(server, bodies, sizes, args.clients, args.soak))
                    print(
                        f"soak {args.soak:g} s, {args.clients} clients: {s['good']} good requests, {s['good_lost']} "
                        f"without their mask; {s['bad']} bad, {s['bad_wrong_status']} with another answer than "
                        f"their 4xx; server RSS {s['rss_start_mb']:.0f} MB at the start, at most "
                        f"{s['rss_after_first_half_max_mb']:.0f} MB in the first half and "
                        f"{s['rss_second_half_max_mb']:.0f} MB in the second, {s['rss_end_mb']:.0f} MB at the end"
                    )
                    results["soak"] = s
            finally:
                server.stop()
    off, on = results["batching off"], results["batching on"]
    print(
        f"batching on / off at {args.clients} clients: {on['clients']['requests_per_s'] / off['clients']['requests_per_s']:.2f}x "
        f"requests/s; on / one client one-at-a-time (batching off): "
        f"{on['clients']['requests_per_s'] / off['single']['requests_per_s']:.2f}x; p99 at {args.clients} clients "
        f"with batching / p50 of a single request: {on['clients']['p99_ms'] / off['single']['p50_ms']:.2f}x"
    )
    return results


if __name__ == "__main__":
    main()
