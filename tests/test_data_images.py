"""sadcl_hf.data.images.load_image: every source type, pixel mode, EXIF orientation and failure mode."""

import io
import pickle

import numpy as np
import PIL.Image
import pytest

from sadcl_hf.data import ImageLoadError, load_image


def encode(image: PIL.Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def test_sources_path_bytes_dict_pil_array(tmp_path):
    pixels = np.zeros((6, 10, 3), dtype=np.uint8)
    pixels[:, :5] = (200, 10, 30)
    image = PIL.Image.fromarray(pixels)
    path = tmp_path / "red_left.png"
    image.save(path)
    data = encode(image)
    as_dicts = [{"path": None, "bytes": data}, {"path": str(path), "bytes": None}]
    for source in (str(path), path, data, bytearray(data), *as_dicts, image, pixels):
        loaded = load_image(source)
        assert loaded.mode == "RGB" and loaded.size == (10, 6)
        np.testing.assert_array_equal(np.asarray(loaded), pixels)


def test_grayscale_palette_and_one_bit_become_rgb():
    gray = PIL.Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8) * 4)
    rgb = np.asarray(load_image(encode(gray)))
    assert rgb.shape == (8, 8, 3)
    np.testing.assert_array_equal(rgb[..., 0], np.asarray(gray))
    np.testing.assert_array_equal(rgb[..., 0], rgb[..., 2])

    palette = gray.convert("P", palette=PIL.Image.Palette.ADAPTIVE, colors=4)
    expected = np.asarray(palette.convert("RGB"))
    np.testing.assert_array_equal(np.asarray(load_image(encode(palette))), expected)

    one_bit = PIL.Image.new("1", (4, 4), 1)
    assert np.asarray(load_image(encode(one_bit))).min() == 255


def test_alpha_is_composited_over_white():
    rgba = np.zeros((2, 2, 4), dtype=np.uint8)
    rgba[0, 0] = (0, 0, 0, 0)  # fully transparent black -> white
    rgba[0, 1] = (255, 0, 0, 255)  # opaque red -> red
    rgba[1, :] = (0, 0, 255, 128)  # half-transparent blue -> mix
    loaded = np.asarray(load_image(encode(PIL.Image.fromarray(rgba))))
    assert tuple(loaded[0, 0]) == (255, 255, 255)
    assert tuple(loaded[0, 1]) == (255, 0, 0)
    assert loaded[1, 0, 2] == 255 and 120 <= loaded[1, 0, 0] <= 135


def test_cmyk_jpeg():
    cmyk = PIL.Image.new("CMYK", (8, 8), (0, 255, 255, 0))  # pure red in CMYK
    loaded = np.asarray(load_image(encode(cmyk, "JPEG", quality=95)))
    assert loaded.shape == (8, 8, 3)
    red, green, blue = loaded[4, 4].astype(int)
    assert red > 200 and green < 60 and blue < 60


def test_sixteen_bit_grayscale_is_rescaled():
    values = np.array([[0, 257, 32768, 65535]], dtype=np.uint16)
    image = PIL.Image.fromarray(values)
    assert image.mode.startswith("I;16")
    loaded = np.asarray(load_image(encode(image)))
    np.testing.assert_array_equal(loaded[0, :, 0], [0, 1, 128, 255])


def test_exif_rotation_is_applied():
    pixels = np.zeros((4, 8, 3), dtype=np.uint8)  # 8 wide, 4 tall; left half white
    pixels[:, :4] = 255
    image = PIL.Image.fromarray(pixels)
    exif = PIL.Image.Exif()
    exif[PIL.Image.ExifTags.Base.Orientation] = 6  # stored rotated: display needs 90 degrees clockwise
    loaded = load_image(encode(image, "JPEG", quality=100, exif=exif.tobytes()))
    assert loaded.size == (4, 8)
    upright = np.asarray(loaded).mean(axis=2)
    assert upright[:4].mean() > 200 and upright[4:].mean() < 50  # the white left half is now on top


def test_missing_empty_corrupt_truncated(tmp_path):
    with pytest.raises(ImageLoadError, match="file not found") as info:
        load_image(tmp_path / "nope.jpg")
    assert info.value.source == str(tmp_path / "nope.jpg")

    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(ImageLoadError, match="empty"):
        load_image(empty)

    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"this is not an image at all")
    with pytest.raises(ImageLoadError, match=r"garbage\.jpg.*not a recognised image"):
        load_image(garbage)

    noisy = PIL.Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    for name, keep in (("cut_header.jpg", 100), ("cut_data.jpg", 0.75), ("cut_data.png", 0.75)):
        data = encode(noisy, "PNG" if name.endswith("png") else "JPEG")
        path = tmp_path / name
        path.write_bytes(data[: keep if isinstance(keep, int) else int(len(data) * keep)])
        with pytest.raises(ImageLoadError, match=rf"{name}.*(corrupt|truncated)"):
            load_image(path)

    with pytest.raises(ImageLoadError, match="is a directory"):
        load_image(tmp_path)


def test_decompression_bomb_limit(monkeypatch):
    data = encode(PIL.Image.new("RGB", (40, 40)))
    monkeypatch.setattr(PIL.Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(ImageLoadError, match="decompression-bomb limit of 1000"):
        load_image(data)
    with pytest.raises(ImageLoadError, match="decompression"):
        load_image(encode(PIL.Image.new("RGB", (50, 50))))  # > 2x the limit: PIL itself refuses


def test_unsupported_inputs():
    with pytest.raises(ImageLoadError, match="uint8"):
        load_image(np.zeros((4, 4, 3), dtype=np.float32))
    with pytest.raises(ImageLoadError, match="shape"):
        load_image(np.zeros((4, 4, 2), dtype=np.uint8))
    with pytest.raises(ImageLoadError, match="neither"):
        load_image({"path": None, "bytes": None})
    with pytest.raises(ImageLoadError, match="expected a path"):
        load_image(12345)
    with pytest.raises(ImageLoadError, match="floating-point"):
        load_image(PIL.Image.new("F", (2, 2)))


def test_error_is_a_value_error_and_picklable():
    error = ImageLoadError("a.jpg", "file not found")
    assert isinstance(error, ValueError)
    restored = pickle.loads(pickle.dumps(error))
    assert (restored.source, restored.reason, str(restored)) == ("a.jpg", "file not found", str(error))
