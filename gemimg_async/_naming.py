"""A generation's names: the Idempotency-Key of its attempts, and the stem its files get."""

from __future__ import annotations

import errno
import hashlib
import os
import re
import threading
import unicodedata
from pathlib import Path

import attrs

__all__ = ["EXTENSIONS", "FolderNames", "default_stem", "new_key", "refuse_taken_names", "unique"]


class _Entropy:
    """The system's random bytes, read 4 KiB at a time: one system call for 256 keys, which
    the event loop would otherwise make (and give up the GIL for) once per generation. A forked
    child starts afresh: it never hands out what its parent had read."""

    SIZE = 4096

    def __init__(self) -> None:
        self.reset()
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=self.reset)

    def reset(self) -> None:
        self.lock = threading.Lock()  # a parent's thread may have held it at the fork
        self.pool, self.at = b"", self.SIZE

    def take(self, count: int) -> bytes:
        with self.lock:
            if self.at + count > len(self.pool):
                self.pool, self.at = os.urandom(self.SIZE), 0
            at = self.at
            self.at = at + count
            return self.pool[at : at + count]


_ENTROPY = _Entropy()


def new_key() -> str:
    """A random (version 4) UUID as text, as `str(uuid.uuid4())` makes it, for a fraction of
    its cost: one per generation."""
    raw = bytearray(_ENTROPY.take(16))
    raw[6] = raw[6] & 0x0F | 0x40  # version 4
    raw[8] = raw[8] & 0x3F | 0x80  # the RFC 4122 variant
    text = raw.hex()
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


def default_stem(prompt: str, key: str) -> str:
    """`a-lighthouse-at-dusk_3f9c12ab`: the prompt's first words in ASCII (accents dropped;
    `image` when none is left, as for a Chinese prompt) and 8 characters of the generation's key,
    as its log lines show them (a hash of it, for a key of other characters)."""
    folded = unicodedata.normalize("NFKD", prompt.casefold()).encode("ascii", "ignore").decode()
    slug = ""
    for word in re.findall(r"[a-z0-9]+", folded):
        if slug and len(slug) + len(word) >= 40:  # noqa: PLR2004 - a name, not the prompt
            break
        slug = f"{slug}-{word}" if slug else word[:40]
    return f"{slug or 'image'}_{unique(key)}"


_FILE_SAFE = re.compile(r"[0-9a-z]{8}")


def unique(key: str) -> str:
    """8 characters of a generation's key that can name files: its own (as its log lines show
    them), or a hash of it for a key of other characters."""
    unique = key[:8].lower()
    if not _FILE_SAFE.fullmatch(unique):
        unique = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return unique


EXTENSIONS = ("png", "jpg", "webp", "gif")
"""What an image's file name may end with (from its bytes): each name is checked with each."""
_TAKEN = "an image by that name exists; pass overwrite=True or another id"


def refuse_taken_names(folder: Path, stem: str, n: int) -> None:
    """FileExistsError before paying for images that could not be saved under their names."""
    base = f"{folder}{os.sep}{stem}"  # plain strings: this runs on the loop for every request
    for index in range(n):
        for extension in EXTENSIONS:
            path = f"{base}_{index}.{extension}"
            if os.path.lexists(path):
                raise FileExistsError(errno.EEXIST, _TAKEN, path)


@attrs.define(eq=False)
class FolderNames:
    """A map's view of its folder: the names of its images, read once, then claimed by the
    map's requests as they go.

    Each request is checked before it is paid for with no system call on the loop (four `lstat`s
    each otherwise, which wait on the folder's lock while other images are being linked into it),
    and a second request of the map with the same id is refused too. A file that someone else
    puts in the folder later, under a name a request of the map takes, is found when the image
    is placed: the paid image then takes its spare name (`{stem}_{i}-{key}.{ext}`), as always.
    """

    folder: Path
    taken: set[str]
    """`{stem}_{index}` of every image file there (any of `EXTENSIONS`) or claimed."""

    @classmethod
    def scan(cls, folder: Path) -> FolderNames:
        """The images in `folder` now (one `scandir`; blocking: run it off the loop)."""
        taken = set()
        with os.scandir(folder) as entries:
            for entry in entries:
                head, dot, extension = entry.name.rpartition(".")
                if dot and extension in EXTENSIONS:
                    taken.add(head)
        return cls(folder, taken)

    def claim(self, stem: str, n: int) -> None:
        """FileExistsError when one of the `n` images of `stem` would take a name that is
        there or claimed; else those names are claimed for them."""
        wanted = [f"{stem}_{index}" for index in range(n)]
        for name in wanted:
            if name in self.taken:
                refuse_taken_names(self.folder, stem, n)  # the file there, named in the error
                raise FileExistsError(errno.EEXIST, _TAKEN, str(self.folder / f"{name}.png"))
        self.taken.update(wanted)
