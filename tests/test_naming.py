"""`_naming`: a generation's Idempotency-Key and the stem its files get."""

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
