from types import SimpleNamespace

import datasets
import pytest
import torch
from safetensors.torch import load_file
from timm.utils.model_ema import ModelEmaV3
from transformers import TrainerCallback, TrainerControl, TrainerState

from sadcl_hf.training.arguments import SADCLTrainingArguments
from sadcl_hf.training.callbacks import (
    CHECKPOINT_COMPLETE_NAME,
    EMA_WEIGHTS_NAME,
    CheckpointStateCallback,
    OnlinePrototypeCallback,
    checkpoint_is_complete,
    mark_checkpoint_complete,
    newest_complete_checkpoint,
    process_file_name,
    resolve_resume_checkpoint,
)
from sadcl_hf.training.trainer import SADCLTrainer

from .conftest import make_tiny_model

NUM_LABELS, HIDDEN_DIM = 5, 128


class _RandomImages(torch.utils.data.Dataset):
    """`num_images` random 64 px images; class 0 is in every image."""

    def __init__(self, num_images: int, seed: int = 0):
        generator = torch.Generator().manual_seed(seed)
        self.pixel_values = torch.randn(num_images, 3, 64, 64, generator=generator)
        self.labels = (torch.rand(num_images, NUM_LABELS, generator=generator) < 0.5).float()
        self.labels[:, 0] = 1

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        return {"pixel_values": self.pixel_values[index], "labels": self.labels[index]}


def _arguments(output_dir, **overrides) -> SADCLTrainingArguments:
    quiet = {
        "report_to": [], "dataloader_num_workers": 0, "dataloader_pin_memory": False, "logging_steps": 1,
        "save_strategy": "no", "seed": 0, "disable_tqdm": True, "per_device_train_batch_size": 2,
    }  # fmt: skip
    return SADCLTrainingArguments(**{**quiet, "output_dir": str(output_dir), **overrides})


def _fake_outputs(generator, batch_size=4):
    """Model outputs with `label_features` `[B, K, D]` and `logits` `[B, K]`, and multi-hot labels `[B, K]`."""
    outputs = SimpleNamespace(
        label_features=torch.randn(batch_size, NUM_LABELS, HIDDEN_DIM, generator=generator),
        logits=torch.randn(batch_size, NUM_LABELS, generator=generator),
    )
    labels = (torch.rand(batch_size, NUM_LABELS, generator=generator) < 0.5).float()
    labels[:, -1] = 0  # the last class is never seen
    return outputs, labels


def test_per_process_files_share_one_naming_scheme():
    assert process_file_name("memory_bank", 0) == "memory_bank-rank0.safetensors"
    assert process_file_name("online_prototypes", 3) == "online_prototypes-rank3.safetensors"


class _EMAStepRecorder:
    """Records the `step` of each `ema.update` call."""

    def __init__(self, ema):
        self.ema, self.updates = ema, []
        update = ema.update
        ema.update = lambda model, step=None: (self.updates.append(step), update(model, step=step))


def test_ema_is_updated_once_per_optimizer_step_under_gradient_accumulation(tmp_path):
    model = make_tiny_model(objective="asl", dropout=0.0)
    initial = {name: value.clone() for name, value in model.state_dict().items()}
    args = _arguments(tmp_path, max_steps=3, gradient_accumulation_steps=2, use_ema=True, ema_decay=0.5)
    trainer = SADCLTrainer(model=model, args=args, train_dataset=_RandomImages(12))
    recorder = _EMAStepRecorder(trainer.ema)
    trainer.train()
    assert recorder.updates == [1, 2, 3]  # 6 micro-batches, 3 optimizer steps
    ema = trainer.ema.module.state_dict()
    moved = [key for key, value in model.state_dict().items() if not torch.equal(value, initial[key])]
    assert moved and all(not torch.equal(ema[key], initial[key]) for key in moved)


