"""gather=True across 2 gloo processes equals one process on the concatenated batch, in loss and DDP gradients."""

import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ecgfast import losses

LOSSES = ["clocs", "supcon", "ntxent", "clip"]
SIZES = [5, 3]  # unequal local batches: the gather pads and trims
# Patients 0 and 1 each have a sample on both ranks, so positives span ranks too.
PATIENTS = torch.tensor([0, 1, 0, 2, 3, 1, 4, 4])


def _batch():
    gen = torch.Generator().manual_seed(0)
    return torch.randn(sum(SIZES), 12, generator=gen)


def _loss_and_grads(name, x, patient_id, *, gather):
    """The loss of a tiny linear encoder on x, and the gradients of its weight, bias and temperature."""
    torch.manual_seed(1)
    encoder = torch.nn.Linear(12, 2 * 8)
    tau = torch.tensor(0.2, requires_grad=True)
    z = encoder(x).reshape(x.shape[0], 2, 8)
    options = dict(backend="torch", gather=gather)
    if name == "clip":
        loss = losses.clip_loss(z[:, 0], z[:, 1], logit_scale=1 / tau, **options)
    elif name == "ntxent":
        loss = losses.ntxent_loss(z, temperature=tau, **options)
    else:
        loss = getattr(losses, f"{name}_loss")(z, patient_id, temperature=tau, **options)
    loss.backward()
    return loss.detach(), [encoder.weight.grad, encoder.bias.grad, tau.grad]


def _worker(rank, world, port, out):
    torch.set_num_threads(1)  # two processes on two cores, with tiny tensors
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        local = slice(sum(SIZES[:rank]), sum(SIZES[: rank + 1]))
        results = {}
        for name in LOSSES:
            loss, grads = _loss_and_grads(name, _batch()[local], PATIENTS[local], gather=True)
            for g in grads:  # what DistributedDataParallel does to parameter gradients
                dist.all_reduce(g)
                g /= world
            results[name] = (loss, grads)
        torch.save(results, out / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def gathered(tmp_path_factory):
    out = tmp_path_factory.mktemp("gather")
    mp.spawn(_worker, args=(len(SIZES), _free_port(), out), nprocs=len(SIZES))
    return [torch.load(out / f"rank{rank}.pt") for rank in range(len(SIZES))]


@pytest.mark.parametrize("name", LOSSES)
def test_gather_equals_single_process_on_concatenated_batch(gathered, name):
    loss, grads = _loss_and_grads(name, _batch(), PATIENTS, gather=False)
    for rank_results in gathered:
        rank_loss, rank_grads = rank_results[name]
        torch.testing.assert_close(rank_loss, loss, rtol=1e-5, atol=1e-6)
        for got, expected in zip(rank_grads, grads):
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
