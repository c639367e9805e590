"""PartTrainer under DeepSpeed ZeRO-3: two CPU ranks (gloo, `torch.distributed.run`) train the `part` preset on a
tiny model through all four stages (`tests/zero3_run.py`), then generate with rank-dependent prompts.

Checked: each rank holds half of the parameters, frozen ones included; every stage ran with its planned trainable
set (counted right while partitioned) on a new engine; frozen weights stayed put and LoRA trained in the last stage;
a rank with a text-only batch kept in step; the consolidated final checkpoint loads as a plain merged model and
reproduces the engine's loss and the ranks' generations; resuming mid-stage (DeepSpeed checkpoint) or between
stages (stage model) reproduces the uninterrupted run bit for bit. About 2 minutes on 2 CPU cores.
"""

import json
import os
import shutil

import pytest
import torch
from safetensors.torch import load_file

pytest.importorskip("deepspeed")

from part_fixtures import run_two_ranks, tiny_trainer  # noqa: E402
from trainers.freeze import parameter_groups  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAX_STEPS = 8  # as in zero3_run.py
TIMEOUT = 480  # a hang (ranks out of step in a collective) must fail the test, not stall the suite


def run_zero3(output_dir, *options):
    """Runs tests/zero3_run.py on two CPU ranks; returns (per-rank results, rank 0's record)."""
    config = os.path.join(REPO, "examples/configs/ds_zero3.json")
    run_two_ranks("zero3_run.py", str(output_dir), config, *options, timeout=TIMEOUT, env={"DS_ACCELERATOR": "cpu"})
    ranks = [json.loads((output_dir / f"zero3_rank{r}.json").read_text()) for r in range(2)]
    record = json.loads((output_dir / "zero3_record.json").read_text())
    return ranks, record