def test_online_prototypes_are_the_running_means_until_the_last_online_step():
    model = make_tiny_model(dropout=0.0)
    model.memory_bank = torch.randn(2, NUM_LABELS, HIDDEN_DIM)
    initial = model.prototypes.detach().clone()
    callback = OnlinePrototypeCallback(NUM_LABELS, HIDDEN_DIM, threshold=0.0, num_steps=2)
    generator = torch.Generator().manual_seed(0)
    args, control = SimpleNamespace(), TrainerControl()
    features, confident = [], []
    for step in (1, 2):
        outputs, labels = _fake_outputs(generator)
        callback.observe(outputs, labels, global_step=step - 1)
        features.append(outputs.label_features)
        confident.append((labels > 0.5) & (outputs.logits.sigmoid() > 0.0))
        callback.on_step_end(args, TrainerState(global_step=step), control, model=model)
        mask = torch.cat(confident).float()
        expected = (torch.cat(features) * mask[..., None]).sum(0) / mask.sum(0).clamp(min=1)[:, None]
        torch.testing.assert_close(model.prototypes[:-1].detach(), expected[:-1], rtol=1e-5, atol=1e-5)
        assert torch.equal(model.prototypes[-1], initial[-1])  # never seen: keeps its init
        assert torch.equal(model.memory_bank, model.prototypes.detach().expand_as(model.memory_bank))
    assert not callback.active  # the online phase ended at step 2: later batches are not observed
    callback.observe(*_fake_outputs(generator), global_step=2)
    resumed = OnlinePrototypeCallback(NUM_LABELS, HIDDEN_DIM, threshold=0.0, num_steps=2)
    resumed.on_train_begin(args, TrainerState(global_step=2), control)
    assert not resumed.active


def test_state_written_on_save_is_read_back_on_resume(tmp_path):
    args = _arguments(tmp_path, use_ema=True)
    state, control = TrainerState(global_step=3), TrainerControl()
    model = make_tiny_model()
    model.memory_bank = torch.randn(4, NUM_LABELS, HIDDEN_DIM)
    ema = ModelEmaV3(make_tiny_model(seed=1))
    online = OnlinePrototypeCallback(NUM_LABELS, HIDDEN_DIM, threshold=0.0, num_steps=10)
    online.observe(*_fake_outputs(torch.Generator().manual_seed(0)), global_step=0)
    checkpoint = tmp_path / "checkpoint-3"
    CheckpointStateCallback(ema, online).save(checkpoint, args, model)

    assert {path.name for path in checkpoint.iterdir()} == {
        EMA_WEIGHTS_NAME, "memory_bank-rank0.safetensors", "online_prototypes-rank0.safetensors"
    }  # fmt: skip
    restored_model, restored_ema = make_tiny_model(seed=2), ModelEmaV3(make_tiny_model(seed=2))
    restored_online = OnlinePrototypeCallback(NUM_LABELS, HIDDEN_DIM, threshold=0.0, num_steps=10)
    callback = CheckpointStateCallback(restored_ema, restored_online)
    callback.resume_from = checkpoint
    callback.on_train_begin(args, state, control, model=restored_model)
    assert torch.equal(restored_model.memory_bank, model.memory_bank)
    for key, value in ema.module.state_dict().items():
        assert torch.equal(restored_ema.module.state_dict()[key], value), key
    for key, value in online.initializer.state_dict().items():
        assert torch.equal(restored_online.initializer.state_dict()[key], value), key


class _BankAtTrainBegin(TrainerCallback):
    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.bank = model.memory_bank.clone()


def test_resume_from_the_latest_checkpoint_restores_the_memory_bank(tmp_path):
    """`train(resume_from_checkpoint=True)` finds the latest checkpoint and restores its memory bank before the
    first step."""
    dataset = _RandomImages(8)
    options = {"memory_bank_threshold": 0.0, "dropout": 0.0}
    schedule = {"use_ema": False, "lr_schedule": "trainer"}  # the one-cycle schedule cannot be extended on resume
    first = SADCLTrainer(
        model=make_tiny_model(**options), train_dataset=dataset,
        args=_arguments(tmp_path, max_steps=2, save_strategy="steps", save_steps=2, **schedule),
    )  # fmt: skip
    first.train()
    saved = load_file(tmp_path / "checkpoint-2" / process_file_name("memory_bank", 0))["memory_bank"]
    assert not torch.equal(saved, first.model.prototypes.detach().expand_as(saved))  # filled by training

    resumed = SADCLTrainer(
        model=make_tiny_model(**options), train_dataset=dataset,
        args=_arguments(tmp_path, max_steps=3, save_strategy="steps", save_steps=2, **schedule),
    )  # fmt: skip
    recorder = _BankAtTrainBegin()
    resumed.add_callback(recorder)
    resumed.train(resume_from_checkpoint=True)
    assert resumed.checkpoint_state.resume_from == str(tmp_path / "checkpoint-2")
    assert torch.equal(recorder.bank, saved)


