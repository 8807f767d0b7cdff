"""Push to and load from a Hub: scripts/push_to_hub.py against the loopback server of `tests/hub_server.py`.

huggingface_hub reads HF_ENDPOINT when it is imported, so the client side runs in subprocesses pointed at the server.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import huggingface_hub.constants
import numpy as np
import pytest
import torch
from huggingface_hub import HfApi, ModelCard, hf_hub_download
from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, RepositoryNotFoundError
from transformers import AutoModelForImageClassification

from sadcl_hf.model_card import save_model_card

from .hub_server import HubServer

ROOT = Path(__file__).resolve().parents[1]
REPO_ID = "tester/sadcl-tiny"


@pytest.fixture
def hub():
    server = HubServer(user="tester").start()
    yield server
    server.stop()


def client_env(hub: HubServer, tmp_path: Path) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env.update(
        HF_ENDPOINT=hub.endpoint,
        HF_TOKEN="hf_test_token",
        HF_HUB_DISABLE_XET="1",  # the test server speaks Git LFS, not Xet
        HF_HOME=str(tmp_path / "hf_home"),  # empty cache, private module cache for the remote code
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HUB_DISABLE_PROGRESS_BARS="1",
        PYTHONPATH=str(ROOT),
    )
    return env


def run_python(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, f"stdout:\n{result.stdout[-3000:]}\nstderr:\n{result.stderr[-5000:]}"
    return result


def test_push_then_load_with_remote_code_where_sadcl_hf_is_missing(tiny_model_dir, tmp_path, hub):
    model_dir = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model_dir)
    local = AutoModelForImageClassification.from_pretrained(model_dir).eval()
    save_model_card(local, model_dir, metrics={"map": 61.5, "of1": 55.25}, dataset_name="digits-mosaic")
    env = client_env(hub, tmp_path)
    push = run_python(["scripts/push_to_hub.py", str(model_dir), REPO_ID, "--commit-message", "First model"], env)
    assert f"to {REPO_ID}" in push.stdout

    repo = hub.repos[REPO_ID]
    head = repo.commits[-1]
    assert head.message == "First model" and len(repo.commits) == 2  # creation + one upload commit
    expected_files = {
        ".gitattributes",
        "README.md",
        "model_card_data.json",
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
        "configuration_sadcl.py",
        "modeling_sadcl.py",
        "losses.py",
        "pipeline_image_classification.py",
        "images.py",  # the stock image-classification pipeline's image loading
    }
    assert set(head.files) == expected_files
    assert head.files["model.safetensors"].lfs and not head.files["config.json"].lfs  # weights went through LFS
    assert head.files["model.safetensors"].content == (model_dir / "model.safetensors").read_bytes()
    config = json.loads(head.files["config.json"].content)
    assert config["auto_map"] == {
        "AutoConfig": "configuration_sadcl.SADCLConfig",
        "AutoModel": "modeling_sadcl.SADCLModel",
        "AutoModelForImageClassification": "modeling_sadcl.SADCLForImageClassification",
    }
    (tmp_path / "pushed_README.md").write_bytes(head.files["README.md"].content)
    card = ModelCard.load(tmp_path / "pushed_README.md")  # the folder's card, retargeted to the repository
    assert card.data.model_name == REPO_ID
    assert {r.metric_type: r.metric_value for r in card.data.eval_results} == {"map": 61.5, "of1": 55.25}
    assert f'from_pretrained("{REPO_ID}", trust_remote_code=True)' in card.text
    assert "sadcl-resnet10t-digits-mosaic" not in card.text

    pixel_values = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    np.save(tmp_path / "pixel_values.npy", pixel_values.numpy())
    script = textwrap.dedent(
        f"""
        import os, sys
        sys.modules["sadcl_hf"] = None  # `import sadcl_hf` raises: only the repository's own code can be used
        import numpy as np
        import torch
        from huggingface_hub import snapshot_download
        from transformers import AutoImageProcessor, AutoModelForImageClassification

        model = AutoModelForImageClassification.from_pretrained({REPO_ID!r}, trust_remote_code=True).eval()
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        processor = AutoImageProcessor.from_pretrained({REPO_ID!r})
        assert processor.size == {{"height": 64, "width": 64}}, processor.size
        pixel_values = torch.from_numpy(np.load({str(tmp_path / "pixel_values.npy")!r}))
        with torch.no_grad():
            np.save({str(tmp_path / "remote_logits.npy")!r}, model(pixel_values).logits.numpy())
        snapshot = snapshot_download({REPO_ID!r})
        print("SNAPSHOT", sorted(os.listdir(snapshot)))
        """
    )
    load = run_python(["-c", script], env)
    assert f"SNAPSHOT {sorted(expected_files)}" in load.stdout

    with torch.no_grad():
        expected = local(pixel_values).logits.numpy()
    np.testing.assert_array_equal(np.load(tmp_path / "remote_logits.npy"), expected)
    assert hub.unhandled == []


def test_hub_server_error_responses(hub, tmp_path, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)  # the loopback server is reachable
    api = HfApi(endpoint=hub.endpoint, token="hf_test_token")
    assert api.create_repo("tester/errors").repo_id == "tester/errors"
    assert api.create_repo("tester/errors", exist_ok=True).repo_id == "tester/errors"
    with pytest.raises(HfHubHTTPError) as conflict:
        api.create_repo("tester/errors")
    assert conflict.value.response.status_code == 409
    with pytest.raises(EntryNotFoundError):
        hf_hub_download("tester/errors", "missing.json", endpoint=hub.endpoint, cache_dir=tmp_path)
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("tester/nothing", "config.json", endpoint=hub.endpoint, cache_dir=tmp_path)
    downloaded = hf_hub_download("tester/errors", ".gitattributes", endpoint=hub.endpoint, cache_dir=tmp_path)
    assert "*.safetensors filter=lfs" in Path(downloaded).read_text()


def _pushed_card(hub: HubServer, repo_id: str, tmp_path: Path) -> ModelCard:
    path = tmp_path / f"{repo_id.replace('/', '--')}-README.md"
    path.write_bytes(hub.repos[repo_id].commits[-1].files["README.md"].content)
    return ModelCard.load(path)


def test_model_and_trainer_push_to_hub_publish_the_sadcl_card(tiny_model_dir, tmp_path, hub):
    """`model.push_to_hub` and `SADCLTrainer.push_to_hub` upload the SADCL card, not transformers' generic one."""
    model_repo, trainer_repo = "tester/sadcl-model-push", "tester/sadcl-trainer-push"
    script = textwrap.dedent(
        f"""
        import json
        import torch
        from transformers import AutoModelForImageClassification
        from sadcl_hf.model_card import record_training_summary
        from sadcl_hf.training.arguments import SADCLTrainingArguments
        from sadcl_hf.training.trainer import SADCLTrainer

        model = AutoModelForImageClassification.from_pretrained({str(tiny_model_dir)!r})
        model.config.thresholds = [0.25, 0.5, 0.5, 0.5, 0.75]
        record_training_summary(
            model, {{"eval_map": 61.5, "eval_of1": 55.25}}, "digits-mosaic", eval_split="validation", stage="sadcl"
        )
        model.push_to_hub({model_repo!r}, commit_message="model push", tags=["extra-tag"])

        generator = torch.Generator().manual_seed(0)
        images = [
            {{"pixel_values": torch.randn(3, 64, 64, generator=generator), "labels": torch.tensor([1.0, 0, 1, 0, 1])}}
            for _ in range(4)
        ]
        args = SADCLTrainingArguments(
            output_dir={str(tmp_path / "run")!r}, hub_model_id={trainer_repo!r}, max_steps=1,
            per_device_train_batch_size=4, use_ema=False, report_to=[], save_strategy="no", disable_tqdm=True,
        )
        trainer = SADCLTrainer(model=model, args=args, train_dataset=images, eval_dataset=images)
        trainer.train()
        metrics = trainer.evaluate()
        trainer.push_to_hub(dataset="digits-mosaic")
        print("METRICS", json.dumps(metrics))
        """
    )
    result = run_python(["-c", script], client_env(hub, tmp_path))
    metrics = json.loads(result.stdout.split("METRICS ", 1)[1])

    model_commit = hub.repos[model_repo].commits[-1]
    assert model_commit.message == "model push" and "model.safetensors" in model_commit.files
    card = _pushed_card(hub, model_repo, tmp_path)
    assert card.data.model_name == model_repo and "extra-tag" in card.data.tags and "sadcl" in card.data.tags
    results = {r.metric_type: (r.metric_value, r.dataset_name, r.dataset_split) for r in card.data.eval_results}
    assert set(results) == {"map", "of1"} and results["map"][0] == 61.5 and results["of1"][0] == 55.25
    assert results["map"][2] == "validation" and "digits" in results["map"][1]
    assert "0: class_0 (0.25)" in card.text and "4: class_4 (0.75)" in card.text  # labels and thresholds
    assert f'pipeline("multi-label-image-classification", model="{model_repo}")' in card.text  # usage
    assert "Semantic-Aware Dual Contrastive Learning for Multi-label Image Classification" in card.text  # citation
    assert "Recipe stage | sadcl" in card.text
    assert "training_summary" not in json.loads(model_commit.files["config.json"].content)
    recorded = json.loads(model_commit.files["model_card_data.json"].content)
    assert recorded["metrics"] == {"map": 61.5, "of1": 55.25} and recorded["model_id"] == model_repo

    card = _pushed_card(hub, trainer_repo, tmp_path)
    assert card.data.model_name == trainer_repo and "sadcl" in card.data.tags
    results = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert results["map"] == round(metrics["eval_map"], 2) and results["cf1"] == round(metrics["eval_cf1"], 2)
    assert "| max_steps | 1 |" in card.text
    assert f'from_pretrained("{trainer_repo}", trust_remote_code=True)' in card.text
    assert "automatically generated" not in card.text  # not transformers' draft
    trainer_commit = hub.repos[trainer_repo].commits[-1]
    assert "training_summary" not in json.loads(trainer_commit.files["config.json"].content)
    assert json.loads(trainer_commit.files["model_card_data.json"].content)["metrics"]["map"] == results["map"]
    assert hub.unhandled == []


