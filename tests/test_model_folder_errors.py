"""A model folder's image processor file: missing (the config's preprocessing, with a warning) vs. garbled (an error
naming the file)."""

import shutil

import PIL.Image
import pytest

from sadcl_hf.serving.pipeline import load_pipeline

from .conftest import run_script


@pytest.fixture
def model_copy(tiny_model_dir, tmp_path):
    return shutil.copytree(tiny_model_dir, tmp_path / "model")


def test_garbled_preprocessor_config_is_reported_as_invalid_json(model_copy, tmp_path, capsys):
    processor_file = model_copy / "preprocessor_config.json"
    processor_file.write_text('{"do_resize": tru')
    with pytest.raises(OSError, match=rf"{processor_file}' is not a valid JSON file"):
        load_pipeline(str(model_copy))
    assert "has no image processor" not in capsys.readouterr().err  # before: this warning, and the config's defaults

    image = tmp_path / "photo.png"
    PIL.Image.new("RGB", (20, 20), "red").save(image)
    result = run_script("predict", ["--model", model_copy, image, "--output", tmp_path / "out.jsonl"])
    assert result.returncode == 2
    assert "has no image processor" not in result.stderr
    assert "is not a valid JSON file" in result.stderr.strip().splitlines()[-1]
    assert str(processor_file) in result.stderr.strip().splitlines()[-1]


def test_missing_preprocessor_config_falls_back_with_a_warning(model_copy, capsys):
    (model_copy / "preprocessor_config.json").unlink()
    tagger = load_pipeline(str(model_copy))
    assert "has no image processor; using the config's preprocessing" in capsys.readouterr().err
    assert tagger.image_processor.size["height"] == tagger.model.config.image_size
