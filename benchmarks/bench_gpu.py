"""Model throughput on the configured execution provider, with the CPU beside it.

Run with `make bench-gpu` (on a GPU machine: `make bench-gpu ORT=gpu`, which installs
onnxruntime-gpu and passes `--providers cuda`). Embed faces/s at every batch bucket the
service pads to, and detect images/s, measured through the services' own model classes
(the same session factory, provider options and warm-up), first on the configured
providers, then on the CPU in the same run as the baseline. Each cell runs for
`--seconds`, so the whole run ends in a few minutes whatever the hardware.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

import cv2
import numpy as np
import onnxruntime as ort
from rich.console import Console
from rich.table import Table

from services.common.models import insightface_image, vectron_file
from services.common.settings import provider_name
from services.detect.detector import FaceDetector, align
from services.detect.settings import DetectSettings
from services.embed.batcher import batch_buckets
from services.embed.recognizer import FaceRecognizer
from services.embed.settings import EmbedSettings

GOAL_FACES_PER_S = 5000  # embed at batch 32 on a data-centre GPU (issue 13)
CPU = ["CPUExecutionProvider"]


def photos() -> list[np.ndarray]:
    paths = [vectron_file(n) for n in ("players.jpg", "gdp.jpg", "yaoming.jpg")]
    images = [cv2.imread(str(path)) for path in [*paths, insightface_image("t1.jpg")]]
    return [image for image in images if image is not None]


Rate = tuple[float, float]  # items per second, ms per call


def rate(work: Callable[[], object], items: int, seconds: float) -> Rate:
    """(items per second, ms per call) over at least `seconds` and 3 calls."""
    calls, started = 0, time.perf_counter()
    while calls < 3 or time.perf_counter() - started < seconds:
        work()
        calls += 1
    elapsed = time.perf_counter() - started
    return calls * items / elapsed, elapsed / calls * 1000


def crops_of(settings: DetectSettings, images: list[np.ndarray], count: int) -> list[np.ndarray]:
    """`count` aligned crops of the sample photos' faces, repeated as needed."""
    detector = FaceDetector(settings)
    detector.load()
    crops = [
        align(image, face.landmarks) for image in images for face in detector.detect(image, 0.5)
    ]
    return [crops[i % len(crops)] for i in range(count)]


def loaded_recognizer(settings: EmbedSettings) -> FaceRecognizer:
    recognizer = FaceRecognizer(settings)
    recognizer.load()
    recognizer.warm_up()  # every bucket once, as the service does before it serves
    return recognizer


def loaded_detector(settings: DetectSettings) -> FaceDetector:
    detector = FaceDetector(settings)
    detector.load()
    detector.warm_up()
    return detector


def embed_rate(recognizer: FaceRecognizer, batch: list[np.ndarray], seconds: float) -> Rate:
    return rate(lambda: recognizer.embed(batch), len(batch), seconds)


def detect_rate(detector: FaceDetector, images: list[np.ndarray], seconds: float) -> Rate:
    def all_photos() -> None:
        for image in images:
            detector.detect(image, detector.settings.score_threshold)

    per_s, ms = rate(all_photos, len(images), seconds)
    return per_s, ms / len(images)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--providers",
        help="providers for both models, e.g. cuda (default: DETECT_/EMBED_PROVIDERS)",
    )
    parser.add_argument("--seconds", type=float, default=3.0, help="time per cell")
    args = parser.parse_args()
    started = time.perf_counter()
    console = Console(width=110)

    override: dict[str, object] = {}
    if args.providers:
        override["providers"] = [provider_name(p) for p in args.providers.split(",")]
    embed_settings = EmbedSettings().model_copy(update=override)
    detect_settings = DetectSettings().model_copy(update=override)
    images = photos()
    baseline = DetectSettings(providers=CPU)
    crops = crops_of(baseline, images, embed_settings.max_batch)
    console.print(
        f"ONNX Runtime {ort.__version__} ({', '.join(ort.get_available_providers())}), "
        f"{os.cpu_count()} CPU cores; intra-op threads: embed {embed_settings.intra_op_threads}, "
        f"detect {detect_settings.intra_op_threads} (0 = all cores); {args.seconds:g} s per cell"
    )

    # Configured and CPU cells alternate, so that a busy machine disturbs both alike.
    recognizers = [
        loaded_recognizer(embed_settings),
        loaded_recognizer(embed_settings.model_copy(update={"providers": CPU})),
    ]
    embed_rows = {
        size: [embed_rate(r, crops[:size], args.seconds) for r in recognizers]
        for size in batch_buckets(embed_settings.max_batch)
    }
    detectors = [loaded_detector(detect_settings), loaded_detector(baseline)]
    detect_rows = [detect_rate(d, images, args.seconds) for d in detectors]

    configured = ", ".join(recognizers[0].providers)
    table = Table(title=f"embed: faces/s by batch size (configured: {configured})")
    for column in ("batch", "configured faces/s", "ms/batch", "CPU faces/s", "ms/batch", "ratio"):
        table.add_column(column, justify="right")
    for size, ((per_s, ms), (cpu_per_s, cpu_ms)) in embed_rows.items():
        table.add_row(
            str(size), f"{per_s:.0f}", f"{ms:.1f}", f"{cpu_per_s:.0f}", f"{cpu_ms:.1f}",
            f"{per_s / cpu_per_s:.2f}",
        )  # fmt: skip
    console.print(table)

    table = Table(title=f"detect at {detect_settings.input_size}: images/s, {len(images)} photos")
    for column in ("providers", "images/s", "ms/image"):
        table.add_column(column, justify="right")
    for label, (per_s, ms) in zip(
        (", ".join(detectors[0].providers), "CPU baseline"), detect_rows, strict=True
    ):
        table.add_row(label, f"{per_s:.1f}", f"{ms:.1f}")
    console.print(table)

    largest = max(embed_rows)
    reached = embed_rows[largest][0][0]
    on_gpu = recognizers[0].providers != CPU
    verdict = ("met" if reached >= GOAL_FACES_PER_S else "not met") if on_gpu else "no GPU here"
    console.print(
        f"Goal on a data-centre GPU: >= {GOAL_FACES_PER_S} faces/s at batch 32; "
        f"{reached:.0f} faces/s at batch {largest} on {configured}: {verdict}. "
        f"Whole run: {time.perf_counter() - started:.0f} s."
    )


if __name__ == "__main__":
    main()
