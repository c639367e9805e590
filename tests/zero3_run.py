"""Trains the `part` preset on a tiny model under DeepSpeed ZeRO-3 (CPU, gloo), for `tests/test_zero3.py`.

Launch: python -m torch.distributed.run --nproc_per_node 2 tests/zero3_run.py OUTPUT_DIR [DEEPSPEED_CONFIG] [--resume]
(--resume: continue the run in OUTPUT_DIR from its last complete checkpoint.)

Writes, in OUTPUT_DIR:
  zero3_rank<r>.json  per rank: ZeRO-3 partition sizes (per stage), batches (text-only ones) seen, the engine's
                      loss on a fixed batch, generation outputs (not with --resume)
  prompts_rank<r>.pt  the generation prompt of each rank (not with --resume)
  zero3_record.json   rank 0: trainable parameter names per stage, the engine's loss on a fixed batch
  fixed_batch.pt      the fixed batch that loss was computed on (the test recomputes it from the final model)
"""

import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]
os.environ.setdefault("DS_ACCELERATOR", "cpu")

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from conftest import make_audio  # noqa: E402
from part_fixtures import report_gloo_threads, tiny_trainer  # noqa: E402
from trainers.teardown import end_distributed  # noqa: E402
from trainers.callbacks import PartStageCallback  # noqa: E402

MAX_STEPS = 8  # the part preset: 2 + 2 + 2 + 3 steps (fractions 0.25/0.2/0.2/0.35 of 8, rounded)


class Recorder(PartStageCallback):
    """Per stage: the trainable parameter names (at the start) and the ZeRO-3 partition sizes (at the end)."""

    def __init__(self):
        self.trainable = {}
        self.partitions = {}
        self.text_only_batches = 0
        self.batches = 0

    def on_stage_begin(self, args, state, control, *, model, stage, stage_index, stage_dir, **kwargs):
        self.trainable[stage.name] = sorted(n for n, p in model.named_parameters() if p.requires_grad)

    def on_stage_end(self, args, state, control, *, model, stage, stage_index, stage_dir, **kwargs):
        self.partitions[stage.name] = partition_sizes(model)


def partition_sizes(model):
    """This rank's share of the parameters: `local` (its partitions) of `total`; `materialized`: elements held
    whole right now (ZeRO-3 keeps parameters up to `stage3_param_persistence_threshold` elements whole)."""
    from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled

    if not is_deepspeed_zero3_enabled():  # e.g. run with ds_zero2.json
        return None
    local = total = materialized = largest_materialized = 0
    for p in model.parameters():
        if not hasattr(p, "ds_tensor"):
            raise AssertionError("a parameter is not ZeRO-3 partitioned")
        local += p.ds_tensor.numel()
        total += p.ds_numel
        if p.numel() > 0:  # 0 while partitioned and released
            materialized += p.numel()
            largest_materialized = max(largest_materialized, p.numel())
    return {"local": local, "total": total, "materialized": materialized, "largest_materialized": largest_materialized}


FIXED_SAMPLES = [
    {"task": "asr", "source_language": "en", "target_language": "en", "text": "two",
     "audio": {"array": make_audio(0.7, seed=5), "sampling_rate": 16000}},
    {"task": "s2tt", "source_language": "de", "target_language": "en", "text": "three",
     "audio": {"array": make_audio(0.9, seed=6), "sampling_rate": 16000}},
    {"task": "mt", "source_language": "de", "target_language": "en", "text": "four", "source_text": "vier"},
]


