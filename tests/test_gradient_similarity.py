"""GradientSimilarityCallback (the paper's Fig. 3): the matrix, restored training state, trainable-only gradients,
DeepSpeed guards, the JSON and PNG files, and probe batch building and errors."""

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from matplotlib.image import imread
from transformers import TrainerControl, TrainerState

from trainers.callbacks import GradientSimilarityCallback, PartStageCallback, build_probe_batches
from trainers.freeze import set_trainable

from conftest import make_audio

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SAMPLES = {
    "asr/en": [
        {"task": "asr", "source_language": "en", "target_language": "en", "text": "the quick brown fox"},
        {"task": "asr", "source_language": "en", "target_language": "en", "text": "the lazy dog"},
    ],
    "asr/de": [
        {"task": "asr", "source_language": "de", "target_language": "de", "text": "der schnelle braune Fuchs"},
        {"task": "asr", "source_language": "de", "target_language": "de", "text": "den faulen Hund"},
    ],
    "s2tt/de-en": [
        {"task": "s2tt", "source_language": "de", "target_language": "en", "text": "the quick brown fox"},
        {"task": "s2tt", "source_language": "de", "target_language": "en", "text": "the lazy dog"},
    ],
}


def speech_samples():
    """SAMPLES with a distinct half-second synthetic clip per sample."""
    return {
        label: [{**sample, "audio": make_audio(0.5, seed=10 * row + column)} for column, sample in enumerate(samples)]
        for row, (label, samples) in enumerate(SAMPLES.items())
    }


@pytest.fixture
def probes(tiny_part):
    model, processor = tiny_part
    return model, build_probe_batches(processor, speech_samples(), sampling_rate=16000)


def flat_gradient(model, batch):
    model.zero_grad(set_to_none=True)
    model(**batch).loss.backward()
    return torch.cat([p.grad.reshape(-1) for p in model.parameters() if p.requires_grad])


def stage_end(callback, model, stage_dir, name="stage1", **state_kwargs):
    callback.on_stage_end(
        SimpleNamespace(output_dir=str(stage_dir.parent)),
        TrainerState(**state_kwargs),
        TrainerControl(),
        model=model,
        stage=SimpleNamespace(name=name),
        stage_index=0,
        stage_dir=str(stage_dir),
    )


def assert_png(path):
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    image = imread(path)
    assert image.shape[0] > 0 and image.shape[1] > 0


def test_matrix_is_a_cosine_similarity_matrix(probes):
    model, batches = probes
    labels, matrix = GradientSimilarityCallback(batches).compute(model)
    assert labels == ["asr/en", "asr/de", "s2tt/de-en"]
    assert matrix.shape == (3, 3)
    np.testing.assert_allclose(matrix, matrix.T, atol=1e-6)
    np.testing.assert_allclose(np.diag(matrix), 1.0, atol=1e-5)
    assert (matrix >= -1).all() and (matrix <= 1).all()


def test_matrix_equals_hand_computed_cosine(probes):
    model, batches = probes
    pair = {label: batches[label] for label in ("asr/en", "s2tt/de-en")}
    _, matrix = GradientSimilarityCallback(pair).compute(model)
    first, second = (flat_gradient(model, batch) for batch in pair.values())
    expected = float(torch.nn.functional.cosine_similarity(first, second, dim=0))
    assert matrix[0, 1] == pytest.approx(expected, abs=1e-5)


def test_gradients_and_train_modes_are_restored(probes):
    model, batches = probes
    set_trainable(model, ["adapter", "encoder_last_k"])
    model.train()
    modes = {name: module.training for name, module in model.named_modules()}
    parameters = [p for p in model.parameters() if p.requires_grad]
    saved = [torch.full_like(p, 0.5) if index % 2 else None for index, p in enumerate(parameters)]
    for parameter, grad in zip(parameters, saved):
        parameter.grad = grad
    GradientSimilarityCallback(batches).compute(model)
    assert {name: module.training for name, module in model.named_modules()} == modes
    for parameter, grad in zip(parameters, saved):
        assert parameter.grad is grad
        if grad is not None:
            assert (grad == 0.5).all()


def test_stage_end_writes_json_and_heatmap_of_trainable_parameters_only(probes, tmp_path):
    model, batches = probes
    counts = set_trainable(model, ["adapter"])
    callback = GradientSimilarityCallback(batches)
    stage_end(callback, model, tmp_path / "stage1")
    saved = json.loads((tmp_path / "stage1" / "gradient_similarity.json").read_text())
    assert saved["stage"] == "stage1"
    assert saved["labels"] == list(batches)
    assert saved["trainable_parameters"] == counts["adapter"] == saved["compared_parameters"]
    assert np.allclose(saved["matrix"], callback.results["stage1"].matrix)
    assert_png(tmp_path / "stage1" / "gradient_similarity.png")


