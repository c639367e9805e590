"""Ends a multi-rank run before the interpreter exits, so a finished `torchrun` job does not abort at exit.

`torch.distributed.destroy_process_group()` only unregisters a group: while a DistributedDataParallel wrapper (its
reducer), a DeepSpeed engine or anything else still references it, the gloo backend and its threads (two
`pt_gloo_runloop` workers, one `gloo_tcp_loop`) live on until the interpreter's final garbage collection. A gloo
worker that releases a finished collective there drops the last reference to tensors Python created; freeing their
Python objects needs the GIL, and Python ends any thread that asks for the GIL while it finalizes (`pthread_exit`).
That forced unwind crosses the noexcept `~AsyncWork` destructor, so C++ calls `std::terminate`: "terminate called
without an active exception", SIGABRT (exit -6) after the script's last line. `end_distributed` drops what holds
the group first, waits for every rank, then destroys the group, which joins gloo's threads while Python is alive.
"""

from __future__ import annotations

import gc
import glob

import torch.distributed as dist


def gloo_threads() -> int:
    """How many of gloo's threads (`pt_gloo_runloop`, `gloo_tcp_loop`) this process still runs (read from
    `/proc/self/task`; 0 where that does not exist)."""
    names = []
    for path in glob.glob("/proc/self/task/*/comm"):
        try:
            with open(path) as f:
                names.append(f.read().strip())
        except OSError:  # the thread ended meanwhile
            continue
    return sum(name.startswith(("pt_gloo", "gloo_")) for name in names)


def end_distributed(trainer=None) -> None:
    """Tears down the default process group at the end of a multi-rank run; does nothing without one.

    Call it last, after training and saving, on every rank. With a `transformers.Trainer` (e.g. `PartTrainer`), pass
    it: its prepared objects (the DistributedDataParallel wrapper or DeepSpeed engine, optimizer, scheduler,
    dataloaders) are released first, so the group is destroyed here and not while the interpreter exits. Without a
    trainer, drop your own wrappers (`del ddp_model`) before calling it. The trainer can still save and predict
    with its unwrapped model afterwards, on one process.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    if trainer is not None:
        trainer.accelerator.free_memory()  # drops prepared models, optimizers, schedulers, the DeepSpeed engine
        trainer.model_wrapped = trainer.model
        trainer.deepspeed = None
        trainer.optimizer = trainer.lr_scheduler = None
    gc.collect()  # wrappers in reference cycles hold the group too
    dist.barrier()  # no rank destroys its group while another still runs collectives on it
    dist.destroy_process_group()
    gc.collect()


__all__ = ["end_distributed", "gloo_threads"]
