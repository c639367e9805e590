"""Ends a multi-rank run before the interpreter exits, so a finished `torchrun` job does not abort at exit.

`torch.distributed.destroy_process_group()` only unregisters a group: while a DistributedDataParallel wrapper (its
reducer), a DeepSpeed engine or anything else still references it, the gloo backend and its threads (two
`pt_gloo_runloop` workers, one `gloo_tcp_loop`) live on until the interpreter's final garbage collection. A gloo
worker that releases a finished collective there drops the last reference to tensors Python created; freeing their
Python objects needs the GIL, and Python ends any thread that asks for the GIL while it finalizes (`pthread_exit`).
That forced unwind crosses the noexcept `~AsyncWork` destructor, so C++ calls `std::terminate`: "terminate called
without an active exception", SIGABRT (exit -6) after the script's last line. `end_distributed` drops what holds
the group first, waits for every rank, then destroys the group, which joins gloo's threads while Python is alive.

Other holders are not objects a run owns: functions that take `group=torch.distributed.group.WORLD` as a default
argument, evaluated at import — `torch.distributed.nn.functional`'s collectives and DeepSpeed's
`TorchBackend.barrier`/`monitored_barrier`. transformers imports DeepSpeed lazily, after the group exists, even in a
plain DDP run, so those defaults keep the group (and its three gloo threads) alive to the end. In torch's API a group
of None means the default group, so `end_distributed` replaces the captured group there by None. Under FSDP2, DTensor's
memo caches (`functools.cache`/`lru_cache` in `torch.distributed.tensor`: sharding propagation, redistribution plans,
mesh topology) and its redistribution planners keep the device mesh of every operation they saw, and with it the
group: `end_distributed` clears them, with DTensor's C++ fast-path cache (`_clear_sharding_prop_cache`) and the planner
cache (`clear_redistribute_planner_cache`). tests/test_fsdp2.py fails when a torch release adds or renames one.
Under ZeRO-3 the model's partitioned parameters hold the groups; DeepSpeed keeps the model alive from a memo cache of
its parameter coordinator and from `FWD_MODULE_STACK`, where each engine pushes its model and never pops it: both are
emptied, so the groups go with the model (end the run inside a function, as the example scripts do).
tests/test_zero3.py fails when a DeepSpeed release adds another.
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


def _release_module_references(group) -> None:
    """Replaces `group` by None (the default group) wherever a function holds it as a default argument, and clears
    the memo caches of `MEMO_OWNERS` (see the module docstring)."""
    for item in gc.get_objects():
        if type(item) is FunctionType and item.__defaults__ and any(d is group for d in item.__defaults__):
            item.__defaults__ = tuple(None if d is group else d for d in item.__defaults__)
        elif hasattr(type(item), "cache_clear") and str(getattr(item, "__module__", "")).startswith(MEMO_OWNERS):
            item.cache_clear()


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
    _release_module_references(dist.group.WORLD)
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
