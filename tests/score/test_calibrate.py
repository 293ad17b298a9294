"""`facescore calibrate`: the pure figures on hand-made similarities, and one run of the command.

The end-to-end runs build their labeled folders from the sample photos that installed packages
ship (never from a folder only some machines have): one checks the command's mechanics on
mirrored and re-encoded copies, the other its figures on two genuinely different photos of
one person (yaoming.jpg, and Yao Ming in players.jpg) among some thirty strangers.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from facescore.admin.calibrate import (
    DEFAULT_THRESHOLDS,
    CalibrationError,
    Embedded,
    Photo,
    allowed_false_accepts,
    calibrate,
    distribution,
    find_photos,
    histogram,
    pair_scores,
    parse_thresholds,
    rate_at,
    rates,
    threshold_for_far,
)
from facescore.cli import main
from services.common.models import insightface_image, vectron_file

# ---------------------------------------------------------------------------------------------
# Pairs.


def unit(*values: float) -> list[float]:
    vector = np.asarray(values, dtype=np.float64)
    return list(vector / np.linalg.norm(vector))


def test_pair_scores_splits_genuine_and_impostor_pairs() -> None:
    embeddings = [unit(1, 0, 0), unit(1, 1, 0), unit(0, 1, 0), unit(0, 0, 1)]
    pairs = pair_scores(embeddings, ["a", "a", "b", "c"])
    assert pairs.genuine_index.tolist() == [[0, 1]]
    assert pairs.genuine == pytest.approx([np.sqrt(0.5)])
    assert pairs.impostor_index.tolist() == [[0, 2], [0, 3], [1, 2], [1, 3], [2, 3]]
    assert pairs.impostor == pytest.approx([0.0, 0.0, np.sqrt(0.5), 0.0, 0.0])


def test_pair_scores_of_one_subject_or_one_photo() -> None:
    alone = pair_scores([unit(1, 0)], ["a"])
    assert alone.genuine.size == alone.impostor.size == 0
    assert alone.genuine_index.shape == (0, 2)
    same = pair_scores([unit(1, 0), unit(1, 1), unit(0, 1)], ["a", "a", "a"])
    assert same.genuine.size == 3 and same.impostor.size == 0


def test_pair_scores_wants_one_row_per_label() -> None:
    with pytest.raises(ValueError, match="one embedding row per label"):
        pair_scores([unit(1, 0)], ["a", "b"])


# ---------------------------------------------------------------------------------------------
# Rates.


def test_rate_at_counts_a_tie_as_a_match() -> None:
    rate = rate_at([0.5, 0.6, 0.7], [0.1, 0.4, 0.45], 0.45)
    assert rate.tpr == 1.0 and rate.genuine_accepted == 3 and rate.genuine == 3
    assert rate.far == pytest.approx(1 / 3) and rate.impostor_accepted == 1 and rate.impostor == 3


def test_rates_in_the_order_given() -> None:
    table = rates([0.5, 0.6, 0.7, 0.8], [0.0, 0.1, 0.2, 0.3, 0.5], [0.6, 0.2, 0.9])
    assert [r.threshold for r in table] == [0.6, 0.2, 0.9]
    assert [r.tpr for r in table] == [0.75, 1.0, 0.0]
    assert [r.far for r in table] == [0.0, 0.6, 0.0]


def test_rates_without_genuine_or_impostor_pairs_are_unknown() -> None:
    (no_genuine,) = rates([], [0.1, 0.2], [0.15])
    assert no_genuine.tpr is None and no_genuine.far == 0.5
    (no_impostor,) = rates([0.5], [], [0.15])
    assert no_impostor.tpr == 1.0 and no_impostor.far is None


def test_similarities_must_be_finite() -> None:
    with pytest.raises(ValueError, match="finite"):
        rate_at([0.5, float("nan")], [0.1], 0.3)


# ---------------------------------------------------------------------------------------------
# The threshold for a target FAR.


def test_threshold_for_far_allows_the_false_accepts_the_target_allows() -> None:
    impostor = [i / 10 for i in range(10)]  # 0.0 .. 0.9
    found = threshold_for_far([0.75, 0.85, 0.95], impostor, target_far=0.1)
    assert found is not None
    assert found.bound == pytest.approx(0.8)
    assert 0.8 < found.threshold < 0.8 + 1e-12
    assert (found.far, found.impostor_accepted, found.impostor) == (0.1, 1, 10)
    assert found.tpr == pytest.approx(2 / 3) and found.genuine_accepted == 2
    assert found.resolved and found.far_resolution == pytest.approx(0.1)


def test_threshold_for_far_zero_rejects_every_impostor() -> None:
    found = threshold_for_far([0.5], [0.1, 0.3, 0.2], target_far=0.0)
    assert found is not None
    assert found.bound == 0.3 and found.threshold > 0.3
    assert found.far == 0.0 and found.tpr == 1.0


def test_threshold_for_far_with_ties_rejects_the_whole_tie() -> None:
    # One false accept of four is allowed, but the two highest impostors tie: no threshold
    # accepts exactly one of them, so the smallest qualifying one rejects both.
    found = threshold_for_far([0.3, 0.5], [0.1, 0.3, 0.3, 0.2], target_far=0.25)
    assert found is not None
    assert found.bound == 0.3 and found.threshold > 0.3
    assert found.far == 0.0 and found.impostor_accepted == 0
    # The genuine pair tied with the bound is rejected too.
    assert found.tpr == 0.5


def test_threshold_for_far_when_the_target_allows_everything() -> None:
    found = threshold_for_far([0.5], [-0.2, 0.1], target_far=1.0)
    assert found is not None
    assert found.bound is None and found.threshold == -1.0
    assert found.far == 1.0 and found.tpr == 1.0


def test_threshold_for_far_without_impostors_is_unknown() -> None:
    assert threshold_for_far([0.5, 0.6], [], target_far=0.001) is None
    assert threshold_for_far([], [], target_far=0.001) is None


def test_threshold_for_far_without_genuine_pairs_has_no_tpr() -> None:
    found = threshold_for_far([], [0.1, 0.2], target_far=0.0)
    assert found is not None and found.tpr is None and found.genuine == 0


def test_threshold_for_far_flags_a_target_below_the_data_resolution() -> None:
    found = threshold_for_far([0.6], np.linspace(-0.2, 0.14, 146), target_far=0.001)
    assert found is not None
    assert not found.resolved
    assert found.far_resolution == pytest.approx(1 / 146)
    assert found.bound == pytest.approx(0.14) and found.far == 0.0


def test_threshold_for_far_rejects_a_target_outside_0_1() -> None:
    with pytest.raises(ValueError, match="target_far"):
        threshold_for_far([0.5], [0.1], target_far=1.5)


@pytest.mark.parametrize("size", [1, 7, 100, 1000])
@pytest.mark.parametrize("target", [0.0, 0.001, 0.01, 0.05, 0.29, 0.5])
def test_threshold_for_far_is_the_smallest_that_meets_the_target(size: int, target: float) -> None:
    rng = np.random.default_rng(size)
    impostor = np.round(rng.normal(0.0, 0.1, size), 2)  # Rounded: plenty of ties.
    genuine = rng.normal(0.6, 0.1, 50)
    found = threshold_for_far(genuine, impostor, target)
    assert found is not None
    assert found.far <= target
    assert rate_at(genuine, impostor, found.threshold).far == found.far
    if found.bound is not None:
        below = rate_at(genuine, impostor, found.bound).far
        assert below is not None and below > target


def test_allowed_false_accepts_is_exact_despite_float_products() -> None:
    assert allowed_false_accepts(100, 0.29) == 29  # 0.29 * 100 = 28.999999999999996
    assert allowed_false_accepts(1000, 0.001) == 1
    assert allowed_false_accepts(146, 0.001) == 0
    assert allowed_false_accepts(3, 0.5) == 1
    assert allowed_false_accepts(3, 1.0) == 3
    assert allowed_false_accepts(0, 0.5) == 0


# ---------------------------------------------------------------------------------------------
# Distributions, histogram, options.


def test_distribution_figures() -> None:
    figures = distribution(np.arange(101) / 100)
    assert figures == pytest.approx(
        {"min": 0.0, "p1": 0.01, "p5": 0.05, "median": 0.5, "p95": 0.95, "p99": 0.99, "max": 1.0}
    )
    assert distribution([]) is None


def test_histogram_bins_span_both_distributions() -> None:
    bins = histogram([0.7, 0.75, 0.3], [-0.05, 0.0, 0.1])
    assert [(b.low, b.high) for b in bins][:2] == [(-0.1, 0.0), (0.0, 0.1)]
    assert (bins[-1].low, bins[-1].high) == (0.7, 0.8)
    counts = {b.low: (b.genuine, b.impostor) for b in bins}
    assert counts[-0.1] == (0, 1) and counts[0.0] == (0, 1) and counts[0.1] == (0, 1)
    assert counts[0.3] == (1, 0)  # 0.3 / 0.1 is 2.9999999999999996: still the 0.3 bin.
    assert counts[0.7] == (2, 0)
    assert sum(b.genuine for b in bins) == 3 and sum(b.impostor for b in bins) == 3
    assert histogram([], []) == []


def test_parse_thresholds() -> None:
    assert parse_thresholds("0.3, 0.35,0.4,") == [0.3, 0.35, 0.4]
    for bad, message in (("0.3,abc", "not a number"), ("1.0", "between"), (" , ", "no thresh")):
        with pytest.raises(ValueError, match=message):
            parse_thresholds(bad)


def test_default_thresholds() -> None:
    assert DEFAULT_THRESHOLDS == (0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6)


# ---------------------------------------------------------------------------------------------
# The report, from hand-made embeddings.


def embedded(subject: str, name: str, *values: float, faces: int = 1) -> Embedded:
    photo = Photo(subject, Path(subject) / name, f"{subject}/{name}")
    return Embedded(photo, np.asarray(unit(*values), dtype=np.float32), faces, 0.9)


def test_calibrate_reports_the_figures_and_their_limits() -> None:
    photos = [
        embedded("ann", "1.jpg", 1, 0.1, 0),
        embedded("ann", "2.jpg", 1, 0.2, 0),
        embedded("bob", "1.jpg", 0, 1, 0.1, faces=2),
        embedded("bob", "2.jpg", 0.1, 1, 0),
        embedded("cat", "1.jpg", 0, 0, 1),
    ]
    result = calibrate(
        photos,
        [],
        directory="dir",
        photos_found=5,
        thresholds=[0.5, 0.3],
        target_far=0.001,
        current_threshold=0.4,
    )
    assert (result.subjects, result.photos, result.genuine_pairs, result.impostor_pairs) == (
        3,
        5,
        2,
        8,
    )
    assert result.complete
    assert [r.threshold for r in result.rates] == [0.3, 0.4, 0.5]  # The current one added.
    assert all(r.tpr == 1.0 and r.far == 0.0 for r in result.rates)
    assert result.target is not None and not result.target.resolved
    pairs = pair_scores([p.embedding for p in photos], [p.photo.subject for p in photos])
    highest = result.highest_impostor[0]
    assert highest.similarity == pytest.approx(pairs.impostor.max())
    assert (highest.first, highest.second) == ("ann/2.jpg", "bob/2.jpg")
    assert [p.similarity for p in result.lowest_genuine] == sorted(pairs.genuine.tolist())
    text = " ".join(result.notes)
    assert "Too few impostor pairs to resolve FAR 0.001" in text
    assert "1 subject(s) with one photo (cat)" in text
    assert "several faces" in text
    figures = json.loads(result.as_json())
    assert figures["genuine_pairs"] == 2
    assert figures["rates"][1]["threshold"] == 0.4
    assert figures["target"]["bound"] == pytest.approx(result.target.bound)


def test_calibrate_without_impostor_pairs_is_incomplete() -> None:
    photos = [embedded("ann", "1.jpg", 1, 0), embedded("ann", "2.jpg", 1, 0.1)]
    result = calibrate(
        photos,
        [],
        directory="dir",
        photos_found=2,
        thresholds=DEFAULT_THRESHOLDS,
        target_far=0.001,
        current_threshold=0.4,
    )
    assert not result.complete
    assert result.target is None
    assert all(r.far is None for r in result.rates)
    assert any("No impostor pairs" in note for note in result.notes)
    assert json.loads(result.as_json())["target"] is None


def test_calibrate_notes_a_target_met_by_few_false_accepts() -> None:
    photos = [embedded(name, "1.jpg", *np.eye(5)[i]) for i, name in enumerate("abcde")]
    result = calibrate(
        photos,
        [],
        directory="dir",
        photos_found=5,
        thresholds=[0.4],
        target_far=0.1,
        current_threshold=0.4,
    )
    assert result.impostor_pairs == 10 and result.target is not None and result.target.resolved
    assert any("at most 1 false accept(s)" in note for note in result.notes)
    assert not any("Too few impostor pairs" in note for note in result.notes)
    assert any("No genuine pairs" in note for note in result.notes)
    assert not result.complete


def test_calibrate_with_nothing_embedded() -> None:
    result = calibrate(
        [],
        [],
        directory="dir",
        photos_found=0,
        thresholds=[0.4],
        target_far=0.001,
        current_threshold=0.4,
    )
    assert not result.complete and result.histogram == [] and result.target is None
    assert result.distributions == {"genuine": None, "impostor": None}


# ---------------------------------------------------------------------------------------------
# Finding photos.


def test_find_photos_walks_subject_folders(tmp_path: Path) -> None:
    (tmp_path / "b" / "2020").mkdir(parents=True)
    (tmp_path / "a").mkdir()
    (tmp_path / ".cache").mkdir()
    for name in ("a/2.jpg", "a/1.jpg", "a/.hidden.jpg", "b/2020/x.png", ".cache/y.jpg", "top.jpg"):
        (tmp_path / name).write_bytes(b"x")
    photos = find_photos(tmp_path)
    assert [(p.subject, p.name) for p in photos] == [
        ("a", "a/1.jpg"),
        ("a", "a/2.jpg"),
        ("b", "b/2020/x.png"),
    ]


def test_find_photos_refuses_what_is_not_a_labeled_folder(tmp_path: Path) -> None:
    with pytest.raises(CalibrationError, match="not a folder"):
        find_photos(tmp_path / "missing")
    (tmp_path / "photo.jpg").write_bytes(b"x")
    with pytest.raises(CalibrationError, match="no subject folders"):
        find_photos(tmp_path)
    (tmp_path / "ann").mkdir()
    with pytest.raises(CalibrationError, match="hold no files"):
        find_photos(tmp_path)


# ---------------------------------------------------------------------------------------------
# The command, end to end, on photos the installed packages ship.

MARGIN = 0.25  # Of the larger box side, around each face cut out of a group photo.
MIN_SIDE = 50  # Faces smaller than this in the group photos are left out.


def write_jpeg(path: Path, image: np.ndarray, quality: int = 95) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    path.write_bytes(data.tobytes())


def read_bgr(path: Path) -> np.ndarray:
    image = cv2.imread(str(path))
    assert image is not None, path
    return image


def cut_out(image: np.ndarray, box: np.ndarray, margin: float) -> np.ndarray:
    """The face in box with a margin (a fraction of the box's larger side) around it."""
    x1, y1, x2, y2 = box
    pad = margin * max(x2 - x1, y2 - y1)
    top, left = int(max(0, y1 - pad)), int(max(0, x1 - pad))
    return image[top : int(y2 + pad), left : int(x2 + pad)]


def build_subjects(root: Path) -> None:
    """The command's mechanics (skips, duplicates, counts, output), not the model's accuracy:
    yao: one photo, mirrored and re-encoded; one subject per face of t1.jpg and gdp.jpg
    (the face cut out with a margin, and mirrored); plus a photo without a face, a file that
    is no image and a duplicate, all of which calibrate must skip."""
    from services.detect.detector import FaceDetector
    from services.detect.settings import DetectSettings

    detector = FaceDetector(DetectSettings())
    detector.load()
    yao = read_bgr(vectron_file("yaoming.jpg"))
    write_jpeg(root / "yao" / "original.jpg", yao)
    write_jpeg(root / "yao" / "mirrored.jpg", np.ascontiguousarray(yao[:, ::-1]))
    write_jpeg(root / "yao" / "reencoded.jpg", yao, quality=40)
    shutil.copy(root / "yao" / "original.jpg", root / "yao" / "original_copy.jpg")
    write_jpeg(root / "yao" / "blank.jpg", np.full((240, 320, 3), 128, np.uint8))
    (root / "yao" / "notes.txt").write_text("not a photo\n")
    for path in (insightface_image("t1.jpg"), vectron_file("gdp.jpg")):
        image = read_bgr(path)
        faces = detector.detect(image, 0.5, min_face_size=MIN_SIDE)
        assert len(faces) >= 3, path
        for k, face in enumerate(faces):
            crop = cut_out(image, face.box, MARGIN)
            folder = root / f"{path.stem}_{k}"
            write_jpeg(folder / "crop.jpg", crop)
            write_jpeg(folder / "mirrored.jpg", np.ascontiguousarray(crop[:, ::-1]))


@pytest.fixture(scope="module")
def subjects(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("subjects")
    build_subjects(root)
    return root


@pytest.fixture(autouse=True)
def default_threshold(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCORE_THRESHOLD", "0.40")


def test_calibrate_command_json(subjects: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["calibrate", str(subjects), "--json"]) == 0
    figures = json.loads(capsys.readouterr().out)
    subject_count = len([p for p in subjects.iterdir() if p.is_dir()])
    assert figures["subjects"] == subject_count >= 7
    assert figures["models"]["recognizer"]["name"] == "w600k_mbf"
    skipped = {item["photo"]: item["reason"] for item in figures["skipped"]}
    assert set(skipped) == {"yao/blank.jpg", "yao/original_copy.jpg", "yao/notes.txt"}
    assert skipped["yao/blank.jpg"].startswith("no face found")
    assert skipped["yao/original_copy.jpg"] == "the same file as yao/original.jpg"
    assert skipped["yao/notes.txt"].startswith("not decoded")
    assert figures["photos"] == figures["photos_found"] - 3
    assert figures["photos_per_subject"]["yao"] == 3
    genuine, impostor = figures["genuine_pairs"], figures["impostor_pairs"]
    assert genuine == 3 + (subject_count - 1)  # yao: 3 photos; the others: 2 each.
    assert genuine + impostor == figures["photos"] * (figures["photos"] - 1) // 2
    # The same face mirrored or re-encoded scores high; different people score low.
    assert figures["distributions"]["genuine"]["min"] > 0.5
    assert figures["distributions"]["impostor"]["max"] < 0.3
    table = {row["threshold"]: row for row in figures["rates"]}
    assert sorted(table) == list(DEFAULT_THRESHOLDS)
    assert table[0.4]["tpr"] == 1.0 and table[0.4]["far"] == 0.0
    assert table[0.4]["impostor"] == impostor and table[0.4]["genuine"] == genuine
    target = figures["target"]
    assert target["target_far"] == 0.001
    assert target["bound"] == pytest.approx(figures["distributions"]["impostor"]["max"])
    assert target["far"] == 0.0 and target["tpr"] == 1.0
    assert not target["resolved"]  # Fewer than 1000 impostor pairs.
    assert any("Too few impostor pairs" in note for note in figures["notes"])
    assert sum(b["genuine"] for b in figures["histogram"]) == genuine


def test_calibrate_command_tables(subjects: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["calibrate", str(subjects), "--thresholds", "0.3,0.5", "--target-far", "0.01"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "Cosine similarity of pairs" in out and "median" in out
    assert "Histogram" in out
    assert "TPR and FAR by threshold" in out
    for row in ("0.30", "0.40", "0.50"):
        assert row in out
    assert "SCORE_THRESHOLD" in out
    assert "Threshold for FAR <= 0.01: just above" in out
    assert "skipped yao/blank.jpg" in out


def test_calibrate_command_without_impostors_exits_1(
    subjects: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shutil.copytree(subjects / "yao", tmp_path / "yao")
    assert main(["calibrate", str(tmp_path), "--json"]) == 1
    figures = json.loads(capsys.readouterr().out)
    assert figures["target"] is None and figures["impostor_pairs"] == 0


def test_calibrate_command_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["calibrate", str(tmp_path / "missing")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    assert main(["calibrate", str(tmp_path), "--thresholds", "0.3,abc"]) == 2
    assert "--thresholds: not a number" in capsys.readouterr().err
    assert main(["calibrate", str(tmp_path), "--target-far", "2"]) == 2
    assert "--target-far" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# The command on two genuinely different photos of one person, and many other people.

# Yao Ming wears number 13 in players.jpg: the tallest player, back row, centre. This pixel
# lies inside his face; a person looking at the photo placed it, not the models.
YAO_IN_PLAYERS = (742, 167)
# Enough context around a face in a group photo for the detector to find it again in the
# cut-out, small enough that it stays the largest face there (checked for these photos).
GROUP_MARGIN = 0.5


def build_people(root: Path) -> None:
    """yao: yaoming.jpg, and his face cut out of players.jpg (another day, another camera,
    another light); one subject for every other face of players.jpg, t1.jpg and gdp.jpg,
    spectators in the stands included."""
    from services.detect.detector import FaceDetector
    from services.detect.settings import DetectSettings

    detector = FaceDetector(DetectSettings())
    detector.load()
    (root / "yao").mkdir(parents=True)
    shutil.copy(vectron_file("yaoming.jpg"), root / "yao" / "yaoming.jpg")
    x, y = YAO_IN_PLAYERS
    for path in (vectron_file("players.jpg"), insightface_image("t1.jpg"), vectron_file("gdp.jpg")):
        image = read_bgr(path)
        for k, face in enumerate(detector.detect(image, 0.5)):
            x1, y1, x2, y2 = face.box
            yao = path.name == "players.jpg" and x1 <= x <= x2 and y1 <= y <= y2
            folder = root / ("yao" if yao else f"{path.stem}_{k}")
            write_jpeg(folder / f"{path.stem}_{k}.jpg", cut_out(image, face.box, GROUP_MARGIN))


def test_calibrate_on_one_person_in_two_photos_among_strangers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    build_people(tmp_path)
    assert main(["calibrate", str(tmp_path), "--json"]) == 0
    figures = json.loads(capsys.readouterr().out)
    # The detector finds the faces again in their cut-outs, but for a few tiny spectators.
    assert all(item["reason"].startswith("no face found") for item in figures["skipped"])
    assert figures["photos"] >= 28
    assert figures["photos_per_subject"]["yao"] == 2
    photos, impostor = figures["photos"], figures["impostor_pairs"]
    assert figures["genuine_pairs"] == 1
    assert impostor == photos * (photos - 1) // 2 - 1
    [genuine] = figures["lowest_genuine"]
    assert {genuine["first"], genuine["second"]} == {"yao/yaoming.jpg", "yao/players_3.jpg"}

    # At SCORE_THRESHOLD the two photos of Yao Ming match and no two strangers do.
    table = {row["threshold"]: row for row in figures["rates"]}
    assert table[0.4]["tpr"] == 1.0, genuine
    assert table[0.4]["far"] == 0.0, figures["highest_impostor"]
    # Yao Ming's pair outscores every pair of strangers: the threshold that rejects them all
    # still accepts him.
    target = figures["target"]
    assert target["far"] == 0.0 and target["tpr"] == 1.0
    assert genuine["similarity"] > target["bound"] == figures["highest_impostor"][0]["similarity"]
    # Strangers mostly look nothing alike; a low threshold lets some of them through.
    assert figures["distributions"]["impostor"]["median"] < 0.15
    assert table[0.2]["far"] > 0.0
