"""A Hugging Face Space (Gradio SDK) serving the web tagger (`sadcl_hf.serving.web`) for a Hub model."""

from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
from collections.abc import Sequence
from pathlib import Path

__all__ = ["space_requirements", "write_space_folder"]

PACKAGE_DIR = Path(__file__).resolve().parents[1]
"""The `sadcl_hf` package folder, copied into the Space (sadcl-hf is not on PyPI)."""

_SPACE_APP = """\
\"\"\"SADCL tagger for {model_id} (written by sadcl-hf's `scripts/push_to_hub.py --space`).\"\"\"

from pathlib import Path

from sadcl_hf.serving.web import build_app

MODEL_ID = {model_id!r}
EXAMPLES = sorted(Path(__file__).parent.glob("examples/*"))

build_app(MODEL_ID, examples=EXAMPLES).queue().launch()
"""

_SPACE_README = """\
---
title: SADCL tagger
emoji: 🏷️
colorFrom: indigo
colorTo: yellow
sdk: gradio
sdk_version: {gradio_version}
app_file: app.py
models:
  - {model_id}
pinned: false
---

Multi-label tagging with [{model_id}](https://huggingface.co/{model_id}), a SADCL model (Semantic-Aware Dual
Contrastive Learning, ECAI 2023): drop images, read their tags, move the threshold, look at each tag's attention map.
The app and the `sadcl_hf` package beside it were written by sadcl-hf's `scripts/push_to_hub.py --space`.
"""


def space_requirements() -> list[str]:
    """The Space's requirements.txt lines: sadcl-hf's own dependencies and those of its `app` extra, as installed."""
    requirements = []
    for requirement in importlib.metadata.requires("sadcl-hf") or []:
        name, _, marker = requirement.partition(";")
        extra = re.search(r"extra\s*==\s*['\"]([^'\"]+)['\"]", marker)
        if extra is None or extra.group(1) == "app":
            requirements.append(name.strip())
    return requirements


def write_space_folder(
    directory: str | os.PathLike, model_id: str, examples: Sequence[str | os.PathLike] = ()
) -> list[str]:
    """Writes a ready Hugging Face Space (Gradio SDK) serving the web tagger for the Hub model `model_id`.

    The folder holds `app.py` (`build_app(model_id)`), a copy of the `sadcl_hf` package (it is not on PyPI),
    `requirements.txt` ([`space_requirements`]), `README.md` (the Space's card: SDK, app file, the model id) and the
    `examples` images under `examples/`. Returns the written paths relative to `directory`.
    """
    import gradio

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "app.py").write_text(_SPACE_APP.format(model_id=model_id), encoding="utf-8")
    (directory / "requirements.txt").write_text("\n".join(space_requirements()) + "\n", encoding="utf-8")
    readme = _SPACE_README.format(model_id=model_id, gradio_version=gradio.__version__)
    (directory / "README.md").write_text(readme, encoding="utf-8")
    shutil.copytree(
        PACKAGE_DIR, directory / "sadcl_hf",
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"), dirs_exist_ok=True,
    )  # fmt: skip
    for path in examples:
        (directory / "examples").mkdir(exist_ok=True)
        shutil.copyfile(path, directory / "examples" / Path(path).name)
    return sorted(path.relative_to(directory).as_posix() for path in directory.rglob("*") if path.is_file())
