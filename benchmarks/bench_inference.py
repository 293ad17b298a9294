"""Inference benchmark: in-process insightface, raw ONNX Runtime, and the gRPC services.

Run with `make bench-inference`. Every row is measured in the same run on the same photos,
so compare rows with each other, not with figures from another machine or day. Two photo
sets: small photos of about one face each, and 12 MP phone photos (JPEG and HEIC, 1 to 22
faces) generated from the same sample photos. `--baseline-tree DIR` also runs the services
from another checkout (e.g. `git archive` of an older commit) in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import io
import multiprocessing
import os
import pickle
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import grpc
import numpy as np
import onnxruntime as ort
from grpc_health.v1 import health_pb2, health_pb2_grpc
from insightface.model_zoo.arcface_onnx import ArcFaceONNX
from insightface.model_zoo.scrfd import SCRFD
from PIL import Image
from rich.console import Console
from rich.table import Table

from facescore.devtools.phone_photos import PhonePhoto, phone_photos
from facescore.v1 import detect_pb2, detect_pb2_grpc, embed_pb2, embed_pb2_grpc
from services.common.align import norm_crop
from services.common.images import decode_image
from services.common.models import insightface_image, vectron_file
from services.common.onnx import create_session
from services.common.settings import OnnxSettings
from services.detect.detector import CROP_SIZE, input_shape

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO / "public" / "models"


SMALL = "small photos"
SAME_SMALL = "same, 800x600 JPEG"  # the phone photos' frames at 800x600: same faces
PHOTO_SETS = (SMALL, SAME_SMALL, "12 MP JPEG", "12 MP HEIC")


def single_face_photos() -> list[bytes]:
    """Photos of about one face each, cut with a margin from the packaged sample photos."""
    detector = SCRFD(model_file=str(MODELS / "scrfd_500m_bnkps.onnx"))
    detector.prepare(0, input_size=(640, 640))
    photos = [vectron_file("yaoming.jpg").read_bytes()]
    for path in (vectron_file("players.jpg"), insightface_image("t1.jpg"), vectron_file("gdp.jpg")):
        image = cv2.imread(str(path))
        if image is None:
            raise RuntimeError(f"cannot read {path}")
        boxes, _ = detector.detect(image, input_size=(640, 640))
        for x1, y1, x2, y2, _score in boxes:
            margin = 0.6 * max(x2 - x1, y2 - y1)
            top, left = int(max(0, y1 - margin)), int(max(0, x1 - margin))
            crop = image[top : int(y2 + margin), left : int(x2 + margin)]
            photos.append(cv2.imencode(".jpg", crop, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes())
    return photos


Span = tuple[float, float]  # one call's start and end, time.perf_counter() seconds


def summarize(spans: list[Span]) -> tuple[float, float, float]:
    """Calls per second, p50 ms and p99 ms of calls that ran `spans`.

    The rate counts the calls that ended while every slot still had work, from the first
    start to the last: once the last call has started, fewer than `concurrency` are left in
    flight, and the run's drain would otherwise count as the pipeline's idle time (a run of
    four 12 MP photos at concurrency 4 is nothing but drain). Where no call ended by then (no
    more calls than slots), the whole run is the window."""
    first, last = min(start for start, _ in spans), max(start for start, _ in spans)
    ended = sum(1 for _, end in spans if end <= last)
    rate = ended / (last - first) if ended else len(spans) / (max(e for _, e in spans) - first)
    ordered = sorted(end - start for start, end in spans)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return rate, statistics.median(ordered) * 1000, p99 * 1000


def decode_in_process(data: bytes) -> np.ndarray:
    """OpenCV, as insightface's users decode; Pillow for HEIC, which OpenCV cannot read."""
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        with Image.open(io.BytesIO(data)) as opened:
            image = np.ascontiguousarray(np.asarray(opened.convert("RGB"))[:, :, ::-1])
    return image


def bench_in_process(
    photos: list[bytes], rounds: int, concurrency: int = 1
) -> tuple[float, float, float, float]:
    """insightface in this process; `concurrency` threads share its two sessions.

    Returns images/s, p50 ms, p99 ms and CPU ms per photo (all of this process's threads).
    """
    detector = SCRFD(model_file=str(MODELS / "scrfd_500m_bnkps.onnx"))
    detector.prepare(0, input_size=(640, 640))
    recognizer = ArcFaceONNX(model_file=str(MODELS / "w600k_mbf.onnx"))

    def one(data: bytes) -> Span:
        t = time.perf_counter()
        image = decode_in_process(data)
        _, landmarks = detector.detect(image, input_size=(640, 640))
        crops = [norm_crop(image, lm, CROP_SIZE) for lm in landmarks]
        if crops:
            recognizer.get_feat(crops)
        return t, time.perf_counter()

    one(photos[0])
    work = [data for _ in range(rounds) for data in photos]
    cpu = time.process_time()
    with ThreadPoolExecutor(concurrency) as pool:
        spans = list(pool.map(one, work))
    cpu_ms = 1000 * (time.process_time() - cpu) / len(spans)
    return (*summarize(spans), cpu_ms)