@pytest.fixture(scope="module")
def zero3_run(tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("zero3")
    ranks, record = run_zero3(output_dir)
    return output_dir, ranks, record


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The same trainer without DeepSpeed (same seed: the same initial weights), with its LoRA attached."""
    trainer = tiny_trainer(tmp_path_factory.mktemp("reference"), schedule="part", max_steps=MAX_STEPS)
    initial = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer._ensure_lora()
    return trainer, initial


@pytest.mark.slow
def test_each_rank_holds_half_of_the_parameters(zero3_run):
    _, ranks, _ = zero3_run
    for rank in ranks:
        for where, sizes in [*rank["partitions"].items(), ("final", rank["final_partition"])]:
            share = sizes["local"] / sizes["total"]
            assert abs(share - 0.5) <= 0.05, f"rank {rank['rank']} holds {share:.3f} of the parameters ({where})"
            # frozen or not, only parameters under the persistence threshold are kept whole
            assert sizes["largest_materialized"] <= rank["persistence_threshold"], where
            assert sizes["materialized"] < 0.1 * sizes["total"], where
    assert ranks[0]["final_partition"]["total"] == ranks[1]["final_partition"]["total"]
    assert sum(r["final_partition"]["local"] for r in ranks) >= ranks[0]["final_partition"]["total"]


@pytest.mark.slow
def test_every_stage_ran_with_its_planned_trainable_set(zero3_run, reference):
    output_dir, ranks, record = zero3_run
    trainer, _ = reference
    plan = trainer.schedule.stages
    summary = json.loads((output_dir / "training_summary.json").read_text())
    assert [s["name"] for s in summary["stages"]] == [s.name for s in plan]
    assert [s["global_step"] for s in summary["stages"]] == [s.num_steps(MAX_STEPS) for s in plan]
    assert all(s["last_loss"] is not None for s in summary["stages"])
    assert list(record["trainable"]) == [s.name for s in plan]
    model = trainer.model
    total = sum(p.numel() for p in model.parameters())
    for stage, stage_summary in zip(plan, summary["stages"]):
        groups = parameter_groups(model, stage.encoder_last_k)
        expected = {n for g in stage.trainable for n in groups[g]}
        assert set(record["trainable"][stage.name]) == expected, stage.name
        # counted from ds_numel while the parameters are partitioned (numel() is 0 then)
        assert stage_summary["trainable_parameters"] == sum(model.get_parameter(n).numel() for n in expected)
        assert stage_summary["total_parameters"] == total
        assert any(".lora_" in n for n in expected) == ("llm_lora" in stage.trainable)
    # the last stage mixes text-only MT in: a rank with a text-only batch still runs the audio path (dummy clip)
    assert sum(r["text_only_batches"] for r in ranks) >= 1
    assert all(r["batches"] == sum(s.num_steps(MAX_STEPS) for s in plan) for r in ranks)


@pytest.mark.slow
def test_frozen_weights_stay_and_trained_groups_move_across_stages(zero3_run, reference):
    output_dir, _, _ = zero3_run
    trainer, initial = reference
    stage_models = [
        load_file(str(output_dir / f"stage-{i}-{s.name}" / "stage_model" / "model.safetensors"))
        for i, s in enumerate(trainer.schedule.stages)
    ]
    llm_base = [n for n in initial if n.startswith("language_model.")]
    for index, weights in enumerate(stage_models):
        for name in llm_base:  # the LLM itself never trains (its LoRA does): checkpoint keys carry .base_layer.
            key = name if name in weights else name.replace(".weight", ".base_layer.weight").replace(
                ".bias", ".base_layer.bias")
            if key not in weights:
                assert name.endswith("lm_head.weight"), f"stage {index}: {name} missing"  # tied to the embeddings
                continue
            assert torch.equal(weights[key], initial[name]), f"stage {index}: frozen {name} changed"
        lora_b = [v for k, v in weights.items() if ".lora_B." in k]
        assert lora_b and all(bool((v == 0).all()) for v in lora_b) == (index < 3), f"stage {index}: LoRA B"
    encoder = [n for n in initial if n.startswith("audio_tower.")]
    assert all(torch.equal(stage_models[0][n], initial[n]) for n in encoder)  # stage 1 trains the adapter only
    assert not all(torch.equal(stage_models[1][n], stage_models[0][n]) for n in encoder)
    adapter = [n for n in initial if n.startswith("adapter.")]
    assert not all(torch.equal(stage_models[0][n], initial[n]) for n in adapter)


@pytest.mark.slow
def test_consolidated_final_model_reproduces_the_engine(zero3_run):
    from modeling_part import PartForSpeechToText

    output_dir, ranks, record = zero3_run
    model = PartForSpeechToText.from_pretrained(output_dir).eval()
    assert not model.has_lora and not any(".lora_" in n for n, _ in model.named_parameters())
    assert ranks[0]["engine_loss"] == ranks[1]["engine_loss"] == record["engine_loss"]
    batch = torch.load(output_dir / "fixed_batch.pt")
    with torch.no_grad():
        loss = float(model(**batch).loss)
    assert loss == pytest.approx(record["engine_loss"], rel=1e-5, abs=1e-6)

    # generation: prompts of different lengths and tasks (the last rank's is text-only), outputs of different
    # lengths; the ranks stayed in step (synced_gpus) and each got what the plain model generates for its prompt
    lengths = [len(r["generated"][0]) for r in ranks]
    assert lengths[0] != lengths[1]
    for rank in ranks:
        prompts = torch.load(output_dir / f"prompts_rank{rank['rank']}.pt")
        assert ("input_features" in prompts) == (rank["rank"] == 0)
        assert model.generate(**prompts, do_sample=False).tolist() == rank["generated"]
    # the batched evaluation helper: every rank ends with all predictions, in order
    assert ranks[0]["predictions"] == ranks[1]["predictions"] and len(ranks[0]["predictions"]) == 5


def _step_losses(output_dir):
    summary = json.loads((output_dir / "training_summary.json").read_text())
    return {name: [(e["step"], e["loss"]) for e in entries] for name, entries in summary["losses"].items()}


@pytest.mark.slow
@pytest.mark.parametrize("cut", ["mid_stage", "between_stages"])
def test_resume_under_zero3_reproduces_the_uninterrupted_run(zero3_run, tmp_path, cut):
    """mid_stage: the last stage's newest checkpoint is lost, so its DeepSpeed checkpoint (partitioned weights,
    optimizer) is loaded into the stage's new engine. between_stages: the last stage never started, so the
    finished stage's consolidated weights are loaded before the engine partitions them."""
    output_dir, _, full_record = zero3_run
    resumed = tmp_path / "run"
    outputs_of_the_script = shutil.ignore_patterns("zero3_*.json", "fixed_batch.pt", "prompts_rank*.pt")
    shutil.copytree(output_dir, resumed, ignore=outputs_of_the_script)
    last_stage = sorted(resumed.glob("stage-3-*"))[0]
    if cut == "mid_stage":
        for name in ("checkpoint-3", "stage_model", "stage_complete.json"):
            path = last_stage / name
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        assert (last_stage / "checkpoint-2" / "global_step2").is_dir()
    else:
        shutil.rmtree(last_stage)
    for name in ("model.safetensors", "training_summary.json"):
        (resumed / name).unlink()

    ranks, record = run_zero3(resumed, "--resume")
    assert all(r["resumed"] for r in ranks)
    assert ranks[0]["batches"] == (1 if cut == "mid_stage" else 3)
    assert _step_losses(resumed) == _step_losses(output_dir)
    assert record["engine_loss"] == full_record["engine_loss"]
    full, again = load_file(str(output_dir / "model.safetensors")), load_file(str(resumed / "model.safetensors"))
    assert full.keys() == again.keys()
    assert all(torch.equal(full[k], again[k]) for k in full)
