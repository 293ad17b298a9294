"""`facescore calibrate DIR`: the face-match threshold, measured on labeled photos.

DIR holds one folder per person, ``DIR/<subject>/<photo>``. Every photo is decoded, the
detector runs on it, the largest face is aligned and embedded, in this process with the
models the services load. Every two photos of the same subject make a genuine pair, every
two photos of different subjects an impostor pair; a pair's score is the cosine similarity
of its embeddings, the score the score service compares with ``SCORE_THRESHOLD`` (a match
is a similarity at or above it).

From the two score distributions come the true-positive rate (TPR, genuine pairs accepted)
and the false-accept rate (FAR, impostor pairs accepted) at candidate thresholds, and the
smallest threshold whose FAR is at most a target. The pure functions (:func:`pair_scores`,
:func:`rates`, :func:`threshold_for_far`, ...) take arrays of similarities; the I/O lives
in :func:`find_photos`, :func:`embed_photos`, :func:`render` and :func:`run`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from rich.console import Console

    from services.detect.detector import FaceDetector
    from services.embed.recognizer import FaceRecognizer

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.intp]

DEFAULT_TARGET_FAR = 0.001
DEFAULT_THRESHOLDS: tuple[float, ...] = tuple(round(0.20 + 0.05 * i, 2) for i in range(9))
# Name and percentile of each figure of a distribution.
PERCENTILES: tuple[tuple[str, float], ...] = (
    ("min", 0),
    ("p1", 1),
    ("p5", 5),
    ("median", 50),
    ("p95", 95),
    ("p99", 99),
    ("max", 100),
)
HISTOGRAM_BIN = 0.1
# Zero false accepts among n impostor pairs bound the FAR below 3/n at 95 % confidence.
RULE_OF_THREE = 3.0


class CalibrationError(Exception):
    """DIR cannot be calibrated from; the message says why."""


# ---------------------------------------------------------------------------------------------
# Pure functions: similarities in, figures out.


def _scores(values: npt.ArrayLike) -> FloatArray:
    array = np.asarray(values, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(array)):
        raise ValueError("similarities must be finite numbers")
    return array


@dataclass(frozen=True, eq=False)  # eq would compare arrays elementwise and fail.
class Pairs:
    """The similarity of every pair of photos, split into genuine and impostor pairs."""

    genuine: FloatArray  # Same subject, different photos.
    impostor: FloatArray  # Different subjects.
    genuine_index: IntArray  # (n_genuine, 2): the photos (row indices) of each genuine pair.
    impostor_index: IntArray  # (n_impostor, 2)


def pair_scores(embeddings: npt.ArrayLike, labels: Sequence[str]) -> Pairs:
    """Cosine similarity of every unordered pair of rows; rows must be L2-normalised."""
    matrix = np.asarray(embeddings, dtype=np.float64)
    if matrix.ndim != 2 or matrix.shape[0] != len(labels):
        raise ValueError(
            f"expected one embedding row per label ({len(labels)}), got shape {matrix.shape}"
        )
    similarity = matrix @ matrix.T
    first, second = np.triu_indices(len(labels), k=1)
    names = np.asarray(labels, dtype=object)
    same = names[first] == names[second]
    index = np.stack([first, second], axis=1).astype(np.intp).reshape(-1, 2)
    scores = similarity[first, second]
    return Pairs(
        genuine=scores[same],
        impostor=scores[~same],
        genuine_index=index[same],
        impostor_index=index[~same],
    )


@dataclass(frozen=True)
class Rate:
    """What a threshold does: a pair matches when its similarity is at or above it."""

    threshold: float
    tpr: float | None  # Genuine pairs accepted / genuine pairs; None without genuine pairs.
    far: float | None  # Impostor pairs accepted / impostor pairs; None without impostor pairs.
    genuine_accepted: int
    genuine: int
    impostor_accepted: int
    impostor: int


def rate_at(genuine: npt.ArrayLike, impostor: npt.ArrayLike, threshold: float) -> Rate:
    """TPR and FAR at one threshold (similarity >= threshold is a match)."""
    good, bad = _scores(genuine), _scores(impostor)
    good_in = int(np.count_nonzero(good >= threshold))
    bad_in = int(np.count_nonzero(bad >= threshold))
    return Rate(
        threshold=float(threshold),
        tpr=good_in / good.size if good.size else None,
        far=bad_in / bad.size if bad.size else None,
        genuine_accepted=good_in,
        genuine=int(good.size),
        impostor_accepted=bad_in,
        impostor=int(bad.size),
    )


def rates(
    genuine: npt.ArrayLike, impostor: npt.ArrayLike, thresholds: Sequence[float]
) -> list[Rate]:
    """TPR and FAR at each threshold, in the order given."""
    good, bad = _scores(genuine), _scores(impostor)
    return [rate_at(good, bad, threshold) for threshold in thresholds]


@dataclass(frozen=True)
class FarThreshold:
    """The smallest threshold whose FAR is at most a target, and what it does."""

    target_far: float
    threshold: float  # Exact: a float just above `bound`, or -1.0 when every pair may pass.
    bound: float | None  # The impostor similarity the threshold must exceed; None: no bound.
    far: float
    tpr: float | None
    impostor_accepted: int
    impostor: int
    genuine_accepted: int
    genuine: int
    far_resolution: float  # 1 / impostor pairs: the smallest FAR step the data can show.
    resolved: bool  # far_resolution <= target_far: the data can tell the target from zero.


def allowed_false_accepts(impostor_pairs: int, target_far: float) -> int:
    """The most impostor pairs that may be accepted while FAR = k / n stays <= target_far."""
    if impostor_pairs <= 0:
        return 0
    allowed = min(impostor_pairs, max(0, math.floor(target_far * impostor_pairs)))
    # floor() of a float product can land one off (0.29 * 100 = 28.999...); settle on exact k/n.
    while allowed < impostor_pairs and (allowed + 1) / impostor_pairs <= target_far:
        allowed += 1
    while allowed > 0 and allowed / impostor_pairs > target_far:
        allowed -= 1
    return allowed


def threshold_for_far(
    genuine: npt.ArrayLike, impostor: npt.ArrayLike, target_far: float
) -> FarThreshold | None:
    """The smallest threshold whose FAR <= target_far, with the TPR there; None without impostors.

    With k the false accepts the target allows, every threshold above the (k+1)-th highest
    impostor similarity qualifies and none at or below it does, so the answer is the next float
    above that similarity. Impostor pairs tied with it are all rejected, so the FAR reached can
    be below the target. When the target allows every impostor pair, the answer is -1.0, the
    lowest cosine similarity.
    """
    if not 0.0 <= target_far <= 1.0:
        raise ValueError(f"target_far must lie in [0, 1], got {target_far}")
    good, bad = _scores(genuine), _scores(impostor)
    if bad.size == 0:
        return None
    allowed = allowed_false_accepts(int(bad.size), target_far)
    bound: float | None
    if allowed >= bad.size:
        bound, threshold = None, -1.0
    else:
        descending = np.sort(bad)[::-1]
        bound = float(descending[allowed])
        threshold = float(np.nextafter(bound, np.inf))
    rate = rate_at(good, bad, threshold)
    assert rate.far is not None
    return FarThreshold(
        target_far=float(target_far),
        threshold=threshold,
        bound=bound,
        far=rate.far,
        tpr=rate.tpr,
        impostor_accepted=rate.impostor_accepted,
        impostor=rate.impostor,
        genuine_accepted=rate.genuine_accepted,
        genuine=rate.genuine,
        far_resolution=1.0 / bad.size,
        resolved=1.0 / bad.size <= target_far,
    )


def distribution(scores: npt.ArrayLike) -> dict[str, float] | None:
    """min, p1, p5, median, p95, p99, max of the scores (linear interpolation); None if empty."""
    values = _scores(scores)
    if values.size == 0:
        return None
    figures = np.percentile(values, [q for _, q in PERCENTILES])
    return {name: float(value) for (name, _), value in zip(PERCENTILES, figures, strict=True)}


@dataclass(frozen=True)
class Bin:
    low: float
    high: float
    genuine: int
    impostor: int


def histogram(
    genuine: npt.ArrayLike, impostor: npt.ArrayLike, width: float = HISTOGRAM_BIN
) -> list[Bin]:
    """Counts of both distributions in bins [k*width, (k+1)*width) spanning all scores."""
    if width <= 0:
        raise ValueError("the bin width must be positive")
    good, bad = _scores(genuine), _scores(impostor)
    everything = np.concatenate([good, bad])
    if everything.size == 0:
        return []

    # The small nudge keeps a score such as 0.3 (0.29999... / 0.1) in the bin it names.
    def index(values: FloatArray) -> npt.NDArray[np.int64]:
        return np.floor(values / width + 1e-9).astype(np.int64)

    lowest, highest = int(index(everything).min()), int(index(everything).max())
    count = highest - lowest + 1
    good_counts = np.bincount(index(good) - lowest, minlength=count)
    bad_counts = np.bincount(index(bad) - lowest, minlength=count)
    return [
        Bin(
            low=round((lowest + k) * width, 10),
            high=round((lowest + k + 1) * width, 10),
            genuine=int(good_counts[k]),
            impostor=int(bad_counts[k]),
        )
        for k in range(count)
    ]


def extremes(scores: npt.ArrayLike, count: int, highest: bool) -> list[int]:
    """Positions of the `count` highest (or lowest) scores, most extreme first; stable on ties."""
    values = _scores(scores)
    order = np.argsort(-values if highest else values, kind="stable")
    return [int(i) for i in order[:count]]


def parse_thresholds(text: str) -> list[float]:
    """Parse "0.3,0.35,0.4" into [0.3, 0.35, 0.4]; each must be a similarity in (-1, 1)."""
    values: list[float] = []
    for part in text.split(","):
        if not part.strip():
            continue
        try:
            value = float(part)
        except ValueError:
            raise ValueError(f"--thresholds: not a number: {part.strip()!r}") from None
        if not -1.0 < value < 1.0:
            raise ValueError(f"--thresholds: each must lie strictly between -1 and 1, not {value}")
        values.append(value)
    if not values:
        raise ValueError("--thresholds: no thresholds given")
    return values


# ---------------------------------------------------------------------------------------------
# Photos: finding, decoding, detecting, embedding.


@dataclass(frozen=True)
class Photo:
    subject: str
    path: Path
    name: str  # "<subject>/<path inside the subject's folder>", as reports show it.


def find_photos(root: Path) -> list[Photo]:
    """Every non-hidden file under DIR/<subject>/, subjects and files in name order."""
    root = Path(root)
    if not root.is_dir():
        raise CalibrationError(f"{root} is not a folder: expected DIR/<subject>/<photo>")
    subjects = sorted(
        entry for entry in root.iterdir() if entry.is_dir() and not entry.name.startswith(".")
    )
    if not subjects:
        raise CalibrationError(
            f"{root} has no subject folders: expected DIR/<subject>/<photo>, one folder a person"
        )
    photos: list[Photo] = []
    for folder in subjects:
        for path in sorted(folder.rglob("*")):
            inside = path.relative_to(folder)
            if path.is_file() and not any(part.startswith(".") for part in inside.parts):
                photos.append(Photo(folder.name, path, f"{folder.name}/{inside.as_posix()}"))
    if not photos:
        raise CalibrationError(f"the subject folders of {root} hold no files")
    return photos


@dataclass(frozen=True, eq=False)
class Embedded:
    photo: Photo
    embedding: npt.NDArray[np.float32]
    faces: int  # Faces the detector found; the largest was embedded.
    detection_score: float


@dataclass(frozen=True)
class Skipped:
    photo: Photo
    reason: str


def embed_photos(
    photos: Sequence[Photo],
    detector: FaceDetector,
    recognizer: FaceRecognizer,
    progress: Callable[[Photo], None] | None = None,
) -> tuple[list[Embedded], list[Skipped]]:
    """Decode, detect and embed each photo's largest face; report the photos that give none."""
    from services.common.errors import FaceScoreError
    from services.common.images import decode_image
    from services.detect.detector import align

    settings = detector.settings
    embedded: list[Embedded] = []
    skipped: list[Skipped] = []
    seen: dict[str, Photo] = {}
    pending: list[tuple[Photo, np.ndarray, int, float]] = []

    def flush() -> None:
        if pending:
            vectors = recognizer.embed([crop for _, crop, _, _ in pending])
            for (photo, _, faces, score), vector in zip(pending, vectors, strict=True):
                embedded.append(Embedded(photo, vector.astype(np.float32), faces, score))
            pending.clear()

    for photo in photos:
        if progress is not None:
            progress(photo)
        try:
            data = photo.path.read_bytes()
            image = decode_image(data, settings.max_image_bytes, settings.max_image_pixels)
        except FaceScoreError as error:
            skipped.append(Skipped(photo, f"not decoded: {error.message}"))
            continue
        except OSError as error:
            skipped.append(Skipped(photo, f"not read: {error.strerror or error}"))
            continue
        first = seen.setdefault(image.sha256, photo)
        if first is not photo:
            # The same file twice would make a genuine pair of similarity 1.0, or under two
            # subjects an impostor pair of 1.0: neither measures anything.
            other = "" if first.subject == photo.subject else ", another subject: mislabeled?"
            skipped.append(Skipped(photo, f"the same file as {first.name}{other}"))
            continue
        faces = detector.detect(
            image.bgr, settings.score_threshold, min_face_size=settings.min_face_size
        )
        if not faces:
            skipped.append(
                Skipped(photo, f"no face found (detection score >= {settings.score_threshold})")
            )
            continue
        largest = faces[0]
        pending.append((photo, align(image.bgr, largest.landmarks), len(faces), largest.score))
        if len(pending) >= recognizer.settings.max_batch:
            flush()
    flush()
    return embedded, skipped


