"""The command line of batches past one machine: `batch --shard K/N` and `status`.

`gemimg-async status OUT [JOBS] [--json]` prints the merged status of every manifest in OUT (a
folder, or an object storage URL) and exits:

- 0: every job recorded is saved, each in one manifest, and (given JOBS) none is left;
- 1: some job is failed, refused, outcome_unknown or left, or in more than one manifest;
- 2: a usage mistake: OUT does not exist, or holds no manifest and no JOBS was given.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

import anyio

from ._exceptions import ConfigurationError, ValidationError
from ._jobs import JobDefaults
from ._merged import MergedStatus, read_status
from ._objstore import is_object_url
from ._shards import Shard

__all__ = ["EXIT_DONE", "EXIT_NOT_DONE", "add_shard_commands", "is_done", "status"]

EXIT_DONE = 0
EXIT_NOT_DONE = 1


def _shard(text: str) -> Shard:
    try:
        return Shard.parse(text)
    except ValidationError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_shard_commands(
    commands: argparse._SubParsersAction,  # type: ignore[type-arg]
    batch: argparse.ArgumentParser,
    request_options: Callable[[argparse.ArgumentParser], None],
) -> None:
    """`--shard` on the `batch` command's parser, and the `status` command (with the request
    options, --model, --size and --format, that job ids are derived with)."""
    _add_shard_option(batch)
    request_options(_add_status_command(commands))


def _add_shard_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--shard",
        type=_shard,
        default=Shard.whole(),
        metavar="K/N",
        help="run only shard K of N (such as 2/4; a hash of each job's id picks its shard) "
        "beside the other shards in DIR, with its own DIR/manifest.K-of-N.jsonl: run the N of "
        "them on any machines that reach DIR; see the status command",
    )


def _add_status_command(
    commands: argparse._SubParsersAction,  # type: ignore[type-arg]
) -> argparse.ArgumentParser:
    show: argparse.ArgumentParser = commands.add_parser(
        "status",
        help="the merged status of a batch's output, over every shard's manifest",
        description="Print how the jobs of OUT stand, over every manifest there (manifest.jsonl "
        "and each shard's manifest.K-of-N.jsonl): saved, refused, failed, outcome_unknown, "
        "what they cost, jobs in more than one manifest; given JOBS, what is left. Exit 0 when "
        "every job is saved, 1 when some are not (or left), 2 for a usage mistake.",
    )
    show.add_argument("out", metavar="OUT", help="the batch's --out: a folder or s3://bucket/...")
    show.add_argument(
        "jobs",
        nargs="?",
        type=Path,
        metavar="JOBS",
        help="the job file, to count (and name) the jobs no manifest records yet; give the "
        "batch's --model, --size and --format too when its jobs have no ids",
    )
    show.add_argument("--json", action="store_true", help="print one JSON object, for scripts")
    show.set_defaults(run=status)
    return show


def status(args: argparse.Namespace) -> int:
    out: str = args.out
    if not is_object_url(out) and not Path(out).is_dir():
        raise ConfigurationError(f"OUT {out} is no folder: give a batch's --out")
    defaults = JobDefaults(model=args.model, size=args.size, response_format=args.response_format)
    found: MergedStatus = anyio.run(lambda: read_status(out, jobs=args.jobs, defaults=defaults))
    if not found.manifests and args.jobs is None:
        raise ConfigurationError(
            f"{out} holds no manifest: no batch has recorded a job there yet (give JOBS to "
            "count what is left)"
        )
    if args.json:
        print(json.dumps(found.to_json(), ensure_ascii=False))  # noqa: T201
    else:
        print("\n".join(found.lines()))  # noqa: T201
    sys.stdout.flush()
    return EXIT_DONE if is_done(found) else EXIT_NOT_DONE


def is_done(found: MergedStatus) -> bool:
    """Every job recorded is saved, in one manifest, and none of the job file is left."""
    return found.saved == found.jobs and not found.duplicates and found.left in (0, None)