@pytest.mark.parametrize("max_steps", [1, 2, 3, 4, 5, 6])
def test_one_cycle_schedule_works_for_any_number_of_steps(tmp_path, max_steps):
    """configs/demo.yaml's one-cycle schedule (pct_start 0.2) with --max_steps 5 divided by zero in torch."""
    trainer = SADCLTrainer(
        model=make_tiny_model(), train_dataset=_RandomImages(2),
        args=_arguments(tmp_path, max_steps=max_steps, lr_schedule="one_cycle", one_cycle_pct_start=0.2),
    )  # fmt: skip
    trainer.create_optimizer_and_scheduler(num_training_steps=max_steps)
    rates = []  # the rate of each optimizer step; the Trainer steps the schedule after each
    for _ in range(max_steps):
        rates.append(trainer.lr_scheduler.get_last_lr()[0])
        trainer.optimizer.step()
        trainer.lr_scheduler.step()
    assert all(0 < rate <= trainer.args.learning_rate for rate in rates)
    if max_steps > 1:
        assert rates[-1] < rates[0]  # the last step is at the end of the cycle, below its start


def _train_with_checkpoints(output_dir, max_steps, **overrides):
    trainer = SADCLTrainer(
        model=make_tiny_model(), train_dataset=_RandomImages(4),
        args=_arguments(output_dir, max_steps=max_steps, save_strategy="steps", save_steps=1, **overrides),
    )  # fmt: skip
    return trainer


def test_a_used_output_dir_is_refused_unless_resumed_or_overwritten(tmp_path):
    _train_with_checkpoints(tmp_path, 2).train()
    assert sorted(path.name for path in tmp_path.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]
    with pytest.raises(ValueError, match=r"holds another run's checkpoints \(checkpoint-2.*--overwrite_output_dir"):
        _train_with_checkpoints(tmp_path, 1).train()
    _train_with_checkpoints(tmp_path, 1, overwrite_output_dir=True).train()
    assert [path.name for path in tmp_path.glob("checkpoint-*")] == ["checkpoint-1"]  # the old run's are gone
    _train_with_checkpoints(tmp_path, 2).train(resume_from_checkpoint="latest")
    assert sorted(path.name for path in tmp_path.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]


def test_resume_refuses_an_incomplete_checkpoint_and_names_the_newest_complete_one(tmp_path):
    _train_with_checkpoints(tmp_path, 2).train()
    assert newest_complete_checkpoint(tmp_path) == tmp_path / "checkpoint-2"
    (tmp_path / "checkpoint-2" / CHECKPOINT_COMPLETE_NAME).unlink()  # as if the save had been interrupted
    assert not checkpoint_is_complete(tmp_path / "checkpoint-2")
    assert newest_complete_checkpoint(tmp_path) == tmp_path / "checkpoint-1"
    message = f"checkpoint-2: incomplete .* the newest complete one in {tmp_path} is {tmp_path / 'checkpoint-1'}$"
    with pytest.raises(ValueError, match=message):
        _train_with_checkpoints(tmp_path, 2).train(resume_from_checkpoint=str(tmp_path / "checkpoint-2"))
    for latest in ("latest", "true", True):
        assert resolve_resume_checkpoint(latest, tmp_path) == str(tmp_path / "checkpoint-1")


class _RecordingCollator:
    """Batches `{"id"}` rows into random 64 px images (seeded by id) with class 0 present; records the ids."""

    def __init__(self):
        self.ids = []

    def __call__(self, rows):
        ids = [row["id"] for row in rows]
        self.ids.extend(ids)
        pixel_values = torch.stack([torch.randn(3, 64, 64, generator=torch.Generator().manual_seed(i)) for i in ids])
        labels = torch.zeros(len(ids), NUM_LABELS)
        labels[:, 0] = 1
        return {"pixel_values": pixel_values, "labels": labels}


def _stream(num_rows: int):
    rows = datasets.Dataset.from_dict({"id": list(range(num_rows))})
    return rows.to_iterable_dataset(num_shards=4).shuffle(seed=0, buffer_size=num_rows)


