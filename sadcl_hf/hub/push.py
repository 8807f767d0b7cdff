"""Pushing a model folder (and optionally a web-tagger Space) to the Hugging Face Hub: behind `scripts/push_to_hub.py`.

from sadcl_hf.hub.push import push_model_folder

push_model_folder("runs/demo/model", "user/sadcl-digits", space_id="user/sadcl-tagger")
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from huggingface_hub import HfApi, ModelCard
from transformers import AutoConfig, AutoImageProcessor, AutoModelForImageClassification

from ..image_processing import image_processor_for_config
from ..model_card import CARD_DATA_NAME, save_model_card

__all__ = ["card_for_repository", "push_model_folder", "stage_model_folder"]


def card_for_repository(readme: str | os.PathLike, repo_id: str) -> ModelCard:
    """The folder's model card with its model id (title, usage snippets, model-index name) replaced by `repo_id`."""
    card = ModelCard.load(readme)
    previous = card.data.model_name
    if previous and previous != repo_id:
        card.text = card.text.replace(previous, repo_id)
        card.data.model_name = repo_id
    return card


def stage_model_folder(model_dir: str | os.PathLike, staging_dir: str | os.PathLike, repo_id: str) -> list[str]:
    """Writes everything the Hub repository needs into `staging_dir`; returns the file names.

    The model is loaded and saved again (safetensors weights, config.json with the full `auto_map` and the modelling
    code it points to), with `model_dir`'s image processor (else the one derived from the config) and its model card
    rendered again for `repo_id` from the folder's card data (`model_card_data.json`, or the results an older folder
    kept in config.json), written with it; a folder with a README.md but no card data keeps that README (model id
    replaced by `repo_id`).
    """
    model_dir, staging_dir = Path(model_dir), Path(staging_dir)
    model = AutoModelForImageClassification.from_pretrained(model_dir)
    model.save_pretrained(staging_dir)
    if (model_dir / "preprocessor_config.json").is_file():
        image_processor = AutoImageProcessor.from_pretrained(model_dir)
    else:
        print(f"warning: {model_dir} has no preprocessor_config.json; deriving it from the config", file=sys.stderr)
        image_processor = image_processor_for_config(model.config)
    image_processor.save_pretrained(staging_dir)
    if (model_dir / "README.md").is_file() and not (model_dir / CARD_DATA_NAME).is_file():
        card_for_repository(model_dir / "README.md", repo_id).save(staging_dir / "README.md")
    else:
        save_model_card(model, staging_dir, model_id=repo_id)

    auto_map = getattr(model.config, "auto_map", None) or {}
    required = {reference.split(".")[0] + ".py" for reference in auto_map.values()}
    missing = sorted(name for name in required if not (staging_dir / name).is_file())
    if "AutoModelForImageClassification" not in auto_map or missing:
        raise RuntimeError(
            f"the staged model cannot load with trust_remote_code (auto_map={auto_map}, missing files {missing}); "
            "import sadcl_hf before saving so the remote code is registered"
        )
    return sorted(path.name for path in staging_dir.iterdir())


def push_model_folder(
    model_dir: str | os.PathLike,
    repo_id: str,
    *,
    private: bool = False,
    commit_message: str = "Upload SADCL model",
    revision: str | None = None,
    token: str | None = None,
    space_id: str | None = None,
) -> dict[str, tuple[str, list[str], str]]:
    """Stages `model_dir` ([`stage_model_folder`]) and uploads it to `repo_id` in one commit (on branch `revision`
    when given); with `space_id`, also a Gradio Space serving the web tagger for it
    (`sadcl_hf.hub.space.write_space_folder`; needs the `[app]` extra).

    Returns `{"model": (repo id, file names, commit url)}`, plus `"space"` the same way when a Space was pushed.
    """
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise ValueError(f"{model_dir} is not a model folder (no config.json)")
    api = HfApi(token=token)
    with tempfile.TemporaryDirectory() as staging:
        files = stage_model_folder(model_dir, staging, repo_id)
        repo_id = api.create_repo(repo_id, private=private or None, exist_ok=True).repo_id
        if revision:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        commit = api.upload_folder(
            folder_path=staging, repo_id=repo_id, commit_message=commit_message, revision=revision
        )
    pushed = {"model": (repo_id, files, commit.commit_url)}
    if space_id is None:
        return pushed
    from ..data.digits_mosaic import default_examples
    from .space import write_space_folder

    label_names = AutoConfig.from_pretrained(model_dir).label_names
    with tempfile.TemporaryDirectory() as staging:
        examples = default_examples(label_names, Path(staging) / "digits-mosaic", num_examples=4)
        files = write_space_folder(Path(staging) / "space", repo_id, examples=examples)
        space_id = api.create_repo(
            space_id, repo_type="space", space_sdk="gradio", private=private or None, exist_ok=True
        ).repo_id
        commit = api.upload_folder(
            folder_path=Path(staging) / "space", repo_id=space_id, repo_type="space",
            commit_message=f"Web tagger for {repo_id}",
        )  # fmt: skip
    pushed["space"] = (space_id, files, commit.commit_url)
    return pushed
