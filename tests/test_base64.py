"""The base64 codec: pybase64's when installed, the standard library's otherwise, alike."""

import binascii
import subprocess
import sys
import textwrap

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gemimg_async import _base64

pybase64 = pytest.importorskip("pybase64", reason="the speedups extra (in the dev extra)")

STDLIB = (_base64._stdlib_decode, _base64._stdlib_encode)
PYBASE64 = (lambda data: pybase64.b64decode(data, validate=True), pybase64.b64encode)
# Quads of the alphabet, a few near-misses, and padding: the inputs where codecs could disagree.
TEXT = st.text(alphabet="AQgw+/=\n -_\x00é", max_size=24)


def _outcome(decode, text):
    try:
        return decode(text)
    except ValueError:
        return "refused"


def test_the_installed_codec_is_pybase64():
    """With pybase64 installed, images are decoded and encoded by it."""
    assert _base64.CODEC == "pybase64"


@given(st.binary(max_size=300))
def test_both_codecs_encode_alike_and_decode_what_they_encode(data):
    """Either codec turns bytes into the same text and that text back into the bytes."""
    assert STDLIB[1](data) == PYBASE64[1](data) == _base64.encode(data)
    assert STDLIB[0](STDLIB[1](data)) == PYBASE64[0](STDLIB[1](data)) == data


@given(TEXT)
def test_both_codecs_take_and_refuse_the_same_text(text):
    """Where padding, if any, is in the last quad (what callers check first), the two codecs
    give the same bytes or both refuse, for text or its bytes."""
    pad = text.find("=")
    if 0 <= pad < len(text) - 4:
        return
    for given_as in (text, text.encode()):
        assert _outcome(STDLIB[0], given_as) == _outcome(PYBASE64[0], given_as)


@pytest.mark.parametrize(
    "text",
    ["QUJD\nRA==", "QUJD RA==", "QUJDRA", "QUJDRA=", "=QUI", "QU=I", "Q===", "QUI-", "QU\u00e9="],
)
def test_decode_strict_refuses_all_but_canonical_base64(text):
    """Whitespace, a short quad, misplaced padding, the URL alphabet and non-ASCII are refused."""
    with pytest.raises(ValueError):
        _base64.decode_strict(text)


def test_the_standard_library_is_used_without_pybase64():
    """Without pybase64 the standard library's codec decodes the same answer the same way."""
    script = textwrap.dedent(
        """
        import sys
        sys.modules["pybase64"] = None  # as if not installed
        from gemimg_async import _base64
        from gemimg_async._jsonstream import ANY_INDEX, BASE64, Schema, parse_whole
        from gemimg_async.testing import png
        assert _base64.CODEC == "binascii", _base64.CODEC
        image = png(8, 8)
        body = b'{"data": [{"b64_json": "' + _base64.encode(image) + b'"}]}'
        schema = Schema.of({("data", ANY_INDEX, "b64_json"): BASE64})
        doc, pieces = parse_whole(body, schema)
        assert [data for _, data in pieces] == [image]
        print("ok")
        """
    )
    done = subprocess.run(  # noqa: S603 - our own interpreter on our own code
        [sys.executable, "-c", script], check=False, capture_output=True, text=True
    )
    assert done.stdout.strip() == "ok", done.stderr


def test_binascii_lets_excess_padding_through_where_pybase64_does_not():
    """The one known difference, which callers rule out by checking the padding first."""
    assert STDLIB[0]("QUJD====") == b"ABC"
    with pytest.raises(binascii.Error):
        PYBASE64[0]("QUJD====")
