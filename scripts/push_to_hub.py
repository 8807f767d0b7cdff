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

also writes a ready Gradio Space ORG/NAME serving the web tagger for REPO_ID (`sadcl_hf.hub.space.write_space_folder`:
app.py, requirements.txt, the Space card naming the model, a copy of sadcl_hf; for a digits model, digits-mosaic
example images) and uploads it in one commit (needs `pip install "sadcl-hf[app]"`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sadcl_hf.cli import run_script
from sadcl_hf.hub.push import push_model_folder


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
    if not (Path(args.model_dir) / "config.json").is_file():
        parser.error(f"{args.model_dir} is not a model folder (no config.json)")
    pushed = push_model_folder(
        args.model_dir, args.repo_id, private=args.private, commit_message=args.commit_message,
        revision=args.revision, token=args.token, space_id=args.space,
    )  # fmt: skip
    repo_id, files, url = pushed["model"]
    print(f"pushed {len(files)} files ({', '.join(files)}) to {repo_id}: {url}")
    if "space" in pushed:
        space_id, files, url = pushed["space"]
        print(f"pushed the Space ({len(files)} files) to {space_id}: {url}")
    return 0


if __name__ == "__main__":
    run_script(main)