def face_blobs(photos: list[bytes]) -> list[np.ndarray]:
    """The faces of `photos` as the recognizer's inputs (1x3x112x112 each), aligned as
    insightface aligns them: real faces, which run faster than random input (17.4 against
    19.3 ms in one probe) and slower than a blank one."""
    detector = SCRFD(model_file=str(MODELS / "scrfd_500m_bnkps.onnx"))
    detector.prepare(0, input_size=(640, 640))
    blobs = []
    for data in photos:
        image = decode_in_process(data)
        _, landmarks = detector.detect(image, input_size=(640, 640))
        for points in landmarks:
            crop = norm_crop(image, points, CROP_SIZE)
            blobs.append(
                cv2.dnn.blobFromImage(crop, 1 / 127.5, (112, 112), (127.5,) * 3, swapRB=True)
            )
    return blobs


def detector_blobs(photos: list[bytes], side: int = 640) -> list[np.ndarray]:
    """Random detector inputs in the shapes the detect service runs `photos` at on the CPU
    (each photo's proportions, `input_shape`): the detector's cost follows its input's area,
    not what it sees."""
    rng = np.random.default_rng(0)
    blobs = []
    for data in photos:
        width, height = input_shape(decode_in_process(data).shape[:2], side)
        blobs.append(rng.standard_normal((1, 3, height, width)).astype(np.float32))
    return blobs


def single_threaded_session(
    model: str, warm: np.ndarray, as_served: bool = True
) -> tuple[ort.InferenceSession, str]:
    """A session on `model` as the services open it with their ONNX settings' defaults (one
    thread, each PRelu vectorized), or with the file's PRelu as written (`as_served=False`),
    and its input's name, run once on `warm`."""
    session = create_session(MODELS / model, OnnxSettings(vectorize_prelu=as_served))
    name = session.get_inputs()[0].name
    session.run(None, {name: warm})
    return session, name


def model_cpu_ms(
    rounds: int, faces: list[np.ndarray], images: list[np.ndarray]
) -> tuple[float, float]:
    """CPU ms of one detector run (one of `images`) and one recognizer run (one of `faces`),
    with the single-threaded sessions the services use."""
    costs = []
    for model, inputs in (("scrfd_500m_bnkps.onnx", images), ("w600k_mbf.onnx", faces)):
        session, name = single_threaded_session(model, inputs[0])
        runs = 20 * rounds
        started = time.process_time()
        for i in range(runs):
            session.run(None, {name: inputs[i % len(inputs)]})
        costs.append(1000 * (time.process_time() - started) / runs)
    return costs[0], costs[1]


# A ModelsOnEveryCore worker's sessions: (session, input name, inputs) by model file.
_loaded: dict[str, tuple[ort.InferenceSession, str, list[np.ndarray]]] = {}


def _load_models(faces: list[np.ndarray], shapes: list[tuple[int, ...]]) -> None:
    rng = np.random.default_rng(0)
    for model, inputs in (
        ("scrfd_500m_bnkps.onnx", [rng.standard_normal(s).astype(np.float32) for s in shapes]),
        ("w600k_mbf.onnx", faces),
    ):
        _loaded[model] = (*single_threaded_session(model, inputs[0]), inputs)


def _run_models_until(start: float, deadline: float, faces_per_image: float) -> list[float]:
    """Detector and recognizer runs in turn (`faces_per_image` recognizer runs per detector
    run) from `start` to `deadline` (time.monotonic, one clock for every process): for each
    model, its runs' seconds of wall time, seconds of CPU, and count."""
    det, det_name, images = _loaded["scrfd_500m_bnkps.onnx"]
    rec, rec_name, faces = _loaded["w600k_mbf.onnx"]
    while time.monotonic() < start:
        time.sleep(0.001)
    totals = [0.0] * 6  # detector wall, CPU, runs; recognizer wall, CPU, runs

    def timed(at: int, session: ort.InferenceSession, feed: dict[str, np.ndarray]) -> None:
        wall, cpu = time.perf_counter(), time.thread_time()
        session.run(None, feed)
        totals[at] += time.perf_counter() - wall
        totals[at + 1] += time.thread_time() - cpu
        totals[at + 2] += 1

    while time.monotonic() < deadline:
        timed(0, det, {det_name: images[int(totals[2]) % len(images)]})
        while totals[5] < faces_per_image * totals[2]:
            timed(3, rec, {rec_name: faces[int(totals[5]) % len(faces)]})
    return totals


