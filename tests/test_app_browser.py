"""The web tagger in a real browser: `scripts/app.py` serves a saved model on a free localhost port and headless
Chromium (Debian's `chromium` and `chromium-driver` packages, installed by `make test`), driven through Selenium,
uploads an image, reads the tags, sees the thumbnails and the labels marked below threshold, moves the threshold,
clicks an example thumbnail and uploads a file that is not an image."""

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import httpx
import numpy as np
import PIL.Image
import PIL.ImageDraw
import pytest
import torch
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait
from transformers import pipeline

from sadcl_hf import SADCLConfig, SADCLForImageClassification
from sadcl_hf.image_processing import image_processor_for_config

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--window-size=1280,1100",
)  # fmt: skip
LABELS = ["cat", "dog", "tree", "car", "boat", "bird"]


@pytest.fixture(scope="module")
def tagged(tmp_path_factory):
    """A tiny random model with readable labels and per-class thresholds under which exactly three labels of the
    test image (those ranked 1st, 3rd and 5th) are tagged; the image; the pipeline loaded from the folder."""
    folder = tmp_path_factory.mktemp("tagger")
    image = PIL.Image.new("RGB", (96, 80), (30, 60, 90))
    draw = PIL.ImageDraw.Draw(image)
    draw.ellipse((10, 10, 50, 60), fill=(240, 200, 40))
    draw.rectangle((55, 30, 90, 75), fill=(200, 30, 60))
    image_path = folder / "shapes.png"
    image.save(image_path)
    image.transpose(PIL.Image.Transpose.FLIP_LEFT_RIGHT).rotate(90, expand=True).save(folder / "example.png")

    torch.manual_seed(3)
    config = SADCLConfig.from_preset("tiny", id2label=dict(enumerate(LABELS)), use_pretrained_backbone=False)
    model = SADCLForImageClassification(config).eval()
    processor = image_processor_for_config(model.config)
    tagger = pipeline("multi-label-image-classification", model=model, image_processor=processor)
    ranked = tagger(str(image_path), threshold=0.0)
    scores = {tag["label"]: tag["score"] for tag in ranked}
    chosen = {ranked[rank]["label"] for rank in (0, 2, 4)}
    model.config.thresholds = [
        float(np.clip(scores[name] + (-1e-3 if name in chosen else 1e-3), 0.0, 1.0)) for name in LABELS
    ]
    model_dir = folder / "model"
    model.save_pretrained(model_dir)
    tagger.image_processor.save_pretrained(model_dir)
    loaded = pipeline("multi-label-image-classification", model=str(model_dir), device="cpu")
    return model_dir, image_path, loaded


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def app_url(tagged, tmp_path_factory):
    model_dir, image_path, _ = tagged
    port = _free_port()
    log = tmp_path_factory.mktemp("app") / "app.log"
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", "NO_PROXY": "127.0.0.1,localhost"}
    command = [sys.executable, "scripts/app.py", "--model", str(model_dir), "--port", str(port)]
    command += ["--examples", str(image_path.with_name("example.png")), "--max-file-size", "200kb"]
    with open(log, "w") as output:
        server = subprocess.Popen(command, cwd=ROOT, env=env, stdout=output, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 90
    try:
        while True:
            if server.poll() is not None:
                raise AssertionError(f"scripts/app.py exited with {server.returncode}:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"the app did not answer on {url} within 90 s:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=20)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    for path in (CHROMIUM, CHROMEDRIVER):
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path} is missing: `make browser` installs Debian's chromium and chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def _shown_tags(driver, image_name: str) -> list[str] | None:
    """The labels listed for `image_name`, in page order; None while the image has no entry yet."""
    try:
        entries = driver.find_elements(By.CSS_SELECTOR, f'#sadcl-tags .sadcl-image[data-image="{image_name}"]')
        if not entries:
            return None
        return [tag.get_attribute("data-label") for tag in entries[0].find_elements(By.CSS_SELECTOR, ".sadcl-tag")]
    except StaleElementReferenceException:
        return None


def _wait_for_tags(driver, image_name: str, expected: list[str], timeout: float = 30) -> None:
    try:
        WebDriverWait(driver, timeout, poll_frequency=0.2).until(lambda d: _shown_tags(d, image_name) == expected)
    except Exception as error:
        raise AssertionError(f"expected tags {expected}, the page shows {_shown_tags(driver, image_name)}") from error


def _upload(driver, path: Path) -> None:
    file_input = WebDriverWait(driver, 30).until(
        lambda d: d.find_element(By.CSS_SELECTOR, "#sadcl-images input[type=file]")
    )
    file_input.send_keys(str(path))


