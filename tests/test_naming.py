"""`_naming`: a generation's Idempotency-Key and the stem its files get."""

import os
import uuid

import pytest

from gemimg_async._models import check_stem
from gemimg_async._naming import default_stem, new_key


def test_each_generation_key_is_a_fresh_version_4_uuid():
    """A generation's Idempotency-Key reads as a version 4 RFC 4122 UUID, and none repeats."""
    keys = [new_key() for _ in range(2000)]
    assert len(set(keys)) == len(keys)
    for key in keys:
        parsed = uuid.UUID(key)
        assert str(parsed) == key
        assert (parsed.version, parsed.variant) == (4, uuid.RFC_4122)


@pytest.mark.parametrize(
    ("prompt", "key", "stem"),
    [
        ("A lighthouse, at dusk!", "3f9c12ab-0000", "a-lighthouse-at-dusk_3f9c12ab"),
        ("Café crème, l'après-midi", "3f9c12ab-0000", "cafe-creme-l-apres-midi_3f9c12ab"),
        ("一只戴眼镜的橘猫", "3f9c12ab-0000", "image_3f9c12ab"),
        ("一只猫 in 4K", "3f9c12ab-0000", "in-4k_3f9c12ab"),
        ("a fox", "k/../../x-0001", None),
    ],
    ids=["words", "accents", "chinese", "mixed", "odd-key"],
)
def test_a_one_off_stem_is_a_slug_of_the_prompt_and_a_unique_part(prompt, key, stem):
    """A request without an id names its files after its prompt (ASCII words, accents dropped,
    `image` when none is left) and 8 characters of its key (a hash of a key of other
    characters); every stem passes the file-name rule."""
    made = default_stem(prompt, key)
    assert check_stem(made) == made
    if stem is not None:
        assert made == stem
    else:
        assert made.startswith("a-fox_")
        assert len(made) == len("a-fox_") + 8


def test_keys_read_the_system_randomness_in_blocks(monkeypatch):
    """The random bytes come from the system 4 KiB at a time, not once per key: 512 keys make
    two reads, and every key still differs."""
    from gemimg_async import _naming  # noqa: PLC0415

    reads = []
    real = os.urandom

    def urandom(count):
        reads.append(count)
        return real(count)

    monkeypatch.setattr(os, "urandom", urandom)
    monkeypatch.setattr(_naming, "_ENTROPY", _naming._Entropy())
    keys = {new_key() for _ in range(512)}
    assert len(keys) == 512
    assert reads == [4096, 4096]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork here")
def test_a_forked_child_never_repeats_its_parents_keys():
    """Keys made in a forked child are not the ones its parent makes next from the bytes it
    had already read."""
    new_key()  # the parent holds unread random bytes now
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next keys, to the parent
        os.close(read_end)
        os.write(write_end, " ".join(new_key() for _ in range(8)).encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        child = set(pipe.read().split())
    os.waitpid(pid, 0)
    parent = {new_key() for _ in range(8)}
    assert len(child) == 8
    assert not child & parent


def test_a_folders_names_are_its_image_files_whatever_they_are(tmp_path):
    """`FolderNames.scan` counts every entry named like an image (a file, a symlink, a dangling
    one) and nothing else (a sidecar, a temporary file, another extension)."""
    from gemimg_async._naming import FolderNames  # noqa: PLC0415

    (tmp_path / "fox_0.png").write_bytes(b"png")
    (tmp_path / "hen_0.jpg").symlink_to(tmp_path / "fox_0.png")
    (tmp_path / "owl_1.gif").symlink_to(tmp_path / "nowhere")
    for other in ("fox_0.png.json", ".gemimg-1.part", "cat_0.txt", "noext"):
        (tmp_path / other).write_bytes(b"x")
    names = FolderNames.scan(tmp_path)
    assert names.taken == {"fox_0", "hen_0", "owl_1"}


def test_claimed_names_are_refused_to_the_next_request(tmp_path):
    """A request claims `{stem}_{i}` for each of its images; one whose names are there or
    claimed gets FileExistsError naming the file, and claims nothing."""
    from gemimg_async._naming import FolderNames  # noqa: PLC0415

    (tmp_path / "fox_1.webp").write_bytes(b"webp")
    names = FolderNames.scan(tmp_path)
    names.claim("hen", 2)
    with pytest.raises(FileExistsError, match=r"hen_0\.png"):
        names.claim("hen", 2)
    with pytest.raises(FileExistsError, match=r"fox_1\.webp"):
        names.claim("fox", 2)
    assert names.taken == {"fox_1", "hen_0", "hen_1"}
