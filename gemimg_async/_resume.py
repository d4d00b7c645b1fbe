"""What a batch does with each job, given what its folder holds: skip it, record the images an
earlier run left, or send it (with which Idempotency-Key).

| the manifest says        | and                                | the job is                    |
| ------------------------ | ---------------------------------- | ----------------------------- |
| saved, images here       | it asks what it asked then         | skipped                       |
| saved, images here;      | it asks something else now         | changed: skipped and counted; |
| or outcome_unknown       | (same id, another fingerprint)     | sent with redo_changed, with  |
|                          |                                    | a new key                     |
| saved                    | its images are gone                | sent again                    |
| nothing, or              | all its images are here            | recorded saved, not sent      |
| outcome_unknown          |                                    |                               |
| outcome_unknown          |                                    | skipped; sent with            |
|                          |                                    | retry_unknown, with its key   |
| nothing, failed, refused |                                    | sent                          |

A job saved before fingerprints were kept counts as unchanged.
"""

from __future__ import annotations

import enum
import logging
import uuid

import attrs

from ._manifest import ManifestEntry
from ._models import ImageRequest
from ._outdir import FolderImages

__all__ = ["Plan", "Step", "plan"]

log = logging.getLogger("gemimg_async")


class Step(enum.Enum):
    SKIP = "skip"
    """Done before (or held back): `entry` is its state."""
    CHANGED = "changed"
    """Done before, but the job asks something else now: `entry` is what was done."""
    RECORD = "record"
    """Its images are here without a line: record `entry`, send nothing."""
    SEND = "send"
    """Send `request` (keyed)."""


@attrs.frozen
class Plan:
    step: Step
    entry: ManifestEntry | None = None
    request: ImageRequest | None = None


def plan(
    request: ImageRequest,
    asked: str,
    prior: ManifestEntry | None,
    images: FolderImages,
    *,
    now: float,
    retry_unknown: bool,
    redo_changed: bool,
) -> Plan:
    """What to do with `request` (fingerprint `asked`), whose latest line is `prior`."""
    assert request.id is not None
    held = prior is not None and (
        prior.status == "outcome_unknown"
        or (prior.status == "saved" and all(name in images.names for name in prior.paths))
    )
    if held and prior is not None and prior.fingerprint not in (None, asked):
        if not redo_changed:
            return Plan(Step.CHANGED, prior)
        return Plan(Step.SEND, request=_keyed(request, ()))  # another request: a new key
    if prior is not None and prior.status == "saved":
        if held:
            return Plan(Step.SKIP, prior)
        log.warning("%s: recorded saved, but its images are gone: sending it again", request.id)
    elif prior is None or prior.status == "outcome_unknown":
        names = images.complete(request.id, request.n)
        if names is not None:  # the images landed, the line did not: a crash between
            entry = ManifestEntry(
                id=request.id,
                status="saved",
                paths=names,
                model=request.model,
                size=request.size,
                started=now,
                finished=now,
                prompt=request.prompt,
                fingerprint=asked,
            )
            return Plan(Step.RECORD, entry)
        if prior is not None and not retry_unknown:
            return Plan(Step.SKIP, prior)
    # a resend of what may have been billed keeps its key: a relay that honours
    # Idempotency-Key then bills it once
    known = prior.idempotency_keys if prior and prior.status == "outcome_unknown" else ()
    return Plan(Step.SEND, request=_keyed(request, known))


def _keyed(request: ImageRequest, known: tuple[str, ...]) -> ImageRequest:
    return attrs.evolve(request, idempotency_key=known[-1] if known else str(uuid.uuid4()))