def test_push_script_card_from_the_recorded_card_data(tiny_model_dir, tmp_path):
    """A model folder with card data: scripts/push_to_hub.py renders the card again for the repository."""
    from sadcl_hf.hub.push import stage_model_folder
    from sadcl_hf.model_card import record_training_summary

    model = AutoModelForImageClassification.from_pretrained(tiny_model_dir)
    record_training_summary(model, {"map": 70.0}, "voc2007", eval_split="test")
    model.save_pretrained(tmp_path / "model")
    model.model_card_data.save(tmp_path / "model")
    assert not (tmp_path / "model" / "README.md").exists()
    stage_model_folder(tmp_path / "model", tmp_path / "staging", REPO_ID)
    card = ModelCard.load(tmp_path / "staging" / "README.md")
    assert card.data.model_name == REPO_ID
    assert [(r.metric_type, r.metric_value, r.dataset_split) for r in card.data.eval_results] == [("map", 70.0, "test")]
    assert json.loads((tmp_path / "staging" / "model_card_data.json").read_text())["model_id"] == REPO_ID


def test_push_script_card_of_an_old_folder_with_results_in_its_config(tiny_model_dir, tmp_path):
    """A folder saved before the card data existed (results in config.json's `training_summary`, no README):
    the staged card shows them and the staged config.json no longer holds them."""
    from sadcl_hf.hub.push import stage_model_folder

    model_dir = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    config["training_summary"] = {"dataset_name": "voc2007", "eval_split": "test", "metrics": {"map": 66.5}}
    (model_dir / "config.json").write_text(json.dumps(config))
    stage_model_folder(model_dir, tmp_path / "staging", REPO_ID)
    card = ModelCard.load(tmp_path / "staging" / "README.md")
    assert [(r.metric_type, r.metric_value, r.dataset_split) for r in card.data.eval_results] == [("map", 66.5, "test")]
    assert "training_summary" not in json.loads((tmp_path / "staging" / "config.json").read_text())


