"""Embedded storage at scale: search latency and recall per setting, insert rate, index
build time, memory and time from start to serving (`make bench-storage`; bench_score.py
prints the same frontier for its gallery).

Synthetic faces: random unit vectors (a face each, one subject each) in gallery "big", with
ArcFace embeddings of the shipped photos among them, and 26 faces in gallery "few" beside
them. Queries are noisy copies of stored faces at cosine 0.45-0.8 to their source, as a
genuine match of another photo would be, and the same photos mirrored (a real second image
of each face; their recall has its own column). Recall is the share
of queries, among those whose exact best match is at or above the decision threshold, whose
top-1 subject equals exact search's. Every setting is measured in the same run beside exact
search and a numpy brute-force top-k over the same vectors (the baseline).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from services.score.settings import ScoreSettings
from services.score.storage import (
    EdgeEngine,
    GalleryStore,
    IndexOptions,
    ModelIdentity,
    Point,
    SearchTuning,
    face_id,
    open_store,
)
from services.score.storage.layout import face_payload

DIM = 512
IDENTITY = ModelIdentity("synthetic", "0" * 64, DIM)
THRESHOLD = ScoreSettings.model_fields["threshold"].default
BATCH = 1000
FEW = 26


@dataclass(frozen=True)
class Setting:
    label: str
    tuning: SearchTuning


@dataclass(frozen=True)
class Layout:
    """One store: how its vectors are kept and indexed, and the search settings tried on it."""

    label: str
    index: IndexOptions
    settings: list[Setting]


SCAN = IndexOptions(hnsw_m=0, quantization="binary")  # the embedded default


def unit(rows: np.ndarray) -> np.ndarray:
    normalised: np.ndarray = rows / np.linalg.norm(rows, axis=-1, keepdims=True)
    return normalised.astype(np.float32)


def synthetic(size: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.empty((size, DIM), np.float32)
    for start in range(0, size, 100_000):
        stop = min(size, start + 100_000)
        out[start:stop] = unit(rng.standard_normal((stop - start, DIM), np.float32))
    return out


def noisy_copies(vectors: np.ndarray, count: int, seed: int = 1) -> np.ndarray:
    """Queries at cosine 0.45-0.8 to a stored face each."""
    rng = np.random.default_rng(seed)
    sources = vectors[rng.integers(0, len(vectors), count)]
    cosine = rng.uniform(0.45, 0.8, (count, 1)).astype(np.float32)
    noise = rng.standard_normal((count, DIM)).astype(np.float32)
    noise -= (noise * sources).sum(axis=1, keepdims=True) * sources  # orthogonal to the source
    return unit(cosine * sources + np.sqrt(1 - cosine**2) * unit(noise))


def real_faces() -> tuple[np.ndarray, np.ndarray]:
    """ArcFace embeddings of the shipped photos' largest faces (to store) and of the same
    photos mirrored (to query with: another image of the same face)."""
    import cv2

    from benchmarks.bench_inference import single_face_photos
    from benchmarks.bench_score import InProcessIdentify

    pipeline = InProcessIdentify()
    stored, queries = [], []
    for data in single_face_photos():
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        if image is None:
            raise RuntimeError("a shipped photo does not decode")
        mirrored = cv2.imencode(".jpg", cv2.flip(image, 1))[1].tobytes()
        face, twin = pipeline.embed(data), pipeline.embed(mirrored)
        if len(face) and len(twin):
            stored.append(face[0])
            queries.append(twin[0])
    return np.asarray(stored, np.float32), np.asarray(queries, np.float32)


def settings_for(data_dir: Path, index: IndexOptions, setting: Setting) -> ScoreSettings:
    tuning = setting.tuning
    return ScoreSettings(
        data_dir=data_dir,
        hnsw_m=index.hnsw_m,
        quantization=index.quantization,
        search_hnsw_ef=tuning.hnsw_ef or 128,
        search_exact=tuning.exact,
        search_oversampling=tuning.oversampling or 1.0,
        index_delay_s=3600,  # built here, timed, not in the background
    )


async def fill(
    data_dir: Path, vectors: np.ndarray, few: np.ndarray, index: IndexOptions
) -> dict[str, float]:
    """Write the faces through the engine, then build the index; seconds and rates."""
    settings = settings_for(data_dir, index, Setting("fill", SearchTuning()))
    store = await open_store(settings, IDENTITY)
    try:
        for name in ("big", "few"):
            await store.create_gallery(name)
        began = time.perf_counter()
        for gallery, rows in (("big", vectors), ("few", few)):
            for start in range(0, len(rows), BATCH):
                points = []
                for i in range(start, min(len(rows), start + BATCH)):
                    subject = f"{gallery}-{i:07d}"
                    point = face_id(gallery, subject, f"{i:064x}", 0)
                    payload = face_payload(IDENTITY, gallery, subject, point, "", face_index=0)
                    points.append(Point(point, payload, rows[i].tolist()))
                await store.engine.upsert(store.collection, points)
        inserted = time.perf_counter() - began
        engine = store.engine
        assert isinstance(engine, EdgeEngine)
        began = time.perf_counter()
        await engine.optimize(store.collection)
        built = time.perf_counter() - began
    finally:
        await store.close()
    total = len(vectors) + len(few)
    return {"insert_s": inserted, "insert_per_s": total / inserted, "index_s": built}


async def timed_searches(
    store: GalleryStore, gallery: str, queries: np.ndarray
) -> tuple[list[str], list[float], float]:
    top: list[str] = []
    latencies = []
    for query in queries:
        began = time.perf_counter()
        hits = await store.search(gallery, query.tolist(), 5)
        latencies.append((time.perf_counter() - began) * 1000)
        top.append(hits[0].subject_id if hits else "")
    return top, latencies, 0.0


def p(values: Sequence[float], q: float) -> float:
    return float(np.percentile(values, q))


async def frontier(
    data_dir: Path,
    layout: Layout,
    queries: np.ndarray,
    few_queries: np.ndarray,
    exact_top: list[str],
    exact_best: np.ndarray,
    table: Table,
    real: int = 0,
) -> None:
    """One row per setting; the last `real` queries are the mirrored photos."""
    counted = exact_best >= THRESHOLD
    synthetic_rows = np.arange(len(queries)) < len(queries) - real
    for setting in layout.settings:
        store = await open_store(settings_for(data_dir, layout.index, setting), IDENTITY)
        try:
            await timed_searches(store, "big", queries[:20])  # warm the caches
            top, latencies, _ = await timed_searches(store, "big", queries)
            _, few_latencies, _ = await timed_searches(store, "few", few_queries)
        finally:
            await store.close()
        same = np.array([a == b for a, b in zip(top, exact_top, strict=True)])
        table.add_row(
            setting.label,
            f"{p(latencies, 50):.2f}",
            f"{p(latencies, 99):.2f}",
            share(same, counted & synthetic_rows),
            share(same, counted & ~synthetic_rows) if real else "-",
            f"{p(few_latencies, 50):.2f}",
        )


def share(same: np.ndarray, rows: np.ndarray) -> str:
    agree, total = int((same & rows).sum()), int(rows.sum())
    return f"{agree / max(1, total):.2%} ({agree}/{total})"


def numpy_baseline_ms(vectors: np.ndarray, queries: np.ndarray) -> float:
    latencies = []
    for query in queries[:100]:
        began = time.perf_counter()
        scores = vectors @ query
        np.argpartition(-scores, 5)[:5]
        latencies.append((time.perf_counter() - began) * 1000)
    return p(latencies, 50)


PROBE = """
import asyncio, sys, time, resource
from pathlib import Path
began = time.perf_counter()
from benchmarks.bench_storage import IDENTITY, settings_for, Setting
from services.score.storage import IndexOptions, SearchTuning, open_store
async def main():
    index = IndexOptions(hnsw_m=int(sys.argv[2]), quantization=sys.argv[3])
    settings = settings_for(Path(sys.argv[1]), index, Setting("", SearchTuning()))
    store = await open_store(settings, IDENTITY)
    await store.search("big", [1.0] + [0.0] * 511, 5)
    serving = time.perf_counter() - began
    rss = int(open("/proc/self/status").read().split("VmRSS:")[1].split()[0]) / 1024
    print(f"{serving:.2f} {rss:.0f}")
    await store.close()