# ---------------------------------------------------------------------------------------------
# The figures.


@dataclass(frozen=True)
class PairView:
    first: str
    second: str
    similarity: float


@dataclass
class Calibration:
    """Everything `facescore calibrate` prints; :meth:`as_json` for machines."""

    dir: str
    models: dict[str, dict[str, str]]
    subjects: int
    photos_found: int
    photos: int
    photos_per_subject: dict[str, int]
    skipped: list[dict[str, str]]
    several_faces: list[dict[str, Any]]
    genuine_pairs: int
    impostor_pairs: int
    distributions: dict[str, dict[str, float] | None]
    histogram: list[Bin]
    current_threshold: float
    rates: list[Rate]
    target: FarThreshold | None
    target_far: float
    lowest_genuine: list[PairView]
    highest_impostor: list[PairView]
    notes: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """Both kinds of pair exist, so the figures say something about a threshold."""
        return self.genuine_pairs > 0 and self.impostor_pairs > 0

    def as_json(self) -> str:
        return json.dumps(asdict(self), indent=2, allow_nan=False)


def calibrate(
    embedded: Sequence[Embedded],
    skipped: Sequence[Skipped],
    *,
    directory: str,
    photos_found: int,
    thresholds: Sequence[float],
    target_far: float,
    current_threshold: float,
    models: dict[str, dict[str, str]] | None = None,
    worst: int = 3,
) -> Calibration:
    """The figures from the embedded photos (pure: no models, no files)."""
    labels = [item.photo.subject for item in embedded]
    names = [item.photo.name for item in embedded]
    if embedded:
        pairs = pair_scores(np.stack([item.embedding for item in embedded]), labels)
    else:
        empty = np.zeros(0, np.float64)
        no_index = np.zeros((0, 2), np.intp)
        pairs = Pairs(empty, empty, no_index, no_index)
    per_subject: dict[str, int] = {}
    for label in labels:
        per_subject[label] = per_subject.get(label, 0) + 1
    candidate = sorted({*(float(t) for t in thresholds), float(current_threshold)})

    def view(scores: FloatArray, index: IntArray, highest: bool) -> list[PairView]:
        return [
            PairView(names[index[i, 0]], names[index[i, 1]], float(scores[i]))
            for i in extremes(scores, worst, highest)
        ]

    result = Calibration(
        dir=directory,
        models=models or {},
        subjects=len(per_subject),
        photos_found=photos_found,
        photos=len(embedded),
        photos_per_subject=per_subject,
        skipped=[{"photo": s.photo.name, "reason": s.reason} for s in skipped],
        several_faces=[
            {"photo": item.photo.name, "faces": item.faces} for item in embedded if item.faces > 1
        ],
        genuine_pairs=int(pairs.genuine.size),
        impostor_pairs=int(pairs.impostor.size),
        distributions={
            "genuine": distribution(pairs.genuine),
            "impostor": distribution(pairs.impostor),
        },
        histogram=histogram(pairs.genuine, pairs.impostor),
        current_threshold=float(current_threshold),
        rates=rates(pairs.genuine, pairs.impostor, candidate),
        target=threshold_for_far(pairs.genuine, pairs.impostor, target_far),
        target_far=float(target_far),
        lowest_genuine=view(pairs.genuine, pairs.genuine_index, highest=False),
        highest_impostor=view(pairs.impostor, pairs.impostor_index, highest=True),
    )
    result.notes = notes(result)
    return result


