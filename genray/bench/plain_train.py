"""The baseline `genray bench perf` measures Ray Train against: a family's model, data and train
step in a plain PyTorch loop with no Ray. One process, or, under `torchrun --nproc_per_node N`,
plain DDP over gloo with a DistributedSampler (the standard PyTorch recipe):

    python -m genray.bench.plain_train vae --epochs 6 --batch-size 64
    torchrun --nproc_per_node 2 -m genray.bench.plain_train vae --epochs 6 --batch-size 64

`train_plain` is the same loop as a function (genray bench gpu calls it in its own process).
Rank 0 prints one JSON line: per epoch the samples trained (all ranks) and the training seconds
(the slowest rank's; data loading included) and the
training thread's CPU seconds (the slowest rank's), and the unix time the first step finished.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from genray.config import build_config
from genray.families import get_family
from genray.metrics import global_throughput


def leave_process_group() -> None:
    """End a gloo process cleanly, then exit without interpreter finalization.

    `destroy_process_group` drops only torch's own reference: a DDP reducer that sits in a
    reference cycle keeps the gloo group alive until the interpreter shuts down, and a gloo group
    torn down there can abort with "terminate called without an active exception" (SIGABRT;
    pytorch/pytorch#190489, #179291). It happened once in CI to a rank whose work had finished.
    So: barrier (no rank leaves while the other is still in a collective), collect the cycles while
    the interpreter is whole, destroy the group, flush, and `os._exit(0)`. Callers drop their
    own references to DDP-wrapped models first.
    """
    dist.barrier()
    gc.collect()
    dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def train_plain(family_name: str, *, epochs: int, batch_size: int, overrides: list[str] = (), seed: int = 0,
                threads: int = 1, device: str = "cpu", world: int = 1, rank: int = 0) -> dict:
    """The plain loop, in this process (`world` > 1: under torchrun, whose process group is
    up). On a GPU it does what a careful PyTorch user does, as genray's loop does: batches
    built in page-locked memory and copied without blocking, conv weights and batches in
    channels-last, the run's train.precision by autocast; train.compile as the loop does it."""
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    device = torch.device(device)
    cfg = build_config(family_name, overrides=list(overrides))
    family_cls = get_family(family_name)
    family = family_cls(cfg.model, device)
    family.set_precision(cfg.train.precision)
    if device.type == "cuda":
        family.use_channels_last()
    if world > 1:
        family.wrap(DistributedDataParallel)
    if cfg.train.compile:
        family.compile()
    train_set, _ = family_cls.load_data(cfg.data)
    sampler = DistributedSampler(train_set, num_replicas=world, rank=rank, shuffle=True, seed=seed)
    loader = DataLoader(train_set, batch_size=batch_size, sampler=sampler, collate_fn=family_cls.collate_fn,
                        pin_memory=device.type == "cuda")

    epoch_records, first_step_at = [], None
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        family.train()
        samples, started, cpu_started = 0, time.perf_counter(), time.thread_time()
        for i, batch in enumerate(loader):
            with family.autocast():
                family.train_step(family.to_device(batch), epoch + i / len(loader))
            samples += family.batch_size(batch)
            if first_step_at is None:
                first_step_at = time.time()
        if device.type == "cuda":
            torch.cuda.synchronize(device)  # the epoch's steps have run, not only been queued
        _, cpu_seconds = global_throughput(samples, time.thread_time() - cpu_started)
        samples, seconds = global_throughput(samples, time.perf_counter() - started)
        epoch_records.append({"samples": samples, "seconds": seconds, "cpu_seconds": cpu_seconds})
    return {"world": world, "threads": threads, "device": str(device), "epochs": epoch_records,
            "first_step_at": first_step_at}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("family")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="config override")
    args = parser.parse_args()

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if world > 1:
        dist.init_process_group("gloo")
    out = train_plain(args.family, epochs=args.epochs, batch_size=args.batch_size, overrides=args.overrides,
                      seed=args.seed, threads=args.threads, device=args.device, world=world, rank=rank)
    if rank == 0:
        print(json.dumps(out))
    if world > 1:
        leave_process_group()  # the loop's DDP wrappers are unreachable by now: collected there


if __name__ == "__main__":
    main()
