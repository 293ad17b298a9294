"""How long score's Snapshot call holds writes back: the embedded storage with N synthetic
faces (512-d random unit vectors, one subject each), snapshotted by GalleryStore.snapshot,
beside a plain copy of the same folder in the same run (the baseline: what copying the
files costs by itself). `uv run --no-sync python -m benchmarks.bench_snapshot --faces 50000`.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from services.score.settings import ScoreSettings
from services.score.storage import ModelIdentity, Point, face_id, open_store

DIM = 512
BATCH = 2000


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


async def measure(faces: int, work: Path) -> None:
    settings = ScoreSettings(data_dir=work / "live", index_delay_s=3600)
    store = await open_store(settings, ModelIdentity("bench", "0" * 64, DIM))
    try:
        await store.create_gallery("g")
        rng = np.random.default_rng(0)
        for start in range(0, faces, BATCH):
            vectors = rng.standard_normal((min(BATCH, faces - start), DIM)).astype(np.float32)
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            points = [
                Point(
                    face_id("g", f"s{start + i}", "0" * 64, 0),
                    {"gallery": "g", "subject_id": f"s{start + i}"},
                    row.tolist(),
                )
                for i, row in enumerate(vectors)
            ]
            await store.engine.upsert(store.collection, points)
        await store.engine.flush()
        started = time.perf_counter()
        shutil.copytree(work / "live" / "edge", work / "plain")
        plain = time.perf_counter() - started
        started = time.perf_counter()
        await store.snapshot(work / "snapshot")
        held = time.perf_counter() - started
    finally:
        await store.close()
    size = folder_bytes(work / "snapshot")
    print(f"{faces} faces, {size / 1e6:.0f} MB of shards")
    print(f"  Snapshot (writes held back)      {held:6.2f} s")
    print(f"  plain copy of the same folder    {plain:6.2f} s   (baseline)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--faces", type=int, default=50_000)
    parser.add_argument("--dir", type=Path, default=None, help="work folder (default: temp)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(dir=args.dir))
    try:
        asyncio.run(measure(args.faces, work))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
