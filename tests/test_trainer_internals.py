"""Pins of the Trainer and accelerate internals `PartTrainer` relies on (docs/design.md, "Trainer and accelerate
internals PART relies on"): each test fails when a transformers or accelerate release changes what the trainer
assumes, and names what to revisit. The behaviour behind each is tested end to end in tests/test_trainer.py,
tests/test_ddp.py and tests/test_zero3.py; these fail fast and say which assumption broke."""

import dataclasses
import functools
import inspect
from types import SimpleNamespace

import pytest
import torch
from accelerate import Accelerator, PartialState
from accelerate.state import AcceleratorState
from transformers import Trainer
from transformers.integrations.deepspeed import _load_state_dict_into_zero3_model

from trainers import PartTrainingArguments


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """Each test builds its own accelerator (mixed precision differs); no state leaks to or from other tests."""
    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def _parameters(function) -> list[str]:
    return list(inspect.signature(function).parameters)


def test_checkpoint_saving_goes_through_save_checkpoint_into_the_output_dir(tmp_path):
    """`PartTrainer._save_checkpoint` stages a checkpoint by pointing `args.output_dir` at a staging folder around
    `Trainer._save_checkpoint(model, trial)`, which writes `<_get_output_dir(trial)>/checkpoint-<step>` and records the
    best checkpoint under that same folder; `_save(output_dir, state_dict)` is where the model files are written."""
    assert _parameters(Trainer._save_checkpoint) == ["self", "model", "trial"]
    assert _parameters(Trainer._save) == ["self", "output_dir", "state_dict"]
    save_checkpoint = inspect.getsource(Trainer._save_checkpoint)
    assert "run_dir = self._get_output_dir(trial=trial)" in save_checkpoint
    assert "best_checkpoint_dir = os.path.join(run_dir, best_checkpoint_folder)" in save_checkpoint
    args = PartTrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[])
    assert Trainer._get_output_dir(SimpleNamespace(args=args, hp_search_backend=None), None) == str(tmp_path)


def test_zero3_state_dict_loader_keeps_its_signature():
    """`_load_state_dict_into_zero3_model(model, state_dict)` loads a finished stage's weights into a model whose
    parameters an earlier DeepSpeed engine partitioned (resume between stages under ZeRO-3; tests/test_zero3.py)."""
    assert _parameters(_load_state_dict_into_zero3_model)[:2] == ["model_to_load", "state_dict"]


def test_resetting_the_accelerator_state_keeps_the_process_state():
    """Each DeepSpeed stage gets a new accelerator (`create_accelerator_and_postprocess`) with its own DeepSpeed
    plugin, which accelerate refuses on a second `Accelerator` unless `AcceleratorState._reset_state()` first clears
    the accelerator state; the process state (process group, device) must survive it."""
    Accelerator(cpu=True)
    assert PartialState._shared_state and AcceleratorState._shared_state
    AcceleratorState._reset_state()
    assert AcceleratorState._shared_state == {} and PartialState._shared_state
    assert callable(Trainer.create_accelerator_and_postprocess)
    assert _parameters(Trainer.create_accelerator_and_postprocess) == ["self"]


def test_new_training_arguments_reset_the_live_accelerator_state(tmp_path):
    """Why a stage's arguments are a shallow copy (`PartTrainer._arguments`) and not `dataclasses.replace`: building
    `TrainingArguments` mid-run resets accelerate's state under the live accelerator. When this test fails, transformers
    stopped doing so, and `_arguments` can become `dataclasses.replace(self._run_args, **changes)`."""
    args = PartTrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[])
    accelerator = Accelerator(cpu=True)
    assert accelerator.state.mixed_precision == "no"
    dataclasses.replace(args, max_steps=3)
    assert AcceleratorState._shared_state == {}, "TrainingArguments no longer resets accelerate's state"


class _Decorated(torch.nn.Module):
    """A module whose forward carries a `functools.wraps` decorator, as transformers' model forwards do."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(2, 2)

    @staticmethod
    def _decorator(function):
        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            return function(*args, **kwargs)

        return wrapper

    @_decorator
    def forward(self, x):
        return self.linear(x)


def test_mixed_precision_keeps_the_original_forward_and_the_public_unwrap_strips_decorators():
    """Before re-wrapping the model for the next stage under DDP, `PartTrainer._reset_optimization_state` puts back the
    forward accelerate saved as `model._original_forward` when it wrapped it for autocast. The public
    `Accelerator.unwrap_model(model, keep_fp32_wrapper=False)` would do the same but, in accelerate 1.15, unwraps
    past the saved forward and strips the model's own forward decorators. When the second assertion fails, accelerate
    fixed that, and `_reset_optimization_state` can call it instead."""
    model = _Decorated()
    original = model.forward
    accelerator = Accelerator(cpu=True, mixed_precision="bf16")
    accelerator.prepare(model)
    assert model.__dict__["_original_forward"] == original and model.forward != original
    accelerator.unwrap_model(model, keep_fp32_wrapper=False)
    assert model.forward.__func__ is not _Decorated.forward, "unwrap_model now keeps decorated forwards"