def test_push_with_space_writes_a_web_tagger_that_loads_the_pushed_model(tiny_model_dir, tmp_path, hub):
    env = client_env(hub, tmp_path)
    push = run_python(["scripts/push_to_hub.py", str(tiny_model_dir), REPO_ID, "--space", "tester/sadcl-tagger"], env)
    assert "pushed the Space" in push.stdout and "to tester/sadcl-tagger" in push.stdout

    files = hub.repos["spaces/tester/sadcl-tagger"].commits[-1].files
    space_files = {"app.py", "requirements.txt", "README.md", "sadcl_hf/serving/web.py", "sadcl_hf/modeling_sadcl.py"}
    assert space_files <= set(files)
    requirements = files["requirements.txt"].content.decode().splitlines()
    assert {"gradio", "torch", "transformers", "timm"} <= {re.split(r"[<>=!~;\[ ]", line)[0] for line in requirements}
    card = files["README.md"].content.decode()
    assert "sdk: gradio" in card and "app_file: app.py" in card and f"models:\n  - {REPO_ID}" in card

    # The Space's app.py, with the Space's own copy of sadcl_hf, builds the page for the model pushed to the Hub.
    space = tmp_path / "space"
    for name, stored in files.items():
        (space / name).parent.mkdir(parents=True, exist_ok=True)
        (space / name).write_bytes(stored.content)
    script = textwrap.dedent(
        """
        import runpy
        import gradio
        gradio.Blocks.launch = lambda self, *args, **kwargs: print("LAUNCH", len(self.blocks))
        namespace = runpy.run_path("app.py")
        import sadcl_hf
        print("PACKAGE", sadcl_hf.__file__)
        print("MODEL", namespace["MODEL_ID"])
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], env={**env, "PYTHONPATH": str(space)}, cwd=space, capture_output=True,
        text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    assert "LAUNCH" in result.stdout and f"MODEL {REPO_ID}" in result.stdout
    assert f"PACKAGE {space / 'sadcl_hf' / '__init__.py'}" in result.stdout
    assert hub.unhandled == []
