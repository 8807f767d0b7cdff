"""`SADCLLoss(gather_across_processes=True)` in two real gloo processes: the DDP-averaged gradient equals the
single-process gradient of the contrastive loss over the concatenated batch."""

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from sadcl_hf.losses import SADCLLoss

WORLD_SIZE, BATCH, NUM_LABELS, DIM, PROJECTED = 2, 3, 5, 8, 6


def _inputs():
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(WORLD_SIZE * BATCH, NUM_LABELS, DIM, generator=generator, dtype=torch.float64)
    bank = torch.randn(WORLD_SIZE * BATCH, NUM_LABELS, DIM, generator=generator, dtype=torch.float64)
    labels = (torch.rand(WORLD_SIZE * BATCH, NUM_LABELS, generator=generator) < 0.4).double()
    labels[0, 0] = labels[BATCH, 0] = 1.0  # a class shared by both processes' batches
    projector = torch.randn(DIM, PROJECTED, generator=generator, dtype=torch.float64)
    prototypes = torch.randn(NUM_LABELS, DIM, generator=generator, dtype=torch.float64)
    return images, bank, labels, projector, prototypes


def _contrastive_loss(criterion, images, bank, labels, projector, prototypes):
    logits = torch.zeros(labels.shape, dtype=torch.float64)
    result = criterion(logits, labels, images @ projector, bank @ projector, prototypes @ projector)
    return result.loss - result.terms["asl"], result


def _worker(rank: int, port: int, output: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD_SIZE)
    try:
        images, bank, labels, projector, prototypes = _inputs()
        rows = slice(rank * BATCH, (rank + 1) * BATCH)
        projector.requires_grad_(True)
        prototypes.requires_grad_(True)
        loss, result = _contrastive_loss(
            SADCLLoss(gather_across_processes=True), images[rows], bank[rows], labels[rows], projector, prototypes
        )
        loss.backward()
        for parameter in (projector, prototypes):  # what DDP does with the gradients
            dist.all_reduce(parameter.grad)
            parameter.grad /= WORLD_SIZE
        if rank == 0:
            torch.save((loss.item(), result.terms["sscl"].item(), projector.grad, prototypes.grad), output)
    finally:
        dist.destroy_process_group()


def test_gathered_contrastive_loss_has_the_global_batch_gradient(tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    output = str(tmp_path / "rank0.pt")
    mp.start_processes(_worker, args=(port, output), nprocs=WORLD_SIZE, start_method="spawn")
    loss, sscl, projector_grad, prototypes_grad = torch.load(output)

    images, bank, labels, projector, prototypes = _inputs()
    projector.requires_grad_(True)
    prototypes.requires_grad_(True)
    expected_loss, expected = _contrastive_loss(SADCLLoss(), images, bank, labels, projector, prototypes)
    expected_loss.backward()
    assert abs(loss - expected_loss.item()) < 1e-10 and abs(sscl - expected.terms["sscl"].item()) < 1e-10
    torch.testing.assert_close(projector_grad, projector.grad, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(prototypes_grad, prototypes.grad, rtol=1e-9, atol=1e-12)
