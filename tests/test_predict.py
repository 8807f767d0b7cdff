"""Batch tagging with scripts/predict.py: worker processes, records streamed as they are scored, bounded URLs and
caption files."""

import json
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from sadcl_hf.serving.batch import expand_inputs, predict_images, write_caption

from .conftest import PROJECT_ROOT, random_image, run_script


@pytest.fixture
def image_folder(tmp_path) -> Path:
    """Five readable images (RGB, grey JPEG, RGBA, a larger JPEG) and a corrupt one, in sorted order."""
    folder = tmp_path / "images"
    folder.mkdir()
    random_image(30).save(folder / "0.png")
    random_image(31, mode="L").save(folder / "1.jpg")
    (folder / "2_broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    random_image(32, mode="RGBA").save(folder / "3.png")
    random_image(33, size=(640, 480)).save(folder / "4.jpg", quality=90)
    random_image(34).save(folder / "5.png")
    return folder


def test_worker_processes_give_the_records_of_the_in_process_path_and_of_the_pipeline(tagger, image_folder):
    paths = expand_inputs([str(image_folder)])
    in_process = list(predict_images(tagger, paths, threshold=0.45, batch_size=2))
    with_workers = list(predict_images(tagger, paths, threshold=0.45, batch_size=2, num_workers=2))
    assert with_workers == in_process
    assert [Path(r["image"]).name for r in with_workers] == [Path(p).name for p in paths]
    assert "2_broken.jpg" in with_workers[2]["error"] and "labels" not in with_workers[2]
    for record in with_workers[:2] + with_workers[3:]:
        tags = tagger(record["image"], threshold=0.45)
        assert record["labels"] == [tag["label"] for tag in tags]
        assert [record["scores"][tag["label"]] for tag in tags] == pytest.approx([t["score"] for t in tags], abs=1e-6)


def test_top_k_and_excluded_labels(tagger, image_folder):
    paths = [str(image_folder / "0.png"), str(image_folder / "4.jpg")]
    everything = list(predict_images(tagger, paths, threshold=0.0))
    shaped = list(predict_images(tagger, paths, threshold=0.0, top_k=2, exclude_labels=["class_3"]))
    for full, record in zip(everything, shaped):
        assert record["labels"] == [label for label in full["labels"] if label != "class_3"][:2]
        assert record["scores"] == full["scores"]
    with pytest.raises(ValueError, match=r"\['dog'\] are not labels of the model"):
        next(predict_images(tagger, paths, exclude_labels=["dog"]))


class SlowServer:
    """A loopback HTTP server whose `/hang` accepts and never answers and whose `/endless` sends a JPEG header then
    zero bytes without end; every handler stops when the server closes (no thread outlives the test)."""

    def __init__(self):
        closed = self.closed = threading.Event()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                if self.path == "/endless":
                    self.send_response(200)
                    self.send_header("Content-Type", "image/jpeg")
                    self.end_headers()
                    self.wfile.write(b"\xff\xd8\xff\xe0")
                    chunk = bytes(64 * 1024)
                    sent = 0
                    while not closed.is_set() and sent < 256 * 1024**2:  # bounded even if the client never stops
                        try:
                            self.wfile.write(chunk)
                        except OSError:
                            return
                        sent += len(chunk)
                else:
                    closed.wait(120)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.closed.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def slow_server():
    server = SlowServer()
    yield server
    server.close()


def test_a_killed_run_keeps_the_records_already_written(tiny_model_dir, image_folder, slow_server, tmp_path):
    output = tmp_path / "preds.jsonl"
    command = [
        sys.executable, str(PROJECT_ROOT / "scripts" / "predict.py"), "--model", str(tiny_model_dir),
        str(image_folder / "0.png"), str(image_folder / "1.jpg"), f"{slow_server.url}/hang",
        str(image_folder / "3.png"), "--output", str(output), "--batch-size", "1", "--device", "cpu",
        "--url-timeout", "300",
    ]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=PROJECT_ROOT)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and process.poll() is None:
            if output.exists() and len(output.read_text().splitlines()) >= 2:
                break
            time.sleep(0.2)
        time.sleep(1.0)  # the run now waits on the URL that never answers
        assert process.poll() is None, "predict.py should still be waiting on the URL"
    finally:
        process.kill()
        process.wait(30)
    records = [json.loads(line) for line in output.read_text().splitlines()]
    assert [Path(r["image"]).name for r in records] == ["0.png", "1.jpg"]
    assert all(r["labels"] is not None and len(r["scores"]) == 5 for r in records)


def test_urls_that_never_answer_or_never_end_are_one_error_record_each(tiny_model_dir, image_folder, slow_server):
    output = image_folder.parent / "preds.jsonl"
    hang, endless = f"{slow_server.url}/hang", f"{slow_server.url}/endless"
    started = time.monotonic()
    result = run_script(
        "predict",
        ["--model", tiny_model_dir, hang, image_folder / "0.png", endless, "--output", output, "--device", "cpu",
         "--url-timeout", "2", "--max-url-bytes", "1000000", "--num-workers", "1", "--batch-size", "2"],
        timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert time.monotonic() - started < 200
    records = [json.loads(line) for line in output.read_text().splitlines()]
    assert [r["image"] for r in records] == [hang, str(image_folder / "0.png"), endless]
    assert "labels" in records[1] and "error" not in records[1]
    assert hang in records[0]["error"] and "labels" not in records[0]
    assert endless in records[2]["error"] and "1000000" in records[2]["error"]


def test_captions_beside_each_image(tiny_model_dir, image_folder, tmp_path):
    (image_folder / "5.txt").write_text("my own caption")
    random_image(35).save(image_folder / "0.jpg")  # shares 0.txt with 0.png: the first in order (0.jpg) keeps it
    output = tmp_path / "preds.jsonl"
    arguments = ["--model", tiny_model_dir, image_folder, "--output", output, "--device", "cpu", "--captions",
                 "--threshold", "0.0", "--top-k", "3", "--exclude-tags", "class_0, class_2"]  # fmt: skip
    result = run_script("predict", arguments)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "kept 1 existing caption file" in result.stderr
    records = {Path(r["image"]).name: r for r in map(json.loads, output.read_text().splitlines())}
    assert "0.txt already holds another image's caption; none for" in result.stderr
    for name in ("0.jpg", "1.jpg", "3.png", "4.jpg"):
        record = records[name]
        ranked = sorted(record["scores"], key=lambda label: -record["scores"][label])
        expected = [label for label in ranked if label not in ("class_0", "class_2")][:3]
        assert record["labels"] == expected
        assert (image_folder / name).with_suffix(".txt").read_text() == ", ".join(expected)
    assert not (image_folder / "2_broken.txt").exists()
    assert (image_folder / "5.txt").read_text() == "my own caption"
    assert write_caption(records["5.png"], overwrite=True) == image_folder / "5.txt"
    assert (image_folder / "5.txt").read_text() == ", ".join(records["5.png"]["labels"])


def test_caption_options_are_checked(tiny_model_dir, image_folder):
    result = run_script("predict", ["--model", tiny_model_dir, image_folder, "--captions", "--exclude-tags", "dog"])
    assert result.returncode == 2 and "--exclude-tags: ['dog'] are not labels" in result.stderr
    result = run_script("predict", ["--model", tiny_model_dir, image_folder, "--overwrite"])
    assert result.returncode == 2 and "--overwrite applies to --captions" in result.stderr
