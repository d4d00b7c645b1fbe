"""Input images made ready to send (`_inputs`): files read and inlined, URLs and data: URIs as
given, and every bad input refused before anything is sent; end to end against the fake relay.
"""

import base64

import pytest

from gemimg_async import ImageRequest, InvalidImageError
from gemimg_async._inputs import encode_images
from gemimg_async.testing import png

pytestmark = pytest.mark.anyio


# --- refused before sending --------------------------------------------------------------------


@pytest.mark.anyio
async def test_data_uri_with_bad_base64_after_the_head_raises():
    """A data URI whose base64 breaks after its head fails when made ready to send, off the loop."""
    encoded = base64.b64encode(png(40, 40)).decode()
    broken = f"data:image/png;base64,{encoded[:120]}!!!!{encoded[120:]}"
    request = ImageRequest("a fox", images=[broken])
    with pytest.raises(InvalidImageError, match="base64"):
        await encode_images(request.images)