def test_streamed_training_reshuffles_each_epoch(tmp_path):
    collator = _RecordingCollator()
    trainer = SADCLTrainer(
        model=make_tiny_model(), train_dataset=_stream(8), data_collator=collator,
        args=_arguments(tmp_path, max_steps=4, per_device_train_batch_size=4, use_ema=False),
    )  # fmt: skip
    trainer.train()
    first, second = collator.ids[:8], collator.ids[8:16]
    assert sorted(first) == sorted(second) == list(range(8))
    assert first != second


def test_each_process_of_a_streamed_run_reshuffles_each_epoch(tmp_path, monkeypatch):
    """With several processes the trainer batches each process's part of the stream itself: `set_epoch` must reach
    it."""
    trainer = SADCLTrainer(
        model=make_tiny_model(), train_dataset=_stream(64), data_collator=_RecordingCollator(),
        args=_arguments(tmp_path, per_device_train_batch_size=4, max_steps=1),
    )  # fmt: skip
    monkeypatch.setattr(SADCLTrainingArguments, "world_size", property(lambda self: 2))
    loader = trainer.get_train_dataloader()
    orders = []
    for epoch in (0, 1):
        loader.set_epoch(epoch)
        orders.append([row["id"] for row in loader.dataset])
    assert sorted(orders[0]) == sorted(orders[1]) and len(orders[0]) == 32  # process 0's half of the stream
    assert orders[0] != orders[1]


def _save_processes(folder, world_size, banks, online_states):
    """Writes a checkpoint as `world_size` processes would: one bank and online prototype state each."""
    for rank in range(world_size):
        args = SimpleNamespace(process_index=rank, world_size=world_size, should_save=rank == 0)
        model = make_tiny_model()
        model.memory_bank = banks[rank]
        online = OnlinePrototypeCallback(NUM_LABELS, HIDDEN_DIM, threshold=0.0, num_steps=10)
        online.initializer.load_state_dict(online_states[rank])
        CheckpointStateCallback(None, online).save(folder, args, model)
    mark_checkpoint_complete(folder, world_size)


def _restore_process(folder, rank, world_size):
    model = make_tiny_model(seed=3)
    online = OnlinePrototypeCallback(NUM_LABELS, HIDDEN_DIM, threshold=0.0, num_steps=10)
    callback = CheckpointStateCallback(None, online)
    callback.resume_from = folder
    args = SimpleNamespace(process_index=rank, world_size=world_size)
    callback.on_train_begin(args, TrainerState(global_step=2), TrainerControl(), model=model)
    return model.memory_bank, online.initializer.state_dict()


def _online_state(generator):
    counts = torch.randint(0, 4, (NUM_LABELS,), generator=generator)
    return {"means": torch.randn(NUM_LABELS, HIDDEN_DIM, generator=generator, dtype=torch.float64), "counts": counts}


def test_resume_on_another_number_of_processes_redistributes_banks_and_merges_online_sums(tmp_path, caplog):
    """2 -> 1: process 0 keeps saved process 0's bank; the online prototype sums of both are merged (their total is
    unchanged). 1 -> 2: both processes start from the saved bank; process 0 takes the online state, process 1 none."""
    generator = torch.Generator().manual_seed(0)
    banks = [torch.randn(4, NUM_LABELS, HIDDEN_DIM, generator=generator) for _ in range(2)]
    states = [_online_state(generator) for _ in range(2)]
    _save_processes(tmp_path / "two", 2, banks, states)
    with caplog.at_level("WARNING", logger="sadcl_hf.training.callbacks"):
        bank, online = _restore_process(tmp_path / "two", rank=0, world_size=1)
    assert "saved by 2 processes, resumed on 1" in caplog.text
    assert torch.equal(bank, banks[0])
    counts = states[0]["counts"] + states[1]["counts"]
    assert torch.equal(online["counts"], counts)
    sums = sum(state["means"] * state["counts"][:, None] for state in states)
    seen = counts > 0
    torch.testing.assert_close(online["means"][seen] * counts[seen, None], sums[seen], rtol=1e-12, atol=1e-12)

    _save_processes(tmp_path / "one", 1, banks[:1], states[:1])
    for rank in (0, 1):
        bank, online = _restore_process(tmp_path / "one", rank=rank, world_size=2)
        assert torch.equal(bank, banks[0])
        assert online["counts"].sum() == (states[0]["counts"].sum() if rank == 0 else 0)