asyncio.run(main())
"""


def start_and_memory(data_dir: Path, index: IndexOptions) -> tuple[float, float]:
    """A fresh process opening the store and answering one search: seconds and RSS MiB."""
    out = (
        subprocess.run(
            [sys.executable, "-c", PROBE, str(data_dir), str(index.hnsw_m), index.quantization],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).resolve().parent.parent,
        )
        .stdout.strip()
        .splitlines()[-1]
        .split()
    )  # after score's log lines
    return float(out[0]), float(out[1])


DEFAULT_EFS = (64, 128, 256, 512, 1024)
LAYOUTS = ("scan", "graph", "graph-int8")


def layouts(names: Sequence[str], efs: Sequence[int]) -> list[Layout]:
    exact = Setting("exact", SearchTuning(exact=True))
    offered = {
        "scan": Layout(
            "binary codes, no graph (the embedded default)",
            SCAN,
            [exact]
            + [
                Setting(f"scan binary, rescore x{o:g}", SearchTuning(oversampling=o))
                for o in (1.0, 2.0, 4.0)
            ],
        ),
        "graph": Layout(
            "HNSW m 16, float32",
            IndexOptions(hnsw_m=16, quantization="none"),
            [exact] + [Setting(f"hnsw ef {ef}", SearchTuning(hnsw_ef=ef)) for ef in efs],
        ),
        "graph-int8": Layout(
            "HNSW m 16, int8",
            IndexOptions(hnsw_m=16, quantization="int8"),
            [
                Setting(f"int8 + rescore x2, ef {ef}", SearchTuning(hnsw_ef=ef, oversampling=2.0))
                for ef in efs[1:]
            ],
        ),
    }
    return [offered[name] for name in names]


async def run(size: int, queries_n: int, plans: Sequence[Layout], console: Console) -> None:
    work = Path(tempfile.mkdtemp(prefix="facescore-bench-storage-"))
    photos, mirrored = real_faces()
    vectors = np.vstack([synthetic(size - len(photos)), photos])  # the photos among them
    few = synthetic(FEW, seed=2)
    queries = np.vstack([noisy_copies(vectors, queries_n), mirrored])
    few_queries = noisy_copies(few, 100, seed=3)
    baseline = numpy_baseline_ms(vectors, queries)
    exact_scores = queries @ vectors.T if size <= 200_000 else None
    exact_best = (
        exact_scores.max(axis=1)
        if exact_scores is not None
        else np.array([float((vectors @ q).max()) for q in queries])
    )
    exact_top = [
        f"big-{int(i):07d}"
        for i in (
            exact_scores.argmax(axis=1)
            if exact_scores is not None
            else [int(np.argmax(vectors @ q)) for q in queries]
        )
    ]
    for number, layout in enumerate(plans):
        data_dir = work / f"store-{number}"
        figures = await fill(data_dir, vectors, few, layout.index)
        serving, rss = start_and_memory(data_dir, layout.index)
        console.print(
            f"{size:,} faces, {layout.label}: inserted in {figures['insert_s']:.1f} s "
            f"({figures['insert_per_s']:,.0f} faces/s), index built in {figures['index_s']:.1f} s; "
            f"a fresh process serves after {serving:.2f} s with RSS {rss:,.0f} MiB"
        )
        table = Table(
            title=f"Search among {size:,} faces, top-5, {len(queries)} queries at cosine 0.45-0.8 "
            f"(numpy brute-force top-5, same run: p50 {baseline:.2f} ms)"
        )
        for column in (
            "setting",
            "p50 ms",
            "p99 ms",
            f"top-1 = exact (best >= {THRESHOLD})",
            "mirrored photos",
            f"{FEW}-face gallery p50 ms",
        ):
            table.add_column(column, justify="right")
        await frontier(
            data_dir, layout, queries, few_queries, exact_top, exact_best, table, len(mirrored)
        )
        console.print(table)
    shutil.rmtree(work, ignore_errors=True)
    load = os.getloadavg()[0]
    console.print(
        f"machine load average {load:.1f} on {os.cpu_count()} cores during the run "
        f"(others share it: compare rows with each other); peak RSS of this process "
        f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MiB"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--sizes", default="100000", help="faces in the big gallery, comma-separated"
    )
    parser.add_argument("--queries", type=int, default=400, help="queries per setting")
    parser.add_argument(
        "--ef", default=",".join(map(str, DEFAULT_EFS)), help="HNSW ef values to try"
    )
    parser.add_argument(
        "--layouts",
        default="scan,graph",
        help=f"stores to build and search, comma-separated, of {', '.join(LAYOUTS)} (the "
        "graphs' builds take minutes per 100,000 faces on 2 cores)",
    )
    args = parser.parse_args()
    console = Console(width=140)
    efs = [int(e) for e in args.ef.split(",") if e]
    plans = layouts([name for name in args.layouts.split(",") if name], efs)
    for size in (int(s) for s in args.sizes.split(",") if s):
        asyncio.run(run(size, args.queries, plans, console))


if __name__ == "__main__":
    main()
