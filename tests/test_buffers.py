"""`_buffers`: pieces gathered without copying a lone first piece."""

from gemimg_async._buffers import joined


def test_a_first_piece_is_kept_as_it_is():
    """With nothing pending, a bytes piece comes back as the very same object."""
    piece = b"\x89PNG" * 1000
    assert joined(b"", piece) is piece


def test_a_first_piece_that_is_not_bytes_becomes_bytes():
    """A bytearray or memoryview first piece is copied into bytes: later writes to it cannot
    change what was gathered."""
    source = bytearray(b"abc")
    gathered = joined(b"", source)
    source[0] = ord("z")
    assert gathered == b"abc"
    assert type(gathered) is bytes


def test_later_pieces_append_in_place_without_touching_the_first():
    """The second piece makes one bytearray; the third grows that same one; the first piece
    (which its caller may still hold) is unchanged."""
    first = b"ab"
    second = joined(first, b"cd")
    third = joined(second, memoryview(b"ef"))
    assert third is second
    assert third == b"abcdef"
    assert first == b"ab"
