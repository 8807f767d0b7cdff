#!/usr/bin/env python
"""Push a SADCL model folder to the Hugging Face Hub, loadable there with `trust_remote_code=True`.

    python scripts/push_to_hub.py MODEL_DIR REPO_ID [--private] [--commit-message MSG] [--revision BRANCH]

The model is loaded from MODEL_DIR and saved again into a staging folder, so the upload always holds the weights
(safetensors), config.json with the full `auto_map`, the modelling code it points to (configuration_sadcl.py,
modeling_sadcl.py, losses.py), the image processor (MODEL_DIR's, else the one derived from the config) and a model
card: MODEL_DIR/README.md when present (as `sadcl_hf.model_card.save_model_card` writes it, with metrics), its model
id (title, usage snippets, model-index name) replaced by REPO_ID, else a card generated from the config. Everything
goes up in one commit (`huggingface_hub.HfApi.upload_folder`). Log in first (`hf auth login`) or set HF_TOKEN.

    python scripts/push_to_hub.py MODEL_DIR REPO_ID --space ORG/NAME

also writes a ready Gradio Space ORG/NAME serving the web tagger for REPO_ID (`sadcl_hf.app.write_space_folder`:
app.py, requirements.txt, the Space card naming the model, a copy of sadcl_hf; for a digits model, digits-mosaic
example images) and uploads it in one commit (needs `pip install "sadcl-hf[app]"`).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from huggingface_hub import HfApi, ModelCard
from transformers import AutoConfig, AutoImageProcessor, AutoModelForImageClassification

from sadcl_hf.image_processing import image_processor_for_config
from sadcl_hf.model_card import save_model_card


def card_for_repository(readme: Path, repo_id: str) -> ModelCard:
    """The folder's model card with its model id (title, usage snippets, model-index name) replaced by `repo_id`."""
    card = ModelCard.load(readme)
    previous = card.data.model_name
    if previous and previous != repo_id:
        card.text = card.text.replace(previous, repo_id)
        card.data.model_name = repo_id
    return card


def stage_model_folder(model_dir: Path, staging_dir: Path, repo_id: str) -> list[str]:
    """Writes everything the Hub repository needs into `staging_dir`; returns the file names."""
    model = AutoModelForImageClassification.from_pretrained(model_dir)
    model.save_pretrained(staging_dir)
    if (model_dir / "preprocessor_config.json").is_file():
        image_processor = AutoImageProcessor.from_pretrained(model_dir)
    else:
        print(f"warning: {model_dir} has no preprocessor_config.json; deriving it from the config", file=sys.stderr)
        image_processor = image_processor_for_config(model.config)
    image_processor.save_pretrained(staging_dir)
    if (model_dir / "README.md").is_file():
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dir", help="a saved model folder (save_pretrained output)")
    parser.add_argument("repo_id", help="Hub repository id, e.g. user/sadcl-r101-coco")
    parser.add_argument("--private", action="store_true", help="create the repository as private")
    parser.add_argument("--commit-message", default="Upload SADCL model")
    parser.add_argument("--revision", default=None, help="branch to push to (default: main)")
    parser.add_argument("--token", default=None, help="Hub token (default: the logged-in one or HF_TOKEN)")
    parser.add_argument("--space", default=None, metavar="ORG/NAME", help="also push a web-tagger Space for the model")
    args = parser.parse_args(argv)

    model_dir = Path(args.model_dir)
    if not (model_dir / "config.json").is_file():
        parser.error(f"{model_dir} is not a model folder (no config.json)")
    api = HfApi(token=args.token)
    with tempfile.TemporaryDirectory() as staging:
        files = stage_model_folder(model_dir, Path(staging), args.repo_id)
        repo_id = api.create_repo(args.repo_id, private=args.private or None, exist_ok=True).repo_id
        if args.revision:
            api.create_branch(repo_id, branch=args.revision, exist_ok=True)
        commit = api.upload_folder(
            folder_path=staging, repo_id=repo_id, commit_message=args.commit_message, revision=args.revision
        )
    print(f"pushed {len(files)} files ({', '.join(files)}) to {repo_id}: {commit.commit_url}")
    if args.space:
        from sadcl_hf.app import default_examples, write_space_folder

        label_names = AutoConfig.from_pretrained(model_dir).label_names
        with tempfile.TemporaryDirectory() as staging:
            examples = default_examples(label_names, Path(staging) / "digits-mosaic", num_examples=4)
            files = write_space_folder(Path(staging) / "space", repo_id, examples=examples)
            space_id = api.create_repo(
                args.space, repo_type="space", space_sdk="gradio", private=args.private or None, exist_ok=True
            ).repo_id
            commit = api.upload_folder(
                folder_path=Path(staging) / "space", repo_id=space_id, repo_type="space",
                commit_message=f"Web tagger for {repo_id}",
            )  # fmt: skip
        print(f"pushed the Space ({len(files)} files) to {space_id}: {commit.commit_url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
