"""What a saved image says of itself (`read_info`), and the JSON sidecar that speaks for images
whose bytes must stay as the relay sent them.

A sidecar is `{image name}.json` beside the image (`cat_0.png.json`): the image's name and its
provenance fields. It is written for JPEG and WEBP images and for PNGs that carry a C2PA manifest
(whose signature any change to the file would break), atomically, never through a symlink.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import struct
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO

import attrs

from ._media import SNIFF_BYTES, sniff
from ._pngmeta import PngTagger, scan_png
from ._provenance import KEYWORDS, Provenance

__all__ = [
    "ImageInfo",
    "describe",
    "read_info",
    "sidecar_bytes",
    "sidecar_path",
    "write_sidecar",
]

log = logging.getLogger("gemimg_async")

_TEMP_PREFIX = ".gemimg-"  # the sinks' prefix: one pattern of leftovers to clean
_MAX_SIDECAR = 4 * 1024 * 1024
_JPEG_APP11 = 0xEB
_JPEG_STOP = frozenset({0xDA, 0xD9})  # start of scan, end of image


def sidecar_path(image: str | os.PathLike[str]) -> Path:
    """Where the sidecar of `image` is: `{name}.json` beside it."""
    path = Path(image)
    return path.with_name(f"{path.name}.json")


def sidecar_bytes(image_name: str, provenance: Provenance) -> bytes:
    """A sidecar's content: the image's name and the provenance fields, as UTF-8 JSON."""
    doc = {"image": image_name, **provenance.to_json()}
    return (json.dumps(doc, ensure_ascii=False, indent=2) + "\n").encode("utf-8", "replace")


def write_sidecar(image: str | os.PathLike[str], provenance: Provenance) -> Path:
    """Write the sidecar of `image`, replacing an older one: a temporary file created anew
    (never through a symlink), fsynced, renamed into place. The caller fsyncs the folder (it does
    so after placing the image anyway)."""
    final = sidecar_path(image)
    tmp = final.with_name(f"{_TEMP_PREFIX}{uuid.uuid4().hex}.part")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(tmp, flags, 0o644)
    try:
        try:
            view = memoryview(sidecar_bytes(Path(image).name, provenance))
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        tmp.replace(final)  # replaces a symlink at `final`; never writes through it
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return final


def describe(image: Path, tagger: PngTagger) -> None:
    """After `image` was placed from what `tagger` gave: its sidecar when its bytes were left
    as they came (a C2PA manifest, a JPEG or WEBP, a late `caBX`), else any older sidecar of its
    name removed, for its own chunks speak for it now. A sidecar that cannot be written is
    logged, not raised: the image is in place."""
    if not (tagger.needs_sidecar or tagger.tainted):
        sidecar = f"{os.fspath(image)}.json"  # sidecar_path's, without pathlib on every image
        if os.path.lexists(sidecar):  # a stat, not a failed unlink and its exception
            with contextlib.suppress(OSError):
                Path(sidecar).unlink()
        return
    provenance = tagger.provenance
    if tagger.width and tagger.height:
        provenance = provenance.with_size(tagger.width, tagger.height, tagger.asked)
    try:
        write_sidecar(image, provenance)
    except OSError as exc:
        log.warning("%s: saved, but its sidecar could not be written: %s", image, exc)


@attrs.frozen
class ImageInfo:
    """What `read_info` found: the image's type and size, its text fields, its provenance
    (from a sidecar when there is one, else from the PNG's text chunks), and whether it carries a
    C2PA manifest."""

    path: Path
    media_type: str | None
    width: int | None
    height: int | None
    fields: Mapping[str, str]
    """Every text field of a PNG (keyword -> text), ours and others'."""
    provenance: Provenance | None
    sidecar: Path | None
    """The sidecar read, if any."""
    c2pa: bool

    def lines(self) -> list[str]:
        """The information as `name: value` lines, for `gemimg-async info`."""
        size = f"{self.width}x{self.height}" if self.width and self.height else "unknown size"
        lines = [f"{self.path}: {self.media_type or 'not an image'}, {size}"]
        if self.c2pa:
            lines.append("  C2PA manifest: yes (the file is kept as the relay sent it)")
        if self.sidecar is not None:
            lines.append(f"  sidecar: {self.sidecar.name}")
        shown = self.provenance.to_fields() if self.provenance is not None else {}
        others = {k: v for k, v in self.fields.items() if k not in shown}
        lines += [f"  {key}: {value}" for key, value in {**shown, **others}.items()]
        if self.provenance is None:
            lines.append("  no provenance recorded")
        return lines


def read_info(path: str | os.PathLike[str]) -> ImageInfo:
    """What the image at `path` says of itself, and its sidecar; OSError if it cannot be read,
    ValueError for a sidecar that is not one."""
    path = Path(path)
    with path.open("rb") as file:
        media = sniff(file.read(SNIFF_BYTES))
        file.seek(0)
        extension = media.extension if media else None
        c2pa = {"jpg": _jpeg_c2pa, "webp": _webp_c2pa}.get(extension or "", _no_c2pa)(file)
    fields: dict[str, str] = {}
    if extension == "png":
        fields, c2pa = scan_png(path)
    provenance = Provenance.from_fields(fields)
    sidecar = sidecar_path(path)
    found = _read_sidecar(sidecar)
    if found is not None:
        provenance = found
    return ImageInfo(
        path,
        media.media_type if media else None,
        media.width if media else None,
        media.height if media else None,
        fields,
        provenance,
        sidecar if found is not None else None,
        c2pa,
    )


def _read_sidecar(path: Path) -> Provenance | None:
    try:
        with path.open("rb") as file:
            raw = file.read(_MAX_SIDECAR + 1)
    except FileNotFoundError:
        return None
    if len(raw) > _MAX_SIDECAR:
        raise ValueError(f"{path}: larger than a sidecar can be")
    try:
        doc: Any = json.loads(raw)
        return Provenance.from_json({k: v for k, v in doc.items() if k in KEYWORDS})
    except (ValueError, AttributeError) as exc:
        raise ValueError(f"{path}: not a sidecar ({exc})") from exc


def _no_c2pa(file: BinaryIO) -> bool:
    del file
    return False


def _jpeg_c2pa(file: BinaryIO) -> bool:
    """Whether a JPEG's APP11 segments (before its image data) hold a C2PA JUMBF box."""
    file.seek(2)
    while len(head := file.read(4)) == 4 and head[0] == 0xFF:  # noqa: PLR2004
        marker, length = head[1], struct.unpack(">H", head[2:])[0]
        if marker in _JPEG_STOP or length < 2:  # noqa: PLR2004
            return False
        if marker != _JPEG_APP11:
            file.seek(length - 2, os.SEEK_CUR)
        elif b"c2pa" in file.read(length - 2):
            return True
    return False


def _webp_c2pa(file: BinaryIO) -> bool:
    """Whether a WEBP's RIFF chunks include `C2PA`."""
    file.seek(12)
    while len(head := file.read(8)) == 8:  # noqa: PLR2004
        kind, length = head[:4], struct.unpack("<I", head[4:])[0]
        if kind == b"C2PA":
            return True
        file.seek(length + (length & 1), os.SEEK_CUR)
    return False
