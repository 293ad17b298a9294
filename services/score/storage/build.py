"""The child process of an embedded index rebuild: `python -m services.score.storage.build DIR`.

DIR holds the export (vectors.f32, points.jsonl) and options.json; this writes the points
into a new shard at DIR/shard, builds its HNSW index (qdrant-edge's optimize(), which holds
this process's GIL, not score's) and closes it. Exit status 0 when the shard is complete.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import qdrant_edge as qe

from services.score.storage.edge import (
    OPTIONS_FILE,
    POINTS_FILE,
    SHARD_DIR,
    VECTORS_FILE,
    EdgeEngine,
)
from services.score.storage.engine import CollectionSpec, IndexOptions

BATCH = 1000


def build(folder: Path) -> None:
    options = json.loads((folder / OPTIONS_FILE).read_text())
    spec = CollectionSpec(options["size"], options["distance"], {}, options["indexes"])
    engine = EdgeEngine(
        folder,
        index=IndexOptions(**options["index"]),
        indexing_threshold_kb=options["indexing_threshold_kb"],
    )
    shard = qe.EdgeShard.create(str(folder / SHARD_DIR), engine.config(spec))
    for field, tenant in spec.indexes.items():
        params = qe.KeywordIndexParams(is_tenant=tenant or None)
        shard.update(qe.UpdateOperation.create_field_index(field, params))
    exported = folder / VECTORS_FILE
    vectors = (
        np.memmap(exported, np.float32, "r").reshape(-1, spec.size)
        if exported.stat().st_size  # numpy cannot map an empty file
        else np.empty((0, spec.size), np.float32)
    )
    batch: list[qe.Point] = []
    with (folder / POINTS_FILE).open() as lines:
        for row, line in enumerate(lines):
            point_id, payload = json.loads(line)
            batch.append(qe.Point(point_id, vectors[row].tolist(), payload))
            if len(batch) == BATCH:
                shard.update(qe.UpdateOperation.upsert_points(batch))
                batch = []
    if batch:
        shard.update(qe.UpdateOperation.upsert_points(batch))
    shard.optimize()
    shard.flush()
    shard.close()


if __name__ == "__main__":
    build(Path(sys.argv[1]))