@dataclass(frozen=True)
class ModelCosts:
    """ms of one run of each model while every core runs them: wall time, and CPU."""

    detector_ms: float
    recognizer_ms: float
    detector_cpu_ms: float
    recognizer_cpu_ms: float

    def per_photo(self, faces: float) -> tuple[float, float]:
        """Wall ms and CPU ms of a photo's detector run and `faces` recognizer runs."""
        return (
            self.detector_ms + faces * self.recognizer_ms,
            self.detector_cpu_ms + faces * self.recognizer_cpu_ms,
        )


class ModelsOnEveryCore:
    """The two models alone, one process per core running single-threaded sessions (as the
    services do) all at once: what each run costs while every core is busy.

    On a machine whose cores share caches, memory bandwidth or a host, a run costs more
    with the other cores busy than alone (about 5 % on a two-core cloud machine), so the
    models' throughput over every core is measured, not worked out from one run alone."""

    def __init__(self, faces: list[np.ndarray], images: list[np.ndarray]) -> None:
        self.cores = os.cpu_count() or 1
        self.faces_per_image = len(faces) / max(1, len(images))
        # spawn: this process holds ONNX Runtime's threads, which fork would copy mid-state.
        self._pool = multiprocessing.get_context("spawn").Pool(
            self.cores, _load_models, (faces, [i.shape for i in images])
        )

    def measure(self, seconds: float = 2.0) -> ModelCosts:
        """What a run of each model costs, every core running them for `seconds`."""
        start = time.monotonic() + 0.2
        runs = self._pool.starmap(
            _run_models_until,
            [(start, start + seconds, self.faces_per_image)] * self.cores,
            chunksize=1,
        )
        det_wall, det_cpu, det_runs, rec_wall, rec_cpu, rec_runs = (
            sum(r[i] for r in runs) for i in range(6)
        )
        det_runs, rec_runs = max(1.0, det_runs), max(1.0, rec_runs)
        return ModelCosts(
            1000 * det_wall / det_runs,
            1000 * rec_wall / rec_runs,
            1000 * det_cpu / det_runs,
            1000 * rec_cpu / rec_runs,
        )

    def close(self) -> None:
        self._pool.terminate()
        self._pool.join()


