"""Images that declare more pixels than ``images.MAX_PIXELS`` (a decompression bomb among
them) are refused from their header, never decoded: by ``predict``'s reader, the
image-folder reader (skipped and counted with ``skip_corrupt``), the REST request
builder and the SavedModel's ``serving_bytes`` signature."""

import io

import numpy as np
import pytest

from conftest import png_bomb, random_images


@pytest.fixture
def no_decoding(monkeypatch):
    """PIL's pixel decoding made to fail: a refusal seen under it came from the header."""
    from PIL import ImageFile

    def decode(self):
        raise AssertionError("an image was decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", decode)


def _encoded(width, height, fmt):
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(random_images(1, 1)[0]).resize((width, height)).save(buffer, fmt)
    return buffer.getvalue()


@pytest.mark.parametrize("width,height", [(20000, 20000), (8000, 6000), (40001, 1000)])
def test_an_image_over_the_limit_is_refused_from_its_header(width, height, no_decoding):
    from cmxl_keras import images
    from cmxl_keras.errors import DataError

    with pytest.raises(DataError, match="Downscale it first: the model sees 32 x 32") as error:
        images.decode_image(png_bomb(width, height), "big.png", 32)
    assert "'big.png'" in str(error.value) and "not decoded" in str(error.value)
    with pytest.raises(DataError, match="not decoded"):
        images.check_image(png_bomb(width, height), "big.png", None)


def test_an_image_at_the_limit_is_decoded(monkeypatch):
    """The limit is the declared pixel count itself: at it an image decodes, one pixel
    over it does not (a lower limit here, so that the images stay small)."""
    from cmxl_keras import images
    from cmxl_keras.errors import DataError

    monkeypatch.setattr(images, "MAX_PIXELS", 100 * 100)
    assert images.decode_image(png_bomb(100, 100), "edge.png", 8).shape == (8, 8, 3)
    assert images.check_image(png_bomb(50, 200), "edge.png", 8) == (50, 200)
    with pytest.raises(DataError, match="declares 101 x 100 pixels"):
        images.decode_image(png_bomb(101, 100), "over.png", 8)


def test_the_image_folder_reader_skips_and_counts_a_bomb(tmp_path):
    from PIL import Image

    from cmxl_keras import data
    from cmxl_keras.errors import DataError

    for name in ("cat", "dog"):
        (tmp_path / "train" / name).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(random_images(1, seed=i)[0]).save(tmp_path / "train" / name / f"{i}.png")
    (tmp_path / "train" / "dog" / "bomb.png").write_bytes(png_bomb(20000, 20000))
    with pytest.raises(DataError, match=r"bomb\.png.*more than 40 megapixels.*skip_corrupt"):
        data.read_data_dir(str(tmp_path))
    read = data.read_data_dir(str(tmp_path), skip_corrupt=True)
    assert read.skipped == 1 and len(read.train) == 6


def test_the_rest_request_builder_refuses_a_bomb_without_decoding_it(tmp_path, no_decoding):
    from cmxl_keras import serving
    from cmxl_keras.errors import DataError

    (tmp_path / "bomb.png").write_bytes(png_bomb(20000, 20000))
    (tmp_path / "ok.png").write_bytes(_encoded(40, 30, "PNG"))
    request = serving.rest_request([str(tmp_path / "ok.png")])
    assert len(request["instances"]) == 1
    with pytest.raises(DataError, match=r"bomb\.png.*not decoded"):
        serving.rest_request([str(tmp_path / "ok.png"), str(tmp_path / "bomb.png")], size=32)
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(DataError, match="not a readable image"):
        serving.rest_request([str(tmp_path / "text.png")])


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF", "BMP"])
def test_the_declared_size_is_read_from_the_header_as_pil_reads_it(fmt):
    import tensorflow as tf
    from PIL import Image

    from cmxl_keras import savedmodel

    data = _encoded(37, 23, fmt)
    assert Image.open(io.BytesIO(data)).size == (37, 23)
    assert savedmodel.declared_size(tf.constant(data)).numpy().tolist() == [23, 37]
    if fmt == "BMP":  # a top-down BMP stores its height negative
        flipped = bytearray(data)
        flipped[22:26] = (-23).to_bytes(4, "little", signed=True)
        assert savedmodel.declared_size(tf.constant(bytes(flipped))).numpy().tolist() == [23, 37]
    for other in (b"", b"\x89PNG", b"RIFF\x00\x00\x00\x00WEBPVP8 ", b"?" + data[1:]):
        assert savedmodel.declared_size(tf.constant(other)).numpy().tolist() == [-1, -1]


def test_serving_bytes_refuses_past_its_limit_and_serves_on(tmp_path):
    """A SavedModel written with a limit of 100 x 100 pixels: an image at it is served,
    one over it and a bomb are refused with the reason, and the next request is served;
    without the limit (the bench's "before") the same over-limit image is decoded."""
    import keras
    import tensorflow as tf

    from cmxl_keras import models, savedmodel

    model = models.build_convmixer(width=8, depth=1, patch_size=4, kernel_size=3)
    for limit, path in ((100 * 100, tmp_path / "checked"), (None, tmp_path / "unchecked")):
        savedmodel.write_saved_model(model, str(path), max_pixels=limit)
    serve = tf.saved_model.load(str(tmp_path / "checked")).signatures["serving_bytes"]
    unchecked = tf.saved_model.load(str(tmp_path / "unchecked")).signatures["serving_bytes"]
    at, over = _encoded(100, 100, "JPEG"), _encoded(101, 100, "PNG")
    assert serve(image_bytes=tf.constant([at]))["probabilities"].shape == (1, 10)
    for bad in (over, png_bomb(20000, 20000)):
        with pytest.raises(tf.errors.InvalidArgumentError, match="declares more than 10000"):
            serve(image_bytes=tf.constant([at, bad]))
    expected = keras.ops.softmax(model(np.zeros((1, 32, 32, 3), np.float32)))
    served = serve(image_bytes=tf.constant([_encoded(32, 32, "BMP")]))["probabilities"]
    assert served.shape == expected.shape
    assert unchecked(image_bytes=tf.constant([over]))["probabilities"].shape == (1, 10)