def notes(result: Calibration) -> list[str]:
    """What the reader of the figures must know about how far they can be trusted."""
    out: list[str] = []
    if result.skipped:
        out.append(f"{len(result.skipped)} photo(s) skipped: they are in no pair (listed above).")
    if result.several_faces:
        out.append(
            f"{len(result.several_faces)} photo(s) show several faces: the largest was taken; "
            "check that it is the labeled person."
        )
    lonely = sorted(s for s, n in result.photos_per_subject.items() if n < 2)
    if lonely:
        shown = ", ".join(lonely[:5]) + (f" and {len(lonely) - 5} more" if len(lonely) > 5 else "")
        out.append(f"{len(lonely)} subject(s) with one photo ({shown}) make impostor pairs only.")
    if result.genuine_pairs == 0:
        out.append("No genuine pairs: give at least one subject two photos. TPR is unknown.")
    if result.impostor_pairs == 0:
        out.append(
            "No impostor pairs: photos of at least two subjects are needed. FAR is unknown and "
            "no threshold can be derived."
        )
    target = result.target
    if target is not None and not target.resolved:
        needed = math.ceil(RULE_OF_THREE / result.target_far) if result.target_far > 0 else None
        text = (
            f"Too few impostor pairs to resolve FAR {_num(result.target_far)}: "
            f"{target.impostor} pairs resolve FAR steps of 1/{target.impostor} = "
            f"{_num(target.far_resolution)}, so the threshold above only rejects every "
            f"impostor pair seen; with none accepted among {target.impostor}, the FAR is "
            f"below {_num(min(1.0, RULE_OF_THREE / target.impostor))} at 95 % confidence "
            "(rule of three)."
        )
        if needed is not None:
            text += f" Showing FAR <= {_num(result.target_far)} takes >= {needed} impostor pairs."
        out.append(text)
    elif target is not None and target.impostor * result.target_far < RULE_OF_THREE:
        allowed = allowed_false_accepts(target.impostor, result.target_far)
        out.append(
            f"FAR {_num(result.target_far)} among {target.impostor} impostor pairs means at "
            f"most {allowed} false accept(s): the threshold for it rests on the few highest "
            f"impostor pairs; {math.ceil(RULE_OF_THREE / result.target_far)} or more pairs "
            "would make it firmer."
        )
    if 0 < result.genuine_pairs < 100:
        out.append(
            f"Only {result.genuine_pairs} genuine pairs: TPR moves in steps of "
            f"{100 / result.genuine_pairs:.2g} %; near-duplicate photos of a subject inflate it."
        )
    return out