def generate_on_every_rank(trainer, rank, world_size):
    """Generation with rank-dependent prompts: different audio lengths (so different output budgets and lengths)
    and a text-only prompt on the last rank (which then runs no audio); under ZeRO-3 `generate` uses synced_gpus
    to keep the ranks in step. Then the batched evaluation helper over an odd number of mixed-task batches."""
    from trainers.evaluation import generate_predictions

    model, processor = trainer.model, trainer.processor
    model.eval()
    if rank == world_size - 1:
        prompts = processor(task="mt", source_language="de", target_language="en", text="zwei drei vier")
    else:
        prompts = processor(audio=make_audio(0.5 + 0.8 * rank, seed=rank), sampling_rate=16000, task="asr",
                            source_language="en")
    generated = model.generate(**prompts, do_sample=False)
    eval_samples = FIXED_SAMPLES + [
        {"task": "asr", "source_language": "de", "target_language": "de", "text": "eins",
         "audio": {"array": make_audio(1.1, seed=7), "sampling_rate": 16000}},
        {"task": "mt", "source_language": "de", "target_language": "en", "text": "one", "source_text": "eins"},
    ]
    predictions = generate_predictions(
        model, processor, eval_samples, batch_size=1, progress=False, max_new_tokens=6, do_sample=False
    )
    return prompts, {"generated": generated.tolist(), "predictions": predictions}


def main():
    arguments = [a for a in sys.argv[1:] if a != "--resume"]
    resume = "--resume" in sys.argv[1:]
    output_dir = arguments[0]
    default_config = os.path.join(os.path.dirname(HERE), "examples", "configs", "ds_zero3.json")
    config = arguments[1] if len(arguments) > 1 else default_config
    recorder = Recorder()
    # dispatch_batches=False: each rank collates its own share of the mixture stream (accelerate's default for an
    # IterableDataset, dispatching from rank 0, concatenates the ranks' batches, which differ in length).
    # mt_weight=2: text-only batches in the last stage, so a rank may have one while the other has audio.
    trainer = tiny_trainer(
        output_dir,
        schedule="part",
        max_steps=MAX_STEPS,
        callbacks=[recorder],
        save_steps=2,
        deepspeed=config,
        ddp_backend="gloo",
        mt_weight=2.0,
        accelerator_config={"dispatch_batches": False},
    )
    rank, world_size = dist.get_rank(), dist.get_world_size()

    original_compute_loss = trainer.compute_loss

    def compute_loss(model, inputs, *args, **kwargs):
        recorder.batches += 1
        recorder.text_only_batches += int("input_features" not in inputs)
        return original_compute_loss(model, inputs, *args, **kwargs)

    trainer.compute_loss = compute_loss
    trainer.train(resume_from_checkpoint=True if resume else None)

    # The engine's loss on a fixed batch (every rank runs the same forward under ZeRO-3).
    engine = trainer.model_wrapped
    batch = trainer.data_collator(FIXED_SAMPLES)
    engine.eval()
    with torch.no_grad():
        engine_loss = float(engine(**batch).loss)
    result = {
        "rank": rank,
        "world_size": world_size,
        "resumed": resume,
        "engine_loss": engine_loss,
        "partitions": recorder.partitions,
        "final_partition": partition_sizes(trainer.model),
        "persistence_threshold": trainer.accelerator.state.deepspeed_plugin.hf_ds_config.get_value(
            "zero_optimization.stage3_param_persistence_threshold"
        ),
        "batches": recorder.batches,
        "text_only_batches": recorder.text_only_batches,
    }
    if not resume:
        prompts, generation = generate_on_every_rank(trainer, rank, world_size)
        result.update(generation)
        torch.save(dict(prompts), os.path.join(output_dir, f"prompts_rank{rank}.pt"))
    dist.barrier()

    with open(os.path.join(output_dir, f"zero3_rank{rank}.json"), "w") as f:
        json.dump(result, f, indent=2)
    if rank == 0:
        torch.save(dict(batch), os.path.join(output_dir, "fixed_batch.pt"))
        with open(os.path.join(output_dir, "zero3_record.json"), "w") as f:
            json.dump({"trainable": recorder.trainable, "engine_loss": engine_loss}, f, indent=2)
    end_distributed(trainer)  # the DeepSpeed engine holds the group; release it, then destroy the group


if __name__ == "__main__":
    main()
    report_gloo_threads()  # the run's objects are gone: no gloo thread may be left
