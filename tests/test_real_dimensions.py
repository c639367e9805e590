"""`benchmarks/real_dimensions.py` (make real-dimensions) kept working: its whole path at tiny dimensions, and the
full PART-2B shape's parameter counts (on the meta device) against the published model sizes."""

import json
import math
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))

import real_dimensions  # noqa: E402


def test_full_shape_matches_published_sizes():
    counts = real_dimensions.parameter_counts("full")
    groups = counts["groups"]
    assert groups["llm"] == 1_543_714_304  # Qwen2.5-1.5B (tied embeddings): "1.54B"
    assert abs(groups["encoder"] / 636e6 - 1) < 0.02  # SenseVoice-Large encoder: 636M (MinMo, Table 1)
    assert groups["encoder_last_k"] < groups["encoder"]
    assert counts["total"] == sum(groups[name] for name in ("adapter", "encoder", "llm", "llm_lora"))
    stages = counts["stages"]
    assert list(stages) == ["1_adapter", "2a_encoder_top", "2b_encoder_full", "3_cross_language"]
    assert stages["1_adapter"]["trainable"] == groups["adapter"]
    assert stages["2a_encoder_top"]["trainable"] == groups["adapter"] + groups["encoder_last_k"]
    assert stages["2b_encoder_full"]["trainable"] == groups["adapter"] + groups["encoder"]
    assert stages["3_cross_language"]["trainable"] == groups["adapter"] + groups["encoder"] + groups["llm_lora"]


def test_tiny_run_reports_every_phase(tmp_path):
    output = tmp_path / "report.json"
    report = real_dimensions.main([
        "--scale", "tiny", "--in-process", "--threads", "1", "--stages", "1,3", "--steps", "2", "--new-tokens", "3",
        "--clip-seconds", "2,1.5", "--target-tokens", "5", "--output", str(output),
    ])
    assert json.loads(output.read_text()) == json.loads(json.dumps(report))
    phases = report["phases"]
    assert list(phases) == ["1_adapter", "3_cross_language", "generate"]
    stage_1, stage_3 = phases["1_adapter"], phases["3_cross_language"]
    assert stage_1["trainable"] == report["parameters"]["stages"]["1_adapter"]["trainable"]
    assert stage_3["trainable"] == report["parameters"]["stages"]["3_cross_language"]["trainable"]
    assert stage_1["lora_enabled"] is False and stage_3["lora_enabled"] is True
    for phase in (stage_1, stage_3):
        assert phase["optimizer"] == "adamw"
        assert phase["optimizer_state_bytes"] == pytest.approx(phase["adamw_state_bytes"], rel=0.01)
        assert len(phase["steps"]) == 2 and all(math.isfinite(s["loss"]) and s["seconds"] > 0 for s in phase["steps"])
        assert phase["process_peak"] >= max(s["peak_rss"] for s in phase["steps"]) >= phase["rss_after_build"] > 0
    inputs = stage_1["inputs"]
    assert inputs["target_positions"] == 2 * (5 + 1)  # 5 target tokens + eos per clip
    assert inputs["audio_tokens"][0] > inputs["audio_tokens"][1] > 0
    generate = phases["generate"]
    assert generate["new_tokens"] == 3 and generate["tokens_per_second"] > 0
    assert "3_cross_language" in real_dimensions.format_report(report)
    stopped = {**stage_3, "optimizer": "sgd_in_backward", "error": "stopped by the memory guard", "running": "step 2",
               "guard_rss": stage_3["process_peak"], "gradient_bytes": 1, "steps": stage_3["steps"][:1]}
    table = real_dimensions.format_report({**report, "phases": {**phases, "3_cross_language": stopped}})
    assert "stopped by the memory guard during step 2" in table and "with AdamW it needs more than" in table


def test_over_budget_stage_steps_sgd_in_backward_and_projects_adamw():
    options = real_dimensions.parse_args([
        "--scale", "tiny", "--threads", "1", "--steps", "1", "--clip-seconds", "1", "--target-tokens", "3",
        "--memory-budget-gib", "0.01",
    ])
    result = real_dimensions.run_stage(options, "3_cross_language+checkpointing")
    assert result["optimizer"] == "sgd_in_backward" and result["optimizer_state_bytes"] == 0
    assert result["activation_checkpointing"] is True
    assert math.isfinite(result["steps"][0]["loss"])
    projected = result["process_peak"] + result["gradient_bytes"] + result["adamw_state_bytes"]
    assert result["projected_adamw_process_peak"] == projected


def test_device_option_needs_a_cuda_device(capsys):
    """`--device` takes cpu or cuda[:N]; asking for a GPU where there is none is a clear error, not a crash later."""
    import torch

    if torch.cuda.is_available():  # the GPU path itself is measured by hand (docs/benchmarks.md), not in CI
        pytest.skip("a CUDA device is present: the refusal cannot be shown here")
    for device in ("cuda", "mps"):
        with pytest.raises(SystemExit):
            real_dimensions.parse_args(["--scale", "tiny", "--device", device])
        assert f"--device {device!r}" in capsys.readouterr().err
    assert real_dimensions.parse_args(["--scale", "tiny"]).device == "cpu"