def _num(value: float) -> str:
    return f"{value:.4g}"


# ---------------------------------------------------------------------------------------------
# Output.


def _tpr(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f} %"


def _far(value: float | None) -> str:
    """A FAR in the unit of --target-far (a fraction), to 4 significant digits."""
    return "n/a" if value is None else f"{value:.4g}"


def _bar(count: int, most: int, width: int = 16) -> str:
    if count == 0 or most == 0:
        return ""
    return "█" * max(1, round(width * count / most))


def render(result: Calibration, console: Console) -> None:
    """The figures as tables, for people."""
    from rich.markup import escape
    from rich.table import Table

    console.print(f"[bold]facescore calibrate[/bold] {escape(result.dir)}")
    for role, info in result.models.items():
        console.print(f"  {role}: {info.get('name', '?')} (sha256 {info.get('sha256', '')[:16]})")
    console.print(
        f"  {result.subjects} subjects, {result.photos} photos embedded "
        f"({result.photos_found} found, {len(result.skipped)} skipped); "
        f"{result.genuine_pairs} genuine pairs, {result.impostor_pairs} impostor pairs"
    )
    for item in result.skipped:
        console.print(
            f"  [yellow]skipped[/yellow] {escape(item['photo'])}: {escape(item['reason'])}"
        )
    for item in result.several_faces:
        console.print(
            f"  [yellow]{item['faces']} faces[/yellow] in {escape(item['photo'])}: largest taken"
        )

    stats = Table(title="Cosine similarity of pairs", title_justify="left")
    stats.add_column("pairs")
    stats.add_column("n", justify="right")
    for name, _ in PERCENTILES:
        stats.add_column(name, justify="right")
    for kind, count in (("genuine", result.genuine_pairs), ("impostor", result.impostor_pairs)):
        figures = result.distributions[kind]
        cells = [f"{figures[name]:.3f}" if figures else "-" for name, _ in PERCENTILES]
        stats.add_row(kind, str(count), *cells)
    console.print(stats)

    if result.histogram:
        most_good = max(b.genuine for b in result.histogram)
        most_bad = max(b.impostor for b in result.histogram)
        hist = Table(title="Histogram (bars scaled per column)", title_justify="left")
        hist.add_column("similarity", no_wrap=True)
        hist.add_column("genuine", justify="right")
        hist.add_column("", style="green", no_wrap=True)
        hist.add_column("impostor", justify="right")
        hist.add_column("", style="red", no_wrap=True)
        for b in result.histogram:
            hist.add_row(
                f"{b.low:+.1f} to {b.high:+.1f}",
                str(b.genuine),
                _bar(b.genuine, most_good),
                str(b.impostor),
                _bar(b.impostor, most_bad),
            )
        console.print(hist)

    table = Table(title="TPR and FAR by threshold (match: similarity >= it)", title_justify="left")
    table.add_column("threshold", justify="right")
    table.add_column("TPR", justify="right")
    table.add_column("genuine in", justify="right")
    table.add_column("FAR", justify="right")
    table.add_column("impostors in", justify="right")
    table.add_column("")
    for rate in result.rates:
        table.add_row(
            f"{rate.threshold:.2f}",
            _tpr(rate.tpr),
            f"{rate.genuine_accepted}/{rate.genuine}",
            _far(rate.far),
            f"{rate.impostor_accepted}/{rate.impostor}",
            "SCORE_THRESHOLD" if rate.threshold == result.current_threshold else "",
        )
    console.print(table)

    for title, views in (
        ("Lowest genuine pairs", result.lowest_genuine),
        ("Highest impostor pairs", result.highest_impostor),
    ):
        if views:
            console.print(f"{title}:")
            for pair in views:
                console.print(
                    f"  {pair.similarity:.3f}  {escape(pair.first)}  ~  {escape(pair.second)}"
                )

    target = result.target
    head = f"[bold]Threshold for FAR <= {_num(result.target_far)}:[/bold]"
    if target is None:
        console.print(f"{head} unknown (no impostor pairs)")
    else:
        if target.bound is None:
            console.print(f"{head} any (the target allows every impostor pair)")
        else:
            console.print(
                f"{head} just above {target.bound:.4f}, the impostor similarity it must reject "
                "(smallest threshold with FAR <= target)"
            )
        console.print(
            f"  there: TPR {_tpr(target.tpr)} ({target.genuine_accepted}/{target.genuine}), "
            f"FAR {_far(target.far)} ({target.impostor_accepted}/{target.impostor})"
        )
    if result.notes:
        console.print("[bold]Notes[/bold]")
        for text in result.notes:
            console.print(f"  - {escape(text)}")


