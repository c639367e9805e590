"""Ends a multi-rank run before the interpreter exits, so a finished `torchrun` job does not abort at exit.

`torch.distributed.destroy_process_group()` only unregisters a group: while a DDP wrapper, a DeepSpeed engine or a
library-level object (default arguments bound to the world group, DTensor's and DeepSpeed's caches, DeepSpeed's
stack of ZeRO-3 models) still references it, gloo's threads live into the interpreter's finalization, where a gloo
worker freeing a Python tensor aborts the process ("terminate called without an active exception", exit -6).
`end_distributed` releases those holders, waits for every rank, then destroys the group while Python is alive. The
holders and how they were found: docs/scaling.md ("Ending a run") and docs/design.md ("Kept internals");
tests/test_fsdp2.py and tests/test_zero3.py fail when a torch or DeepSpeed release adds one.
"""

from __future__ import annotations

import gc
import glob
import sys
from types import FunctionType

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


MEMO_OWNERS = ("torch.distributed", "deepspeed")  # whose memo caches may key on groups, meshes or sharded parameters


def end_distributed(trainer=None) -> None:
    """Tears down the default process group at the end of a multi-rank run (nothing without one). Call it last, on
    every rank, passing a `transformers.Trainer` (e.g. `PartTrainer`) if there is one: its DDP wrapper or DeepSpeed
    engine, optimizer, scheduler and dataloaders are released first (it can still save and predict with its
    unwrapped model afterwards, on one process). Without a trainer, drop your own wrappers (`del ddp_model`) first."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    if trainer is not None:
        trainer.accelerator.free_memory()  # drops prepared models, optimizers, schedulers, the DeepSpeed engine
        trainer.model_wrapped = trainer.model
        trainer.deepspeed = None
        trainer.optimizer = trainer.lr_scheduler = None
    group = dist.group.WORLD  # where a function holds it as a default argument: None, the default group in torch's API
    for item in gc.get_objects():
        if type(item) is FunctionType and item.__defaults__ and any(d is group for d in item.__defaults__):
            item.__defaults__ = tuple(None if d is group else d for d in item.__defaults__)
        elif hasattr(type(item), "cache_clear") and str(getattr(item, "__module__", "")).startswith(MEMO_OWNERS):
            item.cache_clear()
    if "torch.distributed.tensor" in sys.modules:  # DTensor's caches hold device meshes (see the module docstring)
        from torch.distributed.tensor._redistribute import clear_redistribute_planner_cache
        from torch.distributed.tensor.debug import _clear_sharding_prop_cache

        _clear_sharding_prop_cache()
        clear_redistribute_planner_cache()
    gc.collect()  # wrappers in reference cycles hold the group too
    dist.barrier()  # no rank destroys its group while another still runs collectives on it
    deepspeed_comm = sys.modules.get("deepspeed.comm")
    if deepspeed_comm is not None and deepspeed_comm.is_initialized():
        deepspeed_comm.destroy_process_group()  # also drops DeepSpeed's own references to every group
        # each ZeRO-3 engine pushes its model on this stack and never pops it: the model (whose partitioned
        # parameters hold the groups) would live to the interpreter's exit. No forward runs now: empty it.
        getattr(sys.modules.get("deepspeed.runtime.zero.parameter_offload"), "FWD_MODULE_STACK", []).clear()
    else:
        dist.destroy_process_group()
    gc.collect()

__all__ = ["end_distributed", "gloo_threads"]
