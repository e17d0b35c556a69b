import os
import socket

import torch
import torch.multiprocessing as mp

from tests.test_trainer_fit import cfg, toy_corpus


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker_params(rank, world, port, out):
    """One process of a 2-process run; saves its own live parameters afterwards."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    import trainer.loop as loop
    import torch.distributed as dist

    captured = {}
    real_train = loop.train

    def spy(model, **kw):
        captured["model"] = model
        return real_train(model, **kw)

    import trainer.fit as fit
    fit.train = spy
    fit.fit_clap(toy_corpus(32), cfg(**{"train.epochs": 2, "train.batch_size": 4}), out / "run")
    torch.save({k: v.detach().clone() for k, v in captured["model"].state_dict().items()}, out / f"rank{rank}.pt")
    dist.destroy_process_group()


def test_two_gloo_processes_keep_parameters_in_sync(tmp_path):
    mp.spawn(_worker_params, args=(2, _free_port(), tmp_path), nprocs=2, join=True)
    a = torch.load(tmp_path / "rank0.pt")
    b = torch.load(tmp_path / "rank1.pt")
    from trainer.runs import seed_everything
    from trainer.model import ClapModel

    seed_everything(0)  # what fit_clap does before building the model
    init = ClapModel(cfg().model).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    moved = [k for k in a if a[k].is_floating_point() and not torch.equal(a[k], init[k])]
    assert moved, "training changed nothing"
    summary = torch.load(tmp_path / "run" / "best.pt", weights_only=False)["summary"]
    assert summary["processes"] == 2
