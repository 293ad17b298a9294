"""Inference benchmark: in-process insightface, raw ONNX Runtime, and the gRPC services.

Run with `make bench-inference`. Every row is measured in the same run on the same photos,
so compare rows with each other, not with figures from another machine or day.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Awaitable, Callable
from pathlib import Path

import cv2
import grpc
import numpy as np
import onnxruntime as ort
from grpc_health.v1 import health_pb2, health_pb2_grpc
from insightface.model_zoo.arcface_onnx import ArcFaceONNX
from insightface.model_zoo.scrfd import SCRFD
from insightface.utils import face_align
from rich.console import Console
from rich.table import Table

from facescore.v1 import detect_pb2, detect_pb2_grpc, embed_pb2, embed_pb2_grpc
from services.common.models import insightface_image, vectron_file

REPO = Path(__file__).resolve().parents[1]
warnings.filterwarnings("ignore", message=".*`estimate` is deprecated.*", category=FutureWarning)
MODELS = REPO / "public" / "models"


def single_face_photos() -> list[bytes]:
    """Photos of about one face each, cut with a margin from the packaged sample photos."""
    detector = SCRFD(model_file=str(MODELS / "scrfd_500m_bnkps.onnx"))
    detector.prepare(0, input_size=(640, 640))
    photos = [vectron_file("yaoming.jpg").read_bytes()]
    for path in (vectron_file("players.jpg"), insightface_image("t1.jpg"), vectron_file("gdp.jpg")):
        image = cv2.imread(str(path))
        boxes, _ = detector.detect(image, input_size=(640, 640))
        for x1, y1, x2, y2, _score in boxes:
            margin = 0.6 * max(x2 - x1, y2 - y1)
            top, left = int(max(0, y1 - margin)), int(max(0, x1 - margin))
            crop = image[top : int(y2 + margin), left : int(x2 + margin)]
            photos.append(cv2.imencode(".jpg", crop, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes())
    return photos


def summarize(latencies: list[float], wall: float, count: int) -> tuple[float, float, float]:
    ordered = sorted(latencies)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return count / wall, statistics.median(ordered) * 1000, p99 * 1000


def bench_in_process(photos: list[bytes], rounds: int) -> tuple[float, float, float]:
    detector = SCRFD(model_file=str(MODELS / "scrfd_500m_bnkps.onnx"))
    detector.prepare(0, input_size=(640, 640))
    recognizer = ArcFaceONNX(model_file=str(MODELS / "w600k_mbf.onnx"))

    def one(data: bytes) -> None:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        _, landmarks = detector.detect(image, input_size=(640, 640))
        crops = [face_align.norm_crop(image, lm) for lm in landmarks]
        if crops:
            recognizer.get_feat(crops)

    one(photos[0])
    latencies, started = [], time.perf_counter()
    for _ in range(rounds):
        for data in photos:
            t = time.perf_counter()
            one(data)
            latencies.append(time.perf_counter() - t)
    return summarize(latencies, time.perf_counter() - started, len(latencies))


def bench_raw_models(rounds: int) -> list[tuple[str, float]]:
    """Model time alone, inputs prepared beforehand: (what, items per second)."""
    options = ort.SessionOptions()
    rows = []
    det = ort.InferenceSession(
        str(MODELS / "scrfd_500m_bnkps.onnx"), options, providers=["CPUExecutionProvider"]
    )
    blob = np.random.default_rng(0).standard_normal((1, 3, 640, 640)).astype(np.float32)
    name = det.get_inputs()[0].name
    det.run(None, {name: blob})
    n = 20 * rounds
    started = time.perf_counter()
    for _ in range(n):
        det.run(None, {name: blob})
    rows.append(("detector alone, 640x640 (images/s)", n / (time.perf_counter() - started)))
    rec = ort.InferenceSession(
        str(MODELS / "w600k_mbf.onnx"), options, providers=["CPUExecutionProvider"]
    )
    name = rec.get_inputs()[0].name
    for batch in (1, 8):
        faces = np.random.default_rng(0).standard_normal((batch, 3, 112, 112)).astype(np.float32)
        rec.run(None, {name: faces})
        runs = max(1, 40 * rounds // batch)
        started = time.perf_counter()
        for _ in range(runs):
            rec.run(None, {name: faces})
        rows.append(
            (
                f"recognizer alone, batch {batch} (faces/s)",
                runs * batch / (time.perf_counter() - started),
            )
        )
    return rows


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start(service: str, port: int) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        f"{service.upper()}_PORT": str(port),
        f"{service.upper()}_METRICS_PORT": "0",
        f"{service.upper()}_LOG_LEVEL": "warning",
    }
    return subprocess.Popen(
        [sys.executable, "-m", "facescore.cli", "serve", service], cwd=REPO, env=env
    )


def wait_serving(address: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            try:
                if stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status == 1:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.1)
    raise TimeoutError(address)


async def bench_services(
    photos: list[bytes], rounds: int, concurrency: int, detect_address: str, embed_address: str
) -> tuple[float, float, float]:
    async with (
        grpc.aio.insecure_channel(detect_address) as dc,
        grpc.aio.insecure_channel(embed_address) as ec,
    ):
        detect = detect_pb2_grpc.DetectServiceStub(dc)
        embed = embed_pb2_grpc.EmbedServiceStub(ec)

        async def one(data: bytes) -> None:
            faces = (
                await detect.Detect(detect_pb2.DetectRequest(image=data, include_crops=True))
            ).faces
            if faces:
                await embed.Embed(embed_pb2.EmbedRequest(crops=[f.crop for f in faces]))

        await one(photos[0])
        work = [data for _ in range(rounds) for data in photos]
        latencies: list[float] = []

        async def worker(take: Callable[[], bytes | None]) -> None:
            while (data := take()) is not None:
                t = time.perf_counter()
                await one(data)
                latencies.append(time.perf_counter() - t)

        queue = iter(work)
        started = time.perf_counter()
        jobs: list[Awaitable[None]] = [
            worker(lambda: next(queue, None)) for _ in range(concurrency)
        ]
        await asyncio.gather(*jobs)
        return summarize(latencies, time.perf_counter() - started, len(latencies))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3, help="passes over the photos per row")
    args = parser.parse_args()
    console = Console(width=110)
    photos = single_face_photos()
    console.print(
        f"{len(photos)} photos of about one face each, {args.rounds} passes per row, "
        f"{os.cpu_count()} CPU cores"
    )

    table = Table(title="detect + align + embed, one photo at a time per client")
    for column in ("pipeline", "concurrency", "images/s", "p50 ms", "p99 ms"):
        table.add_column(column, justify="right" if column != "pipeline" else "left")
    ips, p50, p99 = bench_in_process(photos, args.rounds)
    table.add_row(
        "in-process insightface (ORT default threads)",
        "1",
        f"{ips:.1f}",
        f"{p50:.1f}",
        f"{p99:.1f}",
    )

    detect_port, embed_port = free_port(), free_port()
    processes = [start("detect", detect_port), start("embed", embed_port)]
    try:
        wait_serving(f"127.0.0.1:{detect_port}")
        wait_serving(f"127.0.0.1:{embed_port}")
        for concurrency in (1, 4):
            ips, p50, p99 = asyncio.run(
                bench_services(
                    photos,
                    args.rounds,
                    concurrency,
                    f"127.0.0.1:{detect_port}",
                    f"127.0.0.1:{embed_port}",
                )
            )
            table.add_row(
                "detect + embed services over gRPC",
                str(concurrency),
                f"{ips:.1f}",
                f"{p50:.1f}",
                f"{p99:.1f}",
            )
    finally:
        for process in processes:
            process.terminate()
            process.wait(30)
    console.print(table)

    raw = Table(title="raw ONNX Runtime, model time alone (ORT default threads)")
    raw.add_column("model")
    raw.add_column("per second", justify="right")
    for what, rate in bench_raw_models(args.rounds):
        raw.add_row(what, f"{rate:.1f}")
    console.print(raw)


if __name__ == "__main__":
    main()