def test_only_the_main_process_writes_files(probes, tmp_path):
    model, batches = probes
    callback = GradientSimilarityCallback(batches)
    stage_end(callback, model, tmp_path / "stage1", is_world_process_zero=False)
    assert "stage1" in callback.results
    assert not (tmp_path / "stage1").exists()


def test_train_end_writes_the_combined_figure(probes, tmp_path):
    model, batches = probes
    callback = GradientSimilarityCallback(batches, plot=False)  # per-stage heatmaps are tested above
    for name, groups in (("stage1", ["adapter"]), ("stage2", ["adapter", "encoder_last_k"])):
        set_trainable(model, groups)
        stage_end(callback, model, tmp_path / name, name=name)
    assert list(callback.results) == ["stage1", "stage2"]
    assert not (tmp_path / "stage1" / "gradient_similarity.png").exists()
    callback.plot = True
    callback.on_schedule_end(SimpleNamespace(output_dir="unused"), TrainerState(), TrainerControl(), output_dir=str(tmp_path))
    assert_png(tmp_path / "gradient_similarity_stages.png")


def test_max_parameters_compares_a_seeded_subset(probes):
    model, batches = probes
    set_trainable(model, ["adapter"])
    pair = {label: batches[label] for label in ("asr/en", "asr/de")}
    callback = GradientSimilarityCallback(pair, max_parameters=500, seed=3)
    result = callback.measure(model)
    assert 0 < result.compared_parameters <= 500 < result.trainable_parameters
    np.testing.assert_allclose(np.diag(result.matrix), 1.0, atol=1e-5)
    np.testing.assert_array_equal(callback.compute(model)[1], result.matrix)


def test_probe_without_gradient_on_trainable_parameters_gives_nan(tiny_part, tmp_path):
    model, processor = tiny_part
    samples = speech_samples()
    samples["mt/en-de"] = [
        {"task": "mt", "source_language": "en", "target_language": "de", "source_text": "the dog", "text": "der Hund"}
    ]
    set_trainable(model, ["adapter"])  # text-only mt never reaches the adapter
    callback = GradientSimilarityCallback(build_probe_batches(processor, samples, sampling_rate=16000))
    stage_end(callback, model, tmp_path / "stage1")
    matrix = callback.results["stage1"].matrix
    assert np.isnan(matrix[3]).all() and np.isnan(matrix[:, 3]).all()
    assert not np.isnan(matrix[:3, :3]).any()
    saved = json.loads((tmp_path / "stage1" / "gradient_similarity.json").read_text())
    assert saved["matrix"][3] == [None] * 4
    assert_png(tmp_path / "stage1" / "gradient_similarity.png")


class ZeroTwoEngine(torch.nn.Module):
    """Stands in for a DeepSpeed engine: a `module`, a `backward`, a ZeRO stage."""

    def __init__(self, module):
        super().__init__()
        self.module = module

    def backward(self, loss, **kwargs):
        loss.backward()

    def zero_optimization_stage(self):
        return 2


def test_deepspeed_needs_the_zero3_engine(probes):
    model, batches = probes
    callback = GradientSimilarityCallback(batches)
    with pytest.raises(ValueError, match="needs ZeRO stage 3, got stage 2"):
        callback.compute(ZeroTwoEngine(model))
    parameter = next(model.parameters())
    parameter.ds_id, parameter.ds_numel = 0, parameter.numel()  # what ZeRO-3 partitioning leaves on a parameter
    with pytest.raises(ValueError, match="pass the DeepSpeed engine"):
        callback.compute(model)


def test_bad_probe_inputs_are_named(tiny_part, probes):
    _, processor = tiny_part
    _, batches = probes
    unlabelled = {**batches, "asr/de": {k: v for k, v in batches["asr/de"].items() if k != "labels"}}
    with pytest.raises(ValueError, match=r"'asr/de' has no 'labels'"):
        GradientSimilarityCallback(unlabelled)
    with pytest.raises(ValueError, match="at least two probe batches"):
        GradientSimilarityCallback({"asr/en": batches["asr/en"]})
    with pytest.raises(ValueError, match=r"'asr/en'.*sampling_rate"):
        build_probe_batches(processor, speech_samples())  # arrays without their sampling rate
    with pytest.raises(ValueError, match=r"'asr/en' has no samples"):
        build_probe_batches(processor, {"asr/en": []})


def test_stage_events_default_to_no_ops(tiny_part):
    callback, stage = PartStageCallback(), SimpleNamespace(name="stage1")
    for event in (callback.on_stage_begin, callback.on_stage_end):
        returned = event(
            None, TrainerState(), TrainerControl(), model=tiny_part[0], stage=stage, stage_index=0, stage_dir="stage1"
        )
        assert returned is None