def bench_raw_models(
    rounds: int, faces: list[np.ndarray], images: list[np.ndarray]
) -> list[tuple[str, float]]:
    """Model time alone, inputs prepared beforehand: (what, items per second), the best of
    three timings each, so a moment of another job on a shared machine does not lower the
    bound the services are judged against."""
    # The services' graphs (each PRelu vectorized) with ONNX Runtime's default threads.
    settings = OnnxSettings(intra_op_threads=0, inter_op_threads=0)

    def best_rate(session: ort.InferenceSession, inputs: list[np.ndarray], runs: int) -> float:
        name = session.get_inputs()[0].name
        session.run(None, {name: inputs[0]})
        times = []
        for _ in range(3):
            started = time.perf_counter()
            for i in range(runs):
                session.run(None, {name: inputs[i % len(inputs)]})
            times.append(time.perf_counter() - started)
        return runs / min(times)

    det = create_session(MODELS / "scrfd_500m_bnkps.onnx", settings)
    blob = np.random.default_rng(0).standard_normal((1, 3, 640, 640)).astype(np.float32)
    rows = [
        ("detector alone, 640x640 (images/s)", best_rate(det, [blob], 20 * rounds)),
        (
            "detector alone, at the small photos' proportions (images/s)",
            best_rate(det, images, 20 * rounds),
        ),
    ]
    rec = create_session(MODELS / "w600k_mbf.onnx", settings)
    for batch in (1, 8):
        batches = [
            np.concatenate([faces[(i + j) % len(faces)] for j in range(batch)])
            for i in range(len(faces))
        ]
        runs = max(1, 40 * rounds // batch)
        rows.append(
            (f"recognizer alone, batch {batch} (faces/s)", batch * best_rate(rec, batches, runs))
        )
    return rows


def recognizer_graphs_cpu_ms(faces: list[np.ndarray], turns: int = 3) -> tuple[float, float]:
    """CPU ms per face of the recognizer on one thread, batch 1: the file's graph as written,
    and as the services open it (each PRelu vectorized); the two in turn, medians."""
    sessions = [single_threaded_session("w600k_mbf.onnx", faces[0], s) for s in (False, True)]
    costs: list[list[float]] = [[], []]
    for _ in range(turns):
        for cost, (session, name) in zip(costs, sessions, strict=True):
            started = time.thread_time()
            for face in faces:
                session.run(None, {name: face})
            cost.append(1000 * (time.thread_time() - started) / len(faces))
    return statistics.median(costs[0]), statistics.median(costs[1])


def decode_for_detector(data: bytes) -> None:
    """The photo decoded for the detector's 640 pixels as detect decodes it, no limits: a
    JPEG by DCT scaling; HEIC, whose decoder cannot scale, whole, turned by its EXIF."""
    decode_image(data, 1 << 30, 1 << 30, fit=640)


def photo_bytes_rows(photos: list[bytes]) -> list[tuple[str, float]]:
    """CPU ms per photo of what each hop does with its bytes (score -> detect -> a decode
    worker), beside the cheapest decode of the same photos: is a copy worth cutting?"""

    def cpu_ms(step: Callable[[bytes], object], repeats: int = 20) -> float:
        started = time.process_time()
        for _ in range(repeats):
            for data in photos:
                step(data)
        return 1000 * (time.process_time() - started) / (repeats * len(photos))

    def request(data: bytes) -> detect_pb2.DetectRequest:
        return detect_pb2.DetectRequest(image=data, include_crops=True)

    return [
        ("copy of the bytes", cpu_ms(bytearray)),
        (
            "DetectRequest built, serialized, parsed",
            cpu_ms(
                lambda data: detect_pb2.DetectRequest.FromString(request(data).SerializeToString())
            ),
        ),
        ("pickled for a decode worker", cpu_ms(lambda data: pickle.loads(pickle.dumps(data)))),
        (
            "SHA-256 (score's cache key; detect's ImageInfo)",
            cpu_ms(lambda data: hashlib.sha256(data).digest()),
        ),
        (
            "baseline: decode at 1/4 scale",
            cpu_ms(decode_for_detector, repeats=2),
        ),
    ]


def floor_ms(photos: list[bytes], faces: list[np.ndarray], faces_per_photo: float) -> float:
    """CPU ms per photo of the work a pipeline with these decoders and models cannot skip:
    the photo decoded for the detector (`decode_for_detector`), the detector at that shape,
    the recognizer once per face.

    Finer decodes for small faces, alignment and transport are left out, so the library's
    CPU over this floor bounds, within the few ms a turn costs, the ratio a pipeline's
    throughput can reach against the library's when both keep the cores busy."""
    started = time.process_time()
    for data in photos:
        decode_for_detector(data)
    decode_ms = 1000 * (time.process_time() - started) / len(photos)
    detector_ms, recognizer_ms = model_cpu_ms(1, faces, detector_blobs(photos))
    return decode_ms + detector_ms + faces_per_photo * recognizer_ms


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start(service: str, port: int, tree: Path = REPO) -> subprocess.Popen[bytes]:
    """`facescore serve SERVICE` from `tree` (this checkout, or a baseline's), our models."""
    env = {
        **os.environ,
        f"{service.upper()}_PORT": str(port),
        f"{service.upper()}_METRICS_PORT": "0",
        f"{service.upper()}_LOG_LEVEL": "warning",
        f"{service.upper()}_MODEL_DIR": str(MODELS),
    }
    return subprocess.Popen(
        [sys.executable, "-m", "facescore.cli", "serve", service], cwd=tree, env=env
    )


def process_tree_cpu(pid: int) -> float:
    """CPU seconds of a process and its live children (detect's decode workers)."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(entry.name) == pid or int(fields[1]) == pid:
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


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
) -> tuple[tuple[float, float, float], list[float], float]:
    """images/s, p50 ms and p99 ms over all calls; each photo's own p50 ms; and the faces
    found per photo, on average."""
    found: list[int] = []
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
            found.append(len(faces))
            if faces:
                await embed.Embed(embed_pb2.EmbedRequest(crops=[f.crop for f in faces]))

        await one(photos[0])
        work = [(i, data) for _ in range(rounds) for i, data in enumerate(photos)]
        spans: list[Span] = []
        by_photo: list[list[float]] = [[] for _ in photos]

        async def worker(take: Callable[[], tuple[int, bytes] | None]) -> None:
            while (item := take()) is not None:
                t = time.perf_counter()
                await one(item[1])
                spans.append((t, time.perf_counter()))
                by_photo[item[0]].append(spans[-1][1] - t)

        queue = iter(work)
        jobs: list[Awaitable[None]] = [
            worker(lambda: next(queue, None)) for _ in range(concurrency)
        ]
        await asyncio.gather(*jobs)
        overall = summarize(spans)
        own_p50 = [1000 * statistics.median(own) for own in by_photo]
        return overall, own_p50, statistics.mean(found)


@dataclass
class Sample:
    """One measurement of one row: a pass of `rounds` over the photos at one concurrency."""

    images_s: float
    p50_ms: float
    p99_ms: float
    cpu_ms: float  # per photo, all of the pipeline's processes
    detect_ms: float | None = None  # per photo, detect and its decoders (services only)
    embed_ms: float | None = None
    found: float = 0.0  # faces found per photo (services only)
    # The models' own ms per photo (a detector run, a recognizer run per face found) with
    # every core running them, measured just before and after this sample: the model-time
    # bound of the same moment.
    models_ms: float | None = None
    models_cpu_ms: float | None = None  # the CPU those runs took


class Services:
    """detect and embed started from `tree`, serving until `stop`."""

    def __init__(self, tree: Path) -> None:
        detect_port, embed_port = free_port(), free_port()
        self.addresses = (f"127.0.0.1:{detect_port}", f"127.0.0.1:{embed_port}")
        self.processes = [start("detect", detect_port, tree), start("embed", embed_port, tree)]
        try:
            for address in self.addresses:
                wait_serving(address)
        except BaseException:
            self.stop()
            raise

    def measure(self, photos: list[bytes], rounds: int, concurrency: int) -> Sample:
        before = [process_tree_cpu(p.pid) for p in self.processes]
        stats, _, found = asyncio.run(bench_services(photos, rounds, concurrency, *self.addresses))
        calls = rounds * len(photos) + 1
        detect_s, embed_s = (
            process_tree_cpu(p.pid) - b for p, b in zip(self.processes, before, strict=True)
        )
        return Sample(
            *stats,
            cpu_ms=1000 * (detect_s + embed_s) / calls,
            detect_ms=1000 * detect_s / calls,
            embed_ms=1000 * embed_s / calls,
            found=found,
        )

    def stop(self) -> None:
        for process in self.processes:
            process.terminate()
            process.wait(30)


def median_sample(samples: list[Sample]) -> Sample:
    """Each figure's median over the repeats (each photo's p50 too)."""

    def med(values: list[float | None]) -> float | None:
        known = [v for v in values if v is not None]
        return statistics.median(known) if known else None

    return Sample(
        images_s=statistics.median(s.images_s for s in samples),
        p50_ms=statistics.median(s.p50_ms for s in samples),
        p99_ms=statistics.median(s.p99_ms for s in samples),
        cpu_ms=statistics.median(s.cpu_ms for s in samples),
        detect_ms=med([s.detect_ms for s in samples]),
        embed_ms=med([s.embed_ms for s in samples]),
        found=statistics.median(s.found for s in samples),
        models_ms=med([s.models_ms for s in samples]),
        models_cpu_ms=med([s.models_cpu_ms for s in samples]),
    )


def bound_shares(samples: list[Sample], rate_bound: float, cores: int) -> list[tuple[float, float]]:
    """(bound, share of it reached) for each sample that had the models measured beside it.

    The bound is the higher of `rate_bound` (the models' rates with ONNX Runtime's default
    threads) and every core running single-threaded sessions at what a run cost at that
    moment with all of them busy: on a shared machine whose speed drifts over a run, a bound
    measured once, minutes away from the rows, compares a fast spell with a slow one."""
    shares = []
    for sample in samples:
        if sample.models_ms is not None:
            bound = max(rate_bound, 1000 * cores / sample.models_ms)
            shares.append((bound, sample.images_s / bound))
    return shares


LIBRARY = "in-process insightface (ORT default threads)"
SERVICES = "services over gRPC"
BASELINE = "baseline services"


def measure_rows(
    photo_sets: dict[str, list[bytes]],
    rounds: dict[str, int],
    stacks: dict[str, Services],
    repeats: int,
    models_beside: Callable[[], ModelCosts] | None = None,
) -> tuple[dict[tuple[str, str, int], Sample], dict[tuple[str, str, int], list[Sample]]]:
    """Every row `repeats` times, the pipelines taking turns row by row (each repeat starts
    with the next one): a slow spell of a shared machine falls on all of them, not on one.
    `models_beside` gives what a detector run and a recognizer run cost with every core
    running them (ModelsOnEveryCore), measured before and after each sample of the services
    on the small photos at concurrency 4; the mean is kept with the sample.
    Returns each row's median sample and all its samples, by (pipeline, photo set,
    concurrency)."""
    pipelines = [LIBRARY, *stacks]
    samples: dict[tuple[str, str, int], list[Sample]] = {}
    for set_name, photos in photo_sets.items():
        for concurrency in (1, 4):
            for repeat in range(repeats):
                turn = repeat % len(pipelines)
                for pipeline in pipelines[turn:] + pipelines[:turn]:
                    if pipeline == LIBRARY:
                        sample = Sample(*bench_in_process(photos, rounds[set_name], concurrency))
                    else:
                        beside = models_beside if set_name == SMALL and concurrency == 4 else None
                        before = beside() if beside else None
                        sample = stacks[pipeline].measure(photos, rounds[set_name], concurrency)
                        if beside and before is not None:
                            costs = [c.per_photo(sample.found) for c in (before, beside())]
                            sample.models_ms = statistics.mean(wall for wall, _ in costs)
                            sample.models_cpu_ms = statistics.mean(cpu for _, cpu in costs)
                    samples.setdefault((pipeline, set_name, concurrency), []).append(sample)
    return {key: median_sample(row) for key, row in samples.items()}, samples


def paired_p50(
    photo_sets: dict[str, list[bytes]], rounds: int, stacks: dict[str, Services]
) -> dict[str, dict[str, list[float]]]:
    """Each phone photo's p50 ms at concurrency 1 in every phone set that ran, by stack and
    set, the versions of a photo called in turn (800x600, 12 MP JPEG, 12 MP HEIC, then the
    next photo), a pass through each stack in turn, for `rounds` passes: a slow spell of a
    shared machine falls on every version of a photo, and on every stack, alike, where rows
    measured minutes apart would compare one moment with another."""
    names = [name for name in (SAME_SMALL, "12 MP JPEG", "12 MP HEIC") if name in photo_sets]
    count = len(photo_sets[names[0]])
    interleaved = [photo_sets[name][i] for i in range(count) for name in names]
    calls: dict[str, list[list[float]]] = {label: [] for label in stacks}
    for _ in range(rounds):
        for label, stack in stacks.items():
            _, own, _ = asyncio.run(bench_services(interleaved, 1, 1, *stack.addresses))
            calls[label].append(own)
    paired = {}
    for label, passes in calls.items():
        p50 = [statistics.median(one[i] for one in passes) for i in range(len(interleaved))]
        paired[label] = {name: p50[k :: len(names)] for k, name in enumerate(names)}
    return paired


def decode_alone_p50(photo_sets: dict[str, list[bytes]], rounds: int) -> dict[str, list[float]]:
    """Each 12 MP photo's p50 wall ms in `decode_for_detector` (an HEIC's tiles on several
    threads), in this process with nothing else running: no pipeline with these decoders
    answers that photo sooner."""
    alone: dict[str, list[float]] = {}
    for name in ("12 MP JPEG", "12 MP HEIC"):
        if name not in photo_sets:
            continue
        times: list[list[float]] = [[] for _ in photo_sets[name]]
        for _ in range(rounds):
            for i, data in enumerate(photo_sets[name]):
                started = time.perf_counter()
                decode_for_detector(data)
                times[i].append(1000 * (time.perf_counter() - started))
        alone[name] = [statistics.median(one) for one in times]
    return alone


def per_photo_table(
    photos: list[PhonePhoto],
    paired: dict[str, dict[str, list[float]]],
    alone: dict[str, list[float]],
) -> Table:
    """Each phone photo's p50 at concurrency 1 against its own frame at 800x600: the same
    faces, fewer pixels (for the phone sets that ran; `paired_p50`); with a baseline, its
    ratios beside; and the decode alone against the same frame, the least any pipeline with
    these decoders can reach."""
    table = Table(
        title="services p50 ms at concurrency 1, each photo: 12 MP against 800x600, called in turn"
    )
    per_photo = paired[SERVICES]
    sets = [name for name in ("12 MP JPEG", "12 MP HEIC") if name in per_photo]
    table.add_column("photo")
    for column in ("faces", "800x600 JPEG"):
        table.add_column(column, justify="right")
    for name in sets:
        table.add_column(name, justify="right")
        table.add_column("ratio", justify="right")
        if BASELINE in paired:
            table.add_column("baseline's ratio", justify="right")
        table.add_column("decode alone", justify="right")
    for i, photo in enumerate(photos):
        same = per_photo[SAME_SMALL][i]
        cells = [photo.name.split(" ")[0], str(photo.faces), f"{same:.1f}"]
        for name in sets:
            cells += [f"{per_photo[name][i]:.1f}", f"{per_photo[name][i] / same:.2f}x"]
            if BASELINE in paired:
                base = paired[BASELINE]
                cells.append(f"{base[name][i] / base[SAME_SMALL][i]:.2f}x")
            cells.append(f"{alone[name][i]:.1f} ({alone[name][i] / same:.2f}x)")
        table.add_row(*cells)
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3, help="passes over the photos per row")
    parser.add_argument(
        "--phone-rounds",
        type=int,
        default=3,
        help="passes over the phone photos per row (one pass at concurrency 4 is a single wave)",
    )
    parser.add_argument(
        "--baseline-tree", type=Path, help="also run the services from this checkout"
    )
    parser.add_argument(
        "--sets",
        nargs="+",
        choices=PHOTO_SETS,
        default=list(PHOTO_SETS),
        help="photo sets to run (all by default; with fewer, only their rows are printed)",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="measure every row this many times, the pipelines taking turns; medians shown",
    )
    args = parser.parse_args()
    console = Console(width=120)
    small = single_face_photos()
    phones = phone_photos()
    photo_sets = {
        SMALL: small,
        SAME_SMALL: [p.data for p in phone_photos(("JPEG",), (800, 600))],
        "12 MP JPEG": [p.data for p in phones if p.name.endswith("JPEG")],
        "12 MP HEIC": [p.data for p in phones if p.name.endswith("HEIF")],
    }
    photo_sets = {name: photos for name, photos in photo_sets.items() if name in args.sets}
    rounds = {
        SMALL: args.rounds,
        SAME_SMALL: 3 * args.phone_rounds,
        "12 MP JPEG": args.phone_rounds,
        "12 MP HEIC": args.phone_rounds,
    }
    console.print(
        f"{len(small)} small photos of about one face each ({args.rounds} passes per row); "
        f"{len(phones) // 2} phone photos of 4032x3024 in JPEG and in HEIC, with "
        f"{', '.join(str(p.faces) for p in phones[::2])} faces ({args.phone_rounds} passes); "
        f"{os.cpu_count()} CPU cores; each row the median of {args.repeats} measurement(s), the "
        "pipelines taking turns. The machine may be shared: compare rows of this run."
    )

    table = Table(title="detect + align + embed, calls in flight = concurrency")
    for column in ("photos", "pipeline", "concurrency", "images/s", "p50 ms", "p99 ms"):
        table.add_column(column, justify="left" if column in ("photos", "pipeline") else "right")
    cpu = Table(title="CPU ms per photo, by service process (detect includes its decoders)")
    for column in ("photos", "pipeline", "concurrency", "detect", "embed", "total"):
        cpu.add_column(column, justify="left" if column in ("photos", "pipeline") else "right")
    small_faces = face_blobs(small)  # the recognizer's real inputs, for the floors and bound
    small_inputs = detector_blobs(small)
    stacks = {SERVICES: Services(REPO)}
    models: ModelsOnEveryCore | None = None
    try:
        if args.baseline_tree is not None:
            stacks[BASELINE] = Services(args.baseline_tree)
        if SMALL in photo_sets:  # the bound is measured beside the small photos' samples
            models = ModelsOnEveryCore(small_faces, small_inputs)
        rows, samples = measure_rows(
            photo_sets, rounds, stacks, args.repeats, models.measure if models else None
        )
        paired = (
            paired_p50(photo_sets, args.phone_rounds * args.repeats, stacks)
            if SAME_SMALL in photo_sets
            else {}
        )
    finally:
        if models is not None:
            models.close()
        for stack in stacks.values():
            stack.stop()
    for set_name in photo_sets:
        for pipeline in (LIBRARY, *stacks):
            for concurrency in (1, 4):
                row = rows[(pipeline, set_name, concurrency)]
                table.add_row(
                    set_name,
                    pipeline,
                    str(concurrency),
                    *(f"{v:.1f}" for v in (row.images_s, row.p50_ms, row.p99_ms)),
                )
                cpu.add_row(
                    set_name,
                    "in-process insightface" if pipeline == LIBRARY else pipeline,
                    str(concurrency),
                    *("" if v is None else f"{v:.1f}" for v in (row.detect_ms, row.embed_ms)),
                    f"{row.cpu_ms:.1f}",
                )
    ours = {(n, c): row for (p, n, c), row in rows.items() if p == SERVICES}
    library = {(n, c): row for (p, n, c), row in rows.items() if p == LIBRARY}
    console.print(table)
    console.print(cpu)
    for set_name in ("12 MP JPEG", "12 MP HEIC"):
        if set_name in photo_sets:
            c4, lib4 = ours[(set_name, 4)], library[(set_name, 4)]
            console.print(
                f"{set_name}: at concurrency 4 the services do "
                f"{c4.images_s / lib4.images_s:.2f}x in-process insightface's throughput at "
                f"concurrency 4; the library spends {lib4.cpu_ms / c4.cpu_ms:.2f}x the "
                "services' CPU per photo."
            )
            floor = floor_ms(photo_sets[set_name], small_faces, c4.found)
            console.print(
                f"{set_name}: decoding for the detector and the models alone cost {floor:.0f} "
                f"ms of CPU per photo, so a pipeline with these decoders and models can do at "
                f"most about {lib4.cpu_ms / floor:.2f}x the library's throughput at "
                "concurrency 4 while both keep the cores busy."
            )
    if SAME_SMALL in photo_sets:
        alone = decode_alone_p50(photo_sets, 3 * args.repeats)
        console.print(per_photo_table(phones[::2], paired, alone))
    if SMALL in photo_sets:
        print_bound(console, args.rounds, small, small_faces, small_inputs, stacks, rows, samples)
    if "12 MP JPEG" in photo_sets:
        hops = Table(title="12 MP JPEG bytes per hop, CPU ms per photo (same photos, same run)")
        hops.add_column("step")
        hops.add_column("ms", justify="right")
        for what, ms in photo_bytes_rows(photo_sets["12 MP JPEG"]):
            hops.add_row(what, f"{ms:.2f}")
        console.print(hops)
    if not {SMALL, SAME_SMALL} <= set(photo_sets):
        return
    small_p50 = ours[(SMALL, 1)].p50_ms
    ours_paired = paired[SERVICES]
    for set_name in ("12 MP JPEG", "12 MP HEIC"):
        if set_name not in photo_sets:
            continue
        ratios = [
            mp / same
            for mp, same in zip(ours_paired[set_name], ours_paired[SAME_SMALL], strict=True)
        ]
        console.print(
            f"{set_name}: each photo's services p50 at concurrency 1 is {min(ratios):.2f}x to "
            f"{max(ratios):.2f}x the p50 of its own frame at 800x600 (same faces, called in "
            f"turn); the set's p50 is {ours[(set_name, 1)].p50_ms / small_p50:.2f}x the small "
            "photos' p50."
        )


def print_bound(
    console: Console,
    rounds: int,
    small: list[bytes],
    small_faces: list[np.ndarray],
    small_inputs: list[np.ndarray],
    stacks: dict[str, Services],
    rows: dict[tuple[str, str, int], Sample],
    samples: dict[tuple[str, str, int], list[Sample]],
) -> None:
    """The models' raw rates, and the share of the model-time bound each pipeline reaches on
    the small photos at concurrency 4."""
    raw = Table(title="raw ONNX Runtime, model time alone (ORT default threads)")
    raw.add_column("model")
    raw.add_column("per second", justify="right")
    rates = bench_raw_models(rounds, small_faces, small_inputs)
    for what, rate in rates:
        raw.add_row(what, f"{rate:.1f}")
    console.print(raw)
    as_written, as_served = recognizer_graphs_cpu_ms(small_faces)
    console.print(
        f"The recognizer on one thread, batch 1, CPU ms per face: {as_written:.1f} with the "
        f"file's PRelu as written, {as_served:.1f} as the services run it, each PRelu "
        f"vectorized ({1 - as_served / as_written:.0%} less; medians of 3 passes in turn)."
    )

    # The bound counts the recognizer once per face found: the small photos are cut around
    # one face each, yet some hold a neighbour's too (a photo of the team has several); and
    # the detector at the shapes detect runs them at, not the square. Two estimates, the
    # higher taken: the models' rates with ONNX Runtime's default threads, and every core
    # running single-threaded sessions at once, which on two cores is often the faster (one
    # thread per session does not wait on the other). The latter is measured just before and
    # after each of the services' samples, so each is judged against the machine of its own
    # moment.
    per_small = rows[(SERVICES, SMALL, 1)].found
    detector_rate, recognizer_rate = rates[1][1], rates[3][1]
    rate_bound = 1 / (1 / detector_rate + per_small / recognizer_rate)
    cores = os.cpu_count() or 1
    for pipeline in stacks:
        shares = bound_shares(samples[(pipeline, SMALL, 4)], rate_bound, cores)
        row = rows[(pipeline, SMALL, 4)]
        console.print(
            f"Model-time bound on the small photos, {pipeline} ({per_small:.2f} faces per "
            f"photo found, {len(small_faces)} by insightface in {len(small)} photos): "
            f"{statistics.median(b for b, _ in shares):.1f} images/s, the higher of "
            f"{rate_bound:.1f} from the models' rates above and all {cores} cores running them "
            f"single-threaded at once, just before and after each sample ({row.models_ms:.1f} "
            f"ms per photo on each core, {row.models_cpu_ms:.1f} of it CPU; medians); at "
            f"concurrency 4 the services reach {statistics.median(s for _, s in shares):.0%} of "
            f"it (the median; samples: {', '.join(f'{s:.0%}' for _, s in shares)})."
        )
    # CPU time is steadier than wall time on a shared machine: the share of the services'
    # CPU per small photo that the two models' own runs account for, every core busy, at
    # concurrency 4, beside whose samples the models ran.
    models_cpu_ms = rows[(SERVICES, SMALL, 4)].models_cpu_ms or 0.0
    spent = rows[(SERVICES, SMALL, 4)].cpu_ms
    console.print(
        f"Small photos, concurrency 4: the models' own CPU per photo ({models_cpu_ms:.1f} ms, "
        f"every core running them) is {models_cpu_ms / spent:.0%} of the {spent:.1f} ms the "
        "services spend."
    )


if __name__ == "__main__":
    main()