def test_tagger_page_in_chromium(tagged, app_url, browser, tmp_path):
    _, image_path, tagger = tagged
    calibrated = [tag["label"] for tag in tagger(str(image_path))]  # the model's own tags, its per-class thresholds
    assert len(calibrated) == 3 and calibrated != [tag["label"] for tag in tagger(str(image_path), threshold=0.5)]

    browser.get(app_url)
    _upload(browser, image_path)
    _wait_for_tags(browser, image_path.name, calibrated)
    WebDriverWait(browser, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#sadcl-attention img"))
    assert browser.find_element(By.CSS_SELECTOR, "#sadcl-calibrated input[type=checkbox]").is_selected()
    assert browser.find_elements(By.CSS_SELECTOR, "#sadcl-thumbnails img"), "the upload shows no thumbnail"
    # The attention panel's tag list has every label; the three below their threshold say so.
    browser.find_element(By.CSS_SELECTOR, "#sadcl-label-choice input").click()
    options = WebDriverWait(browser, 30).until(
        lambda d: (
            [
                option.get_attribute("aria-label")
                for option in d.find_elements(By.CSS_SELECTOR, "li[data-testid=dropdown-option]")
            ]
            or None
        )
    )
    below = {option.split(" (")[0] for option in options if "below threshold" in option}
    assert len(options) == len(LABELS) and below == set(LABELS) - set(calibrated), options
    browser.find_element(By.CSS_SELECTOR, "#sadcl-label-choice input").send_keys(Keys.ESCAPE)

    # One threshold for every class, chosen so that it tags a different set; moved with the keyboard (0.01 a step).
    scores = sorted(tag["score"] for tag in tagger(str(image_path), threshold=0.0))
    threshold = round((scores[1] + scores[2]) / 2, 2)
    expected = [tag["label"] for tag in tagger(str(image_path), threshold=threshold)]
    assert expected != calibrated
    slider = browser.find_element(By.CSS_SELECTOR, "#sadcl-threshold input[type=range]")
    slider.click()
    slider.send_keys(Keys.HOME)
    slider.send_keys(*[Keys.ARROW_RIGHT] * round(threshold * 100))
    _wait_for_tags(browser, image_path.name, expected)
    assert float(slider.get_attribute("value")) == pytest.approx(threshold)
    assert not browser.find_element(By.CSS_SELECTOR, "#sadcl-calibrated input[type=checkbox]").is_selected()
    screenshot = tmp_path / "tagger.png"
    assert browser.save_screenshot(str(screenshot)) and screenshot.stat().st_size > 10_000

    # An example thumbnail, clicked: tagged as the pipeline tags the file.
    example_path = image_path.with_name("example.png")
    example_tags = [tag["label"] for tag in tagger(str(example_path))]
    browser.get(app_url)
    WebDriverWait(browser, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#sadcl-examples img"))[0].click()
    _wait_for_tags(browser, example_path.name, example_tags)
    assert browser.find_elements(By.CSS_SELECTOR, "#sadcl-thumbnails img")

    # A file that is not an image: a message names it, nothing is tagged.
    not_an_image = tmp_path / "notes.txt"
    not_an_image.write_text("not an image")
    browser.get(app_url)
    _upload(browser, not_an_image)
    message = WebDriverWait(browser, 30).until(
        lambda d: d.find_element(By.CSS_SELECTOR, "#sadcl-status").text.strip() or None
    )
    assert "notes.txt is not an image" in message
    assert not browser.find_elements(By.CSS_SELECTOR, "#sadcl-tags .sadcl-image")


def test_script_refuses_uploads_over_max_file_size(app_url, tmp_path):
    """`scripts/app.py --max-file-size 200kb`: a larger upload is refused with a message that says so."""
    large = tmp_path / "large.png"
    PIL.Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 300, 3), dtype=np.uint8)).save(large)
    assert large.stat().st_size > 200 * 1024
    with open(large, "rb") as handle:
        response = httpx.post(f"{app_url}gradio_api/upload", files={"files": ("large.png", handle)}, timeout=30)
    assert response.status_code == 413
    assert "File size exceeded maximum allowed size of 204800 bytes" in response.text


def test_script_rejects_a_bad_max_file_size():
    command = [sys.executable, "scripts/app.py", "--model", "unused", "--max-file-size", "big"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "--max-file-size must be a size such as 500kb or 20mb, got 'big'" in result.stderr