def run(
    directory: Path,
    *,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    target_far: float = DEFAULT_TARGET_FAR,
    model_dir: Path | None = None,
    as_json: bool = False,
) -> int:
    """The command: 0 when both pair kinds exist, 1 when the data cannot calibrate anything."""
    from rich.console import Console
    from rich.progress import Progress

    from services.detect.detector import FaceDetector
    from services.detect.settings import DetectSettings
    from services.embed.recognizer import FaceRecognizer
    from services.embed.settings import EmbedSettings
    from services.score.settings import ScoreSettings

    if not 0.0 <= target_far <= 1.0:
        raise CalibrationError(f"--target-far must lie in [0, 1], got {target_far}")
    photos = find_photos(directory)
    detect_settings, embed_settings = DetectSettings(), EmbedSettings()
    if model_dir is not None:
        detect_settings.model_dir = embed_settings.model_dir = Path(model_dir)
    detector, recognizer = FaceDetector(detect_settings), FaceRecognizer(embed_settings)
    detector.load()
    recognizer.load()

    errors = Console(stderr=True)
    with Progress(console=errors, transient=True, disable=not errors.is_terminal) as bar:
        task = bar.add_task("embedding", total=len(photos))
        embedded, skipped = embed_photos(photos, detector, recognizer, lambda _: bar.advance(task))

    result = calibrate(
        embedded,
        skipped,
        directory=str(directory),
        photos_found=len(photos),
        thresholds=thresholds,
        target_far=target_far,
        current_threshold=ScoreSettings().threshold,
        models={
            "detector": {"name": detector.spec.name, "sha256": detector.spec.sha256},
            "recognizer": {"name": recognizer.spec.name, "sha256": recognizer.spec.sha256},
        },
    )
    if as_json:
        print(result.as_json())
    else:
        render(result, Console())
    return 0 if result.complete else 1
