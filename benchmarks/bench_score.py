"""Score service benchmark: Identify end to end, the analysis cache, and the gallery's size.

Run with `make bench-score`. Every row is measured in the same run on the same photos (those
of bench_inference.py), so compare rows with each other, not with figures from another
machine or day. The score service runs with its embedded storage (Qdrant's engine,
qdrant-edge-py); benchmarks/bench_storage.py measures that engine's recall and latency per
search setting.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from itertools import count
from pathlib import Path

import cv2
import grpc
import numpy as np
from insightface.model_zoo.arcface_onnx import ArcFaceONNX
from insightface.model_zoo.scrfd import SCRFD
from insightface.utils import face_align
from rich.console import Console
from rich.table import Table

from benchmarks.bench_inference import (
    MODELS,
    REPO,
    Span,
    bench_in_process,
    free_port,
    single_face_photos,
    start,
    summarize,
    wait_serving,
)
from facescore.devtools.phone_photos import phone_photos
from facescore.devtools.redis_server import RedisServer
from facescore.v1 import score_pb2, score_pb2_grpc
from services.common.errors import reason_of
from services.score.settings import ScoreSettings
from services.score.storage import EdgeEngine, ModelIdentity, Point, face_id, open_engine
from services.score.storage.layout import face_payload

Stats = tuple[float, float, float]  # calls per second, p50 ms, p99 ms
TIMEOUT_S = 60.0
TOP_K = 5
# Phone photos with at most this many faces in the Analyze rows: a photo of one person or a
# few, as most analyze calls are; a 22-face team photo measures embed, not the decode.
PHONE_FACES = 6
_nonce = count()


def fresh_bytes(data: bytes) -> bytes:
    """The same JPEG with a unique comment segment: other bytes (a cache miss), same pixels."""
    if data[:2] != b"\xff\xd8":
        raise ValueError("not a JPEG")
    comment = f"bench {next(_nonce)}".encode()
    return data[:2] + b"\xff\xfe" + struct.pack(">H", len(comment) + 2) + comment + data[2:]


class ScoreProcess:
    """`facescore serve score` on a free port, over its own data dir (embedded Qdrant)."""

    def __init__(self, data_dir: Path, detect: str, embed: str, **env: str) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.env = {
            **os.environ,
            "SCORE_PORT": str(self.port),
            "SCORE_METRICS_PORT": "0",
            "SCORE_LOG_LEVEL": "warning",
            "SCORE_DETECT_TARGET": f"dns:///{detect}",
            "SCORE_EMBED_TARGET": f"dns:///{embed}",
            "SCORE_DATA_DIR": str(data_dir),
            "SCORE_QDRANT_URL": "",  # empty = unset: embedded Qdrant under data_dir
            "SCORE_REDIS_URL": "",
            **env,
        }
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "facescore.cli", "serve", "score"], cwd=REPO, env=self.env
        )
        CHILDREN.append(self.process)
        wait_serving(self.address)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(30)
        self.process = None


# Timing.


async def timed(calls: Sequence[Callable[[], Awaitable[object]]], concurrency: int) -> Stats:
    """Run the calls with `concurrency` of them in flight; latency of each, and the rate."""
    spans: list[Span] = []
    queue = iter(calls)

    async def worker() -> None:
        for call in queue:  # one iterator shared by the workers: each call runs once
            t = time.perf_counter()
            await call()
            spans.append((t, time.perf_counter()))

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return summarize(spans)


def stub(channel: grpc.aio.Channel) -> score_pb2_grpc.ScoreServiceStub:
    return score_pb2_grpc.ScoreServiceStub(channel)


async def enroll_all(
    address: str, gallery: str, photos: list[bytes]
) -> tuple[dict[int, str], Counter[str]]:
    """Create the gallery, enroll each photo's largest face.

    Returns photo index -> subject id of those enrolled, and why the others were refused.
    """
    enrolled: dict[int, str] = {}
    refused: Counter[str] = Counter()
    async with grpc.aio.insecure_channel(address) as channel:
        score = stub(channel)
        await score.CreateGallery(score_pb2.CreateGalleryRequest(name=gallery), timeout=TIMEOUT_S)
        for index, data in enumerate(photos):
            subject = f"photo-{index:02d}"
            request = score_pb2.EnrollRequest(
                gallery=gallery,
                subject_id=subject,
                image=data,
                face_selection=score_pb2.FACE_SELECTION_LARGEST,
            )
            try:
                await score.Enroll(request, timeout=TIMEOUT_S)
            except grpc.aio.AioRpcError as error:  # no face, or below the quality gates
                refused[reason_of(error) or error.code().name] += 1
                continue
            enrolled[index] = subject
    return enrolled, refused


async def bench_identify(
    address: str,
    gallery: str,
    photos: list[bytes],
    enrolled: dict[int, str],
    calls: int,
    concurrency: int,
    *,
    fresh: bool,
) -> tuple[Stats, float]:
    """Identify the photos in turn, `calls` times; (stats, share of enrolled photos found first).

    fresh=True sends each call other bytes (fresh_bytes), so no call can hit the cache.
    """
    found: list[bool] = []
    async with grpc.aio.insecure_channel(address) as channel:
        score = stub(channel)

        def call(index: int) -> Callable[[], Awaitable[None]]:
            async def one() -> None:
                data = fresh_bytes(photos[index]) if fresh else photos[index]
                request = score_pb2.IdentifyRequest(gallery=gallery, image=data, top_k=TOP_K)
                response = await score.Identify(request, timeout=TIMEOUT_S)
                if index in enrolled:
                    best = response.faces[0].candidates[0].subject_id if response.faces else ""
                    found.append(best == enrolled[index])

            return one

        await channel.channel_ready()
        stats = await timed([call(i % len(photos)) for i in range(calls)], concurrency)
    return stats, sum(found) / max(1, len(found))


async def warm(address: str, photos: list[bytes]) -> None:
    """Analyze every photo once: the cache holds them all afterwards (when it is on)."""
    async with grpc.aio.insecure_channel(address) as channel:
        score = stub(channel)
        for data in photos:
            await score.Analyze(score_pb2.AnalyzeRequest(image=data), timeout=TIMEOUT_S)


async def bench_analyze(address: str, photos: list[bytes], calls: int, *, cached: bool) -> Stats:
    """Analyze the photos in turn, one call at a time; all analyzed once first when `cached`."""
    await warm(address, photos if cached else photos[:1])
    async with grpc.aio.insecure_channel(address) as channel:
        score = stub(channel)

        def call(data: bytes) -> Callable[[], Awaitable[None]]:
            async def one() -> None:
                request = score_pb2.AnalyzeRequest(image=data)
                response = await score.Analyze(request, timeout=TIMEOUT_S)
                if response.cached != cached:
                    raise RuntimeError(f"expected cached={cached}, got {response.cached}")

            return one

        await channel.channel_ready()
        return await timed([call(photos[i % len(photos)]) for i in range(calls)], 1)


async def service_info(address: str) -> score_pb2.ServiceInfo:
    async with grpc.aio.insecure_channel(address) as channel:
        info: score_pb2.ServiceInfo = await stub(channel).GetServiceInfo(
            score_pb2.GetServiceInfoRequest(), timeout=TIMEOUT_S
        )
        return info


# In process: insightface and a numpy search.


class InProcessIdentify:
    """insightface's SCRFD + ArcFace, then a brute-force dot product against the gallery."""

    def __init__(self) -> None:
        self.detector = SCRFD(model_file=str(MODELS / "scrfd_500m_bnkps.onnx"))
        self.detector.prepare(0, input_size=(640, 640))
        self.recognizer = ArcFaceONNX(model_file=str(MODELS / "w600k_mbf.onnx"))
        self.gallery = np.zeros((0, 512), np.float32)

    def embed(self, data: bytes) -> np.ndarray:
        """L2-normalised embeddings of every face, largest face first."""
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        boxes, landmarks = self.detector.detect(image, input_size=(640, 640))
        if len(boxes) == 0:
            return np.zeros((0, 512), np.float32)
        order = np.argsort(-(boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
        crops = [face_align.norm_crop(image, landmarks[i]) for i in order]
        vectors = np.asarray(self.recognizer.get_feat(crops), np.float32)
        normalised: np.ndarray = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
        return normalised

    def identify(self, data: bytes) -> list[np.ndarray]:
        """Indices of the TOP_K most similar gallery faces, for every face of the photo."""
        results = []
        for scores in self.embed(data) @ self.gallery.T:
            k = min(TOP_K, len(scores))
            best = np.argpartition(-scores, k - 1)[:k]
            results.append(best[np.argsort(-scores[best])])
        return results


def bench_in_process_identify(
    pipeline: InProcessIdentify, photos: list[bytes], rounds: int, concurrency: int
) -> Stats:
    def one(data: bytes) -> Span:
        t = time.perf_counter()
        pipeline.identify(data)
        return t, time.perf_counter()

    pipeline.identify(photos[0])
    work = [data for _ in range(rounds) for data in photos]
    with ThreadPoolExecutor(concurrency) as pool:
        spans = list(pool.map(one, work))
    return summarize(spans)


# Gallery size.


def fill_gallery(
    data_dir: Path, info: score_pb2.ServiceInfo, gallery: str, first: int, total: int
) -> None:
    """Write synthetic faces first..total-1 straight into the embedded engine (service stopped)
    and build its index (binary codes by default).

    Random unit vectors, with the payload fields Enroll writes that searches and listings read
    (no subject records in the registry: Identify does not read them).
    """
    asyncio.run(_fill(data_dir, info, gallery, first, total))


async def _fill(
    data_dir: Path, info: score_pb2.ServiceInfo, gallery: str, first: int, total: int
) -> None:
    rng = np.random.default_rng(first)
    dim = info.recognizer.embedding_dim
    identity = ModelIdentity(info.recognizer.name, info.recognizer.sha256, dim)
    engine = await open_engine(ScoreSettings(data_dir=data_dir))
    try:
        for start_at in range(first, total, 1000):
            ids = range(start_at, min(total, start_at + 1000))
            vectors = rng.standard_normal((len(ids), dim)).astype(np.float32)
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            points = []
            for i, vector in zip(ids, vectors, strict=True):
                subject = f"synthetic-{i:06d}"
                point_id = face_id(gallery, subject, f"{i:064x}", 0)
                payload = face_payload(
                    identity, gallery, subject, point_id, "", image_sha256=f"{i:064x}", face_index=0
                )
                points.append(Point(point_id, payload, vector.tolist()))
            await engine.upsert(info.collection, points)
        if isinstance(engine, EdgeEngine):  # build the index now, as score would after
            await engine.optimize(info.collection)
    finally:
        await engine.close()


def numpy_search_ms(size: int, dim: int, calls: int = 50) -> float:
    """Median ms of a brute-force top-k over `size` unit vectors in numpy (the floor)."""
    rng = np.random.default_rng(size)
    gallery = rng.standard_normal((size, dim)).astype(np.float32)
    gallery /= np.linalg.norm(gallery, axis=1, keepdims=True)
    took = []
    for query in gallery[:calls]:
        t = time.perf_counter()
        scores = gallery @ query
        top = np.argpartition(-scores, min(TOP_K, size - 1))[:TOP_K]
        top = top[np.argsort(-scores[top])]
        took.append(1000 * (time.perf_counter() - t))
    return float(np.median(took))


# CPU time by process (Linux /proc), to see where an Identify call's work goes.


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a live process, or None where /proc is not there."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU seconds each named process spent between start() and stop()."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.spent: dict[str, float] = dict.fromkeys(pids, 0.0)
        self._before: dict[str, float | None] = {}

    def start(self) -> None:
        self._before = {name: cpu_seconds(pid) for name, pid in self.pids.items()}

    def stop(self) -> None:
        for name, pid in self.pids.items():
            before, after = self._before.get(name), cpu_seconds(pid)
            if before is not None and after is not None:
                self.spent[name] += after - before


def machine_cpu() -> float | None:
    """Busy CPU seconds of the whole machine since boot, from /proc/stat."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq = (fields + [0] * 7)[:7]
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


CHILDREN: list[subprocess.Popen[bytes]] = []  # every process this benchmark started


def own_cpu() -> float:
    """CPU seconds of this process and of the processes it started, live or ended."""
    t = os.times()
    live = sum(cpu_seconds(p.pid) or 0.0 for p in CHILDREN if p.poll() is None)
    return t.user + t.system + t.children_user + t.children_system + live


class Others:
    """The share of the machine's CPU that other processes took since start()."""

    def __init__(self) -> None:
        self.start()

    def start(self) -> None:
        self._began, self._machine, self._own = time.perf_counter(), machine_cpu(), own_cpu()

    def share(self) -> float | None:
        machine = machine_cpu()
        if machine is None or self._machine is None:
            return None
        others = machine - self._machine - (own_cpu() - self._own)
        return max(0.0, others) / ((time.perf_counter() - self._began) * (os.cpu_count() or 1))

    def note(self, console: Console, what: str) -> None:
        share = self.share()
        if share is not None:
            console.print(f"Other processes took {share:.0%} of the machine's CPU during {what}.")
        self.start()


# Report.


def stats_table(title: str, first: str, second: str, per_second: str) -> Table:
    table = Table(title=title)
    for column in (first, second, per_second, "p50 ms", "p99 ms"):
        table.add_column(column, justify="left" if column == first else "right")
    return table


def add_stats(table: Table, label: str, second: int | str, stats: Stats) -> None:
    rate, p50, p99 = stats
    table.add_row(label, str(second), f"{rate:.1f}", f"{p50:.1f}", f"{p99:.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3, help="passes over the photos per row")
    parser.add_argument("--cache-calls", type=int, default=200, help="calls per cache-hit row")
    parser.add_argument(
        "--phone-calls", type=int, default=12, help="calls per 12 MP phone-photo row"
    )
    parser.add_argument(
        "--scale-calls", type=int, default=10, help="calls per column of the gallery-size rows"
    )
    parser.add_argument(
        "--sizes",
        default="100000",
        help="gallery sizes, ascending (the manual run: --sizes 100000,1000000)",
    )
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s]
    console = Console(width=120)
    began, whole, section = time.perf_counter(), Others(), Others()
    photos = single_face_photos()
    calls = args.rounds * len(photos)
    console.print(
        f"{len(photos)} photos of about one face each, {args.rounds} passes per row, "
        f"{os.cpu_count()} CPU cores"
    )
    work = Path(tempfile.mkdtemp(prefix="facescore-bench-score-"))
    detect_port, embed_port = free_port(), free_port()
    detect, embed = f"127.0.0.1:{detect_port}", f"127.0.0.1:{embed_port}"
    helpers = [start("detect", detect_port), start("embed", embed_port)]
    CHILDREN.extend(helpers)
    scores: list[ScoreProcess] = []
    redis: RedisServer | None = None
    try:
        wait_serving(detect)
        wait_serving(embed)

        # 1. Identify with every call through the models, against the in-process library.
        identify = stats_table(
            "Identify: detect + embed + search of a small gallery, every call runs the models",
            "pipeline",
            "concurrency",
            "images/s",
        )
        add_stats(
            identify,
            "in-process insightface, detect + embed only",
            1,
            bench_in_process(photos, args.rounds)[:3],
        )
        pipeline = InProcessIdentify()
        pipeline.gallery = np.stack([v[0] for v in map(pipeline.embed, photos) if len(v)])
        for concurrency in (1, 4):
            add_stats(
                identify,
                "in-process insightface + numpy search",
                concurrency,
                bench_in_process_identify(pipeline, photos, args.rounds, concurrency),
            )
        off = ScoreProcess(work / "off", detect, embed, SCORE_CACHE_MAX_BYTES="0")
        scores.append(off)
        off.start()
        enrolled, refused = asyncio.run(enroll_all(off.address, "bench", photos))
        assert off.process is not None
        meter = CpuMeter(
            {
                "detect": helpers[0].pid,
                "embed": helpers[1].pid,
                "score": off.process.pid,
                "benchmark client": os.getpid(),
            }
        )
        found = []
        for concurrency in (1, 4):
            meter.start()
            stats, share = asyncio.run(
                bench_identify(
                    off.address, "bench", photos, enrolled, calls, concurrency, fresh=False
                )
            )
            meter.stop()
            found.append(share)
            add_stats(identify, "score service Identify (cache off)", concurrency, stats)
        uncached = asyncio.run(bench_analyze(off.address, photos, calls, cached=False))
        phones = {
            fmt: [p.data for p in phone_photos((fmt,)) if p.faces <= PHONE_FACES]
            for fmt in ("JPEG", "HEIF")
        }
        phone_uncached = {
            fmt: asyncio.run(bench_analyze(off.address, data, args.phone_calls, cached=False))
            for fmt, data in phones.items()
        }
        off.stop()
        console.print(identify)
        console.print(
            f"Gallery: {len(enrolled)} of the {len(photos)} photos enrolled (refused: "
            f"{', '.join(f'{n} {why}' for why, n in refused.most_common()) or 'none'}); "
            "Identify found the enrolled subject first "
            f"for {min(found):.0%} of their calls. In-process gallery: the largest face of every "
            f"photo with one ({len(pipeline.gallery)} faces)."
        )
        section.note(console, "the Identify table")
        where = Table(title="CPU time per score-service Identify call (cache off), by process")
        where.add_column("process")
        where.add_column("CPU ms per call", justify="right")
        for name, spent in meter.spent.items():
            where.add_row(name, f"{1000 * spent / (2 * calls):.1f}")
        console.print(where)

        # 2. Analyze: cache hits against the models.
        cache = stats_table("Analyze, one call at a time", "analysis", "calls", "calls/s")
        add_stats(cache, "uncached: detect + embed (cache off)", calls, uncached)
        for fmt, stats in phone_uncached.items():
            add_stats(cache, f"uncached, 12 MP {fmt} phone photos", args.phone_calls, stats)
        memory = ScoreProcess(work / "memory", detect, embed)
        scores.append(memory)
        memory.start()
        hits = asyncio.run(bench_analyze(memory.address, photos, args.cache_calls, cached=True))
        add_stats(cache, "cache hit, in-process cache", args.cache_calls, hits)
        redis = RedisServer()
        if redis.process is not None:
            CHILDREN.append(redis.process)
        with_redis = ScoreProcess(work / "redis", detect, embed, SCORE_REDIS_URL=redis.url)
        scores.append(with_redis)
        with_redis.start()
        hits = asyncio.run(bench_analyze(with_redis.address, photos, args.cache_calls, cached=True))
        with_redis.stop()
        redis.close()
        redis = None
        add_stats(cache, "cache hit, Redis (redis-server on loopback)", args.cache_calls, hits)
        console.print(cache)
        console.print(
            "12 MP phone photos (the sample photos with up to "
            f"{PHONE_FACES} faces, scaled to 4032x3024): uncached p50 "
            + ", ".join(
                f"{fmt} {stats[1] / uncached[1]:.2f}x" for fmt, stats in phone_uncached.items()
            )
            + " the small photos' p50, measured in this run."
        )
        section.note(console, "the Analyze table")

        # 3. Identify against larger galleries: synthetic faces written into embedded Qdrant.
        scale = Table(
            title=f"Identify against a gallery of N faces, one call at a time, "
            f"{args.scale_calls} calls per column (embedded engine, default settings)"
        )
        tail = "p99 ms" if args.scale_calls >= 100 else "max ms"
        for column in ("faces", "photo cached: p50 ms", tail, "uncached: p50 ms", f"{tail} "):
            scale.add_column(column, justify="right")
        scale.add_column("enrolled subject first", justify="right")
        scale.add_column("numpy top-k alone: p50 ms", justify="right")
        enrolled, _ = asyncio.run(enroll_all(memory.address, "scale", photos))
        info = asyncio.run(service_info(memory.address))
        faces = len(enrolled)

        def scale_row(label: str, gallery: str, enrolled: dict[int, str], total: int) -> None:
            asyncio.run(warm(memory.address, photos))  # a restart empties the in-process cache
            hit, share_hit = asyncio.run(
                bench_identify(
                    memory.address, gallery, photos, enrolled, args.scale_calls, 1, fresh=False
                )
            )
            miss, share_miss = asyncio.run(
                bench_identify(
                    memory.address, gallery, photos, enrolled, args.scale_calls, 1, fresh=True
                )
            )
            scale.add_row(
                label,
                f"{hit[1]:.1f}",
                f"{hit[2]:.1f}",
                f"{miss[1]:.1f}",
                f"{miss[2]:.1f}",
                f"{min(share_hit, share_miss):.0%}",
                f"{numpy_search_ms(total, info.recognizer.embedding_dim):.2f}",
            )

        for size in [faces, *sizes]:
            if size > faces:
                memory.stop()
                t = time.perf_counter()
                fill_gallery(work / "memory", info, "scale", faces, size)
                filled = time.perf_counter() - t
                faces = size
                t = time.perf_counter()
                memory.start()
                console.print(
                    f"{faces:,} faces: synthetic faces written and indexed in {filled:.1f} s, "
                    f"score service serving again after {time.perf_counter() - t:.1f} s"
                )
            scale_row(f"{faces:,}", "scale", enrolled, faces)
        # A small gallery beside the large one: its faces rarely fill the nearest faces of
        # the whole collection, so the search applies the gallery filter.
        few, _ = asyncio.run(enroll_all(memory.address, "few", photos))
        scale_row(f"{len(few)} of {faces + len(few):,}", "few", few, faces + len(few))
        console.print(scale)
        section.note(console, "the gallery-size table")
    finally:
        for score in scores:
            score.stop()
        if redis is not None:
            redis.close()
        for process in helpers:
            process.terminate()
            process.wait(30)
        shutil.rmtree(work, ignore_errors=True)
    console.print(f"Whole run: {time.perf_counter() - began:.0f} s")
    whole.note(console, "the whole run (figures measured while others took much are disturbed)")


if __name__ == "__main__":
    main()
