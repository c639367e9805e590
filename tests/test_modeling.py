"""PartConfig / PartForSpeechToText: config validation, loss, generation, LoRA, save/load, parameter groups."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from transformers import AutoConfig, AutoModel, AutoModelForSpeechSeq2Seq, WhisperConfig

from modeling_part import PartConfig, PartForSpeechToText
from trainers.freeze import PARAMETER_GROUPS, frozen_modules_to_eval, parameter_groups, set_trainable

from conftest import make_audio


def _training_batch(processor, seconds=(1.0, 1.6), text=("hello world", "der Hund")):
    audio = [make_audio(s, seed=i) for i, s in enumerate(seconds)]
    return processor(audio=audio, sampling_rate=16000, task="asr", source_language=["en", "de"], target_text=list(text))


# ------------------------------------------------------------------------------------------------------ config
def test_config_round_trip(tmp_path):
    config = PartConfig(adapter_config={"hidden_size": 64, "num_attention_heads": 4}, text_config={"vocab_size": 300})
    config.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, PartConfig)
    without_path = lambda c: {k: v for k, v in c.to_dict().items() if k != "_name_or_path"}  # noqa: E731
    assert without_path(loaded) == without_path(config)
    assert loaded.audio_config.model_type == "fun_asr_nano_encoder"
    assert loaded.text_config.model_type == "qwen2"


def test_default_audio_token_rate_is_at_most_12_5():
    assert PartConfig().audio_token_rate == pytest.approx(100 / 6 / 2)
    whisper = PartConfig(audio_config=WhisperConfig(d_model=64))
    assert whisper.adapter_config.downsample_stride == 4
    assert whisper.audio_token_rate == pytest.approx(12.5)
    assert PartConfig(adapter_config={"downsample_stride": 1}).audio_token_rate == pytest.approx(100 / 6)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"adapter_config": {"hidden_size": 30, "num_attention_heads": 4}}, "adapter_config.hidden_size"),
        ({"audio_token_id": 10**6, "text_config": {"vocab_size": 100}}, "audio_token_id"),
        ({"audio_token_rate": 25.0}, "audio_token_rate"),
        ({"audio_config": {"model_type": "wav2vec2"}}, "feature_frame_rate"),
        ({"text_config": {"model_type": "t5"}}, "text_config"),
        ({"adapter_config": {"downsample_stride": 0}}, "downsample_stride"),
    ],
)
def test_config_validation_names_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PartConfig(**kwargs)


# -------------------------------------------------------------------------------------------------------- loss
def test_loss_equals_hand_computed_cross_entropy(tiny_part):
    model, processor = tiny_part
    batch = _training_batch(processor)
    labels = batch.pop("labels")
    logits = model(**batch).logits
    shifted = labels[:, 1:]
    keep = shifted != -100
    expected = F.cross_entropy(logits[:, :-1][keep], shifted[keep])
    output = model(**batch, labels=labels)
    torch.testing.assert_close(output.loss, expected)
    assert output.logits is None  # no [batch, seq, vocab] tensor on the loss path
    assert int(output.num_target_tokens) == int(keep.sum())


def test_target_only_head_matches_full_logits_loss_and_gradients(tiny_part):
    model, processor = tiny_part
    batch = _training_batch(processor)
    reference = copy.deepcopy(model)

    loss = model(**batch).loss
    loss.backward()

    # Reference: full logits through the LLM's own head and transformers' causal-LM loss.
    labels = batch["labels"]
    embeds = reference.get_input_embeddings()(batch["input_ids"])
    audio = reference.get_audio_features(batch["input_features"], batch["feature_attention_mask"])
    embeds = reference._merge_audio_embeddings(
        batch["input_ids"], embeds, audio.pooler_output, audio.audio_token_lengths
    )
    full_logits = reference.language_model(inputs_embeds=embeds, attention_mask=batch["attention_mask"]).logits
    reference_loss = reference.language_model.loss_function(full_logits, labels, vocab_size=full_logits.shape[-1])
    reference_loss.backward()

    torch.testing.assert_close(loss, reference_loss)
    for (name, p), (_, q) in zip(model.named_parameters(), reference.named_parameters()):
        if p.grad is None:
            assert q.grad is None, name
            continue
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=name)


# Loss and gradient norms per parameter group recorded from the code before the memory changes (commit d79f95b), on
# the fixture's model and `_training_batch`.
_RECORDED_LOSS = 6.175004005432129
_RECORDED_GRAD_NORMS = {"adapter": 0.651968176135642, "encoder": 0.7159716885576181, "llm": 2.3146361586182733}


@pytest.mark.parametrize("llm_trains", [True, False], ids=["all-trainable", "llm-frozen"])
@pytest.mark.parametrize("logits_per_chunk", [None, 3 * 512], ids=["one-chunk", "chunks-of-3-rows"])
def test_loss_and_gradients_equal_the_full_logits_reference(tiny_part, monkeypatch, llm_trains, logits_per_chunk):
    """The memory savings of the loss path (a sparse lookup gradient for the tied, trained embedding; the frozen
    head's chunked cross-entropy) leave the loss and every gradient as the plain full-logits computation gives them,
    and as the code before them gave (recorded)."""
    import modeling_part.modeling_part as modeling

    if logits_per_chunk is not None:
        monkeypatch.setattr(modeling, "_LOGITS_PER_CHUNK", logits_per_chunk)
    model, processor = tiny_part
    batch = _training_batch(processor)
    groups = ["adapter", "encoder"] + (["llm"] if llm_trains else [])
    set_trainable(model, groups)
    reference = copy.deepcopy(model)
    loss = model(**batch).loss
    loss.backward()

    embeds = reference.get_input_embeddings()(batch["input_ids"])
    audio = reference.get_audio_features(batch["input_features"], batch["feature_attention_mask"])
    embeds = reference._merge_audio_embeddings(
        batch["input_ids"], embeds, audio.pooler_output, audio.audio_token_lengths
    )
    logits = reference.language_model(inputs_embeds=embeds, attention_mask=batch["attention_mask"]).logits
    reference_loss = reference.language_model.loss_function(logits, batch["labels"], vocab_size=logits.shape[-1])
    reference_loss.backward()

    torch.testing.assert_close(loss, reference_loss, rtol=1e-5, atol=1e-5)
    assert abs(loss.item() - _RECORDED_LOSS) < 1e-5
    for (name, p), (_, q) in zip(model.named_parameters(), reference.named_parameters()):
        assert (p.grad is None) == (q.grad is None) == (not p.requires_grad), name
        if p.grad is not None:
            assert p.grad.layout == torch.strided, name  # a sparse lookup gradient never reaches `.grad`
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-5, msg=name)
    norms = {
        group: torch.stack([p.grad.double().norm() for p in parameters.values()]).norm().item()
        for group, parameters in parameter_groups(model).items() if group in groups
    }
    assert norms == pytest.approx({g: _RECORDED_GRAD_NORMS[g] for g in groups}, rel=1e-5)


def test_frozen_head_keeps_no_vocabulary_sized_tensor_for_backward(tiny_part):
    """With the LLM frozen, the loss keeps neither logits nor log-probabilities of the target rows for backward."""
    model, processor = tiny_part
    set_trainable(model, ["adapter"])
    batch = _training_batch(processor)
    vocab = model.get_output_embeddings().out_features
    saved = []

    def pack(tensor):
        saved.append(tuple(tensor.shape))
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = model(**batch).loss
    loss.backward()
    assert model.adapter.projection.weight.grad is not None
    assert not [shape for shape in saved if len(shape) == 2 and shape[-1] == vocab and shape[0] > 1], saved


def test_num_items_in_batch_scales_the_summed_loss(tiny_part):
    model, processor = tiny_part
    batch = _training_batch(processor)
    mean_loss = model(**batch)
    summed = model(**batch, num_items_in_batch=torch.tensor(1))
    torch.testing.assert_close(summed.loss, mean_loss.loss * mean_loss.num_target_tokens)


def test_placeholder_count_mismatch_raises(tiny_part):
    model, processor = tiny_part
    batch = _training_batch(processor)
    ids = batch["input_ids"].clone()
    first = (ids[0] == model.config.audio_token_id).nonzero()[0, 0]
    ids[0, first] = 5  # one placeholder fewer in sample 0
    with pytest.raises(ValueError, match="placeholder tokens do not match"):
        model(input_ids=ids, input_features=batch["input_features"], feature_attention_mask=batch["feature_attention_mask"])
    with pytest.raises(ValueError, match="no input_features"):
        model(input_ids=batch["input_ids"])


def test_text_only_and_mixed_batches(tiny_part):
    model, processor = tiny_part
    text_only = processor(
        task="mt", source_language="de", target_language="en", text=["zwei Hunde"], target_text=["two dogs"]
    )
    assert "input_features" not in text_only
    assert torch.isfinite(model(**text_only).loss)

    mixed = processor(
        audio=[make_audio(1.0), None, make_audio(1.3, seed=2)],
        sampling_rate=16000,
        task=["asr", "mt", "s2tt"],
        source_language=["de", "de", "fr"],
        target_language=["de", "en", "en"],
        text=[None, "zwei Hunde", None],
        target_text=["zwei Katzen", "two dogs", "three cats"],
    )
    assert mixed["input_features"].shape[0] == 2
    loss = model(**mixed).loss
    loss.backward()
    assert torch.isfinite(loss)


# -------------------------------------------------------------------------------------------------- generation
def test_batched_greedy_generation_equals_one_by_one(tiny_part):
    model, processor = tiny_part
    torch.manual_seed(1)
    with torch.no_grad():  # sharpen the random LM so greedy choices are not near-ties
        model.get_output_embeddings().weight.mul_(8)
    clips = [make_audio(s, seed=i) for i, s in enumerate((0.8, 1.7, 1.2))]
    languages = ["en", "de", "fr"]
    batch = processor(audio=clips, sampling_rate=16000, task="asr", source_language=languages)
    assert (batch["attention_mask"][:, 0] == 0).any()  # left padding is exercised
    batched = model.generate(**batch, max_new_tokens=12, do_sample=False)
    for index, clip in enumerate(clips):
        single = processor(audio=clip, sampling_rate=16000, task="asr", source_language=languages[index])
        alone = model.generate(**single, max_new_tokens=12, do_sample=False)
        row = batched[index][: alone.shape[1]]
        assert row.tolist() == alone[0].tolist()


def test_generate_returns_only_new_tokens_and_is_bounded_by_duration(tiny_part):
    model, processor = tiny_part
    model.generation_config.eos_token_id = None  # never stop early: the default budget must bound the output
    batch = processor(audio=make_audio(1.0), sampling_rate=16000, task="asr", source_language="en")
    output = model.generate(**batch, do_sample=False)
    seconds = int(batch["feature_attention_mask"].sum()) / model.config.feature_frame_rate
    expected = model.config.min_new_tokens_budget + math.ceil(model.config.max_new_tokens_per_second * seconds)
    assert output.shape[1] == expected
    result = model.generate(**batch, max_new_tokens=3, return_dict_in_generate=True)
    assert result.sequences.shape[1] == 3


# Recorded from the code before the decode-step changes (commit d79f95b), with the fixture's model made less uniform
# below: the changes to generation must leave its tokens and scores as they were.
_RECORDED_GREEDY = [[178, 48, 139, 66, 69, 216, 216, 159, 21, 66], [389, 69, 485, 389, 39, 66, 498, 51, 472, 94],
                    [234, 176, 270, 389, 164, 164, 164, 318, 69, 216]]
_RECORDED_BEAM = [[251, 94, 318, 69, 389, 354, 39, 389, 20, 389], [389, 69, 485, 389, 39, 66, 498, 51, 427, 42],
                  [418, 153, 389, 164, 477, 389, 477, 66, 216, 164]]
_RECORDED_SCORES = [  # the first 4 vocabulary entries of each sample's scores, for the first 4 greedy steps
    [[2.1092, 2.1848, 0.4813, -5.745], [-4.4732, 3.2822, -0.736, 1.0113], [-0.4211, 2.6246, 2.3181, -2.9361]],
    [[-2.9415, 3.894, -0.7718, -1.2087], [-5.8807, 0.7231, -1.4878, -2.065], [-0.2301, 3.0508, -2.2659, -3.7915]],
    [[4.4569, -0.7186, 2.3003, 0.9788], [-0.5027, 0.4924, 1.5931, 4.9539], [7.3453, -5.7082, 1.4731, -2.1607]],
    [[-1.386, -5.6716, -0.6662, -5.2687], [-2.5541, 3.5807, 2.0844, 5.7857], [-2.9123, 1.4198, 0.8905, 1.3126]],
]


def test_generation_output_equals_the_recorded_output(tiny_part):
    model, processor = tiny_part
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():  # spread the random LLM's choices, so the tokens depend on every step's inputs
        for parameter in model.language_model.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.5)
    clips = [make_audio(s, seed=i) for i, s in enumerate((0.8, 1.7, 1.2))]
    batch = processor(audio=clips, sampling_rate=16000, task="asr", source_language=["en", "de", "fr"])
    assert model.generate(**batch, max_new_tokens=10, do_sample=False).tolist() == _RECORDED_GREEDY
    assert model.generate(**batch, max_new_tokens=10, num_beams=3, do_sample=False).tolist() == _RECORDED_BEAM
    scores = model.generate(**batch, max_new_tokens=4, do_sample=False, output_scores=True,
                            return_dict_in_generate=True).scores
    torch.testing.assert_close(torch.stack([s[:, :4] for s in scores]), torch.tensor(_RECORDED_SCORES),
                               rtol=0, atol=2e-4)


def test_decode_steps_run_only_the_llm(tiny_part, monkeypatch):
    """A decode step is the LLM's step and nothing more: the audio tower and adapter run once (prefill), and no
    per-step signature inspection (transformers asks for one on each step of an Auto-registered model)."""
    import inspect

    model, processor = tiny_part
    batch = processor(audio=[make_audio(1.0), make_audio(1.4, 1)], sampling_rate=16000, task="asr", source_language="en")
    calls = {"signatures": 0, "audio_tower": 0, "adapter": 0}
    original = inspect._signature_from_function

    def counting(*args, **kwargs):
        calls["signatures"] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(inspect, "_signature_from_function", counting)
    model.audio_tower.register_forward_hook(lambda *_: calls.__setitem__("audio_tower", calls["audio_tower"] + 1))
    model.adapter.register_forward_hook(lambda *_: calls.__setitem__("adapter", calls["adapter"] + 1))
    model.generation_config.eos_token_id = None  # every sample runs all steps (no length processors either)
    counts = []
    for new_tokens in (2, 10):
        calls.update(signatures=0, audio_tower=0, adapter=0)
        assert model.generate(**batch, max_new_tokens=new_tokens, do_sample=False).shape[1] == new_tokens
        counts.append(dict(calls))
    assert counts[0] == counts[1], counts  # nothing grows with the number of steps
    assert counts[1]["audio_tower"] == counts[1]["adapter"] == 1


def test_beam_search_encodes_each_clip_once(tiny_part):
    """Beams copy the prompts, not the audio: the audio tower runs on the batch's clips, not on one copy per beam (or
    per returned sequence), and the beams' output is that of the clips' audio."""
    model, processor = tiny_part
    clips = [make_audio(1.0), make_audio(1.4, 1)]
    batch = processor(audio=clips, sampling_rate=16000, task="asr", source_language="en")
    tower_batches = []
    model.audio_tower.register_forward_hook(lambda module, args, kwargs, output: tower_batches.append(
        kwargs["input_features"].shape[0]), with_kwargs=True)
    beams = model.generate(**batch, max_new_tokens=6, num_beams=3, num_return_sequences=3, do_sample=False)
    assert tower_batches == [len(clips)] and beams.shape[0] == 3 * len(clips)
    for index, clip in enumerate(clips):  # each clip alone gives its beams of the batch
        alone = processor(audio=[clip], sampling_rate=16000, task="asr", source_language="en")
        expected = model.generate(**alone, max_new_tokens=6, num_beams=3, num_return_sequences=3, do_sample=False)
        assert beams[3 * index:3 * index + 3, :expected.shape[1]].tolist() == expected.tolist()


def test_generation_with_beam_search_and_whisper_encoder(tiny_whisper_part):
    model, processor = tiny_whisper_part
    batch = processor(audio=[make_audio(1.0), make_audio(2.0, 1)], sampling_rate=16000, task="asr", source_language="en")
    assert batch["input_features"].shape[-1] == 3000
    output = model.generate(**batch, max_new_tokens=4, num_beams=2)
    assert output.shape == (2, 4)


def test_no_deprecation_from_our_code_paths(tiny_part):
    """transformers 5.24 renamed the KV cache `past_key_values` -> `cache` (old name deprecated until 5.40): forward,
    the output, cached generation and beam search must use the new name, with no FutureWarning or deprecation log."""
    import logging
    import warnings

    from transformers.utils import logging as hf_logging

    model, processor = tiny_part
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    hf_logging.get_logger("transformers").addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            batch = _training_batch(processor)
            model(**batch).loss.backward()
            inputs = processor(audio=[make_audio(1.0), make_audio(1.4, 1)], sampling_rate=16000, task="asr",
                               source_language="en")
            outputs = model.generate(**inputs, max_new_tokens=3, return_dict_in_generate=True)
            model.generate(**inputs, max_new_tokens=3, num_beams=2)
            assert model(**inputs, use_cache=True).cache is not None
    finally:
        hf_logging.get_logger("transformers").removeHandler(handler)
    assert outputs.sequences.shape == (2, 3)
    messages = [str(w.message) for w in caught if issubclass(w.category, FutureWarning)]
    messages += [r.getMessage() for r in records if "deprecat" in r.getMessage().lower()]
    assert not messages, messages


# ------------------------------------------------------------------------------------------ groups and modes
def test_parameter_groups_partition_and_set_trainable(tiny_part):
    model, _ = tiny_part
    model.add_lora(r=2)
    groups = parameter_groups(model, encoder_last_k=1)
    assert set(groups) == set(PARAMETER_GROUPS)
    names = [n for g in ("adapter", "encoder", "llm", "llm_lora") for n in groups[g]]
    assert sorted(names) == sorted(n for n, _ in model.named_parameters())
    assert set(groups["encoder_last_k"]) < set(groups["encoder"])
    assert all(n.startswith("audio_tower.layers.1.") for n in groups["encoder_last_k"])
    assert all(".lora_" in n for n in groups["llm_lora"]) and groups["llm_lora"]

    counts = set_trainable(model, ["adapter", "encoder_last_k"], encoder_last_k=1)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == set(groups["adapter"]) | set(groups["encoder_last_k"])
    assert counts["trainable"] == sum(p.numel() for p in model.parameters() if p.requires_grad)
    with pytest.raises(ValueError, match="Unknown parameter group"):
        set_trainable(model, ["decoder"])


def test_frozen_modules_stay_in_eval_mode(tiny_part):
    model, _ = tiny_part
    set_trainable(model, ["adapter", "encoder_last_k"], encoder_last_k=1)
    frozen_modules_to_eval(model.train())
    assert model.adapter.training
    assert model.audio_tower.layers[1].training
    assert not model.audio_tower.layers[0].training
    assert not model.language_model.training


def test_gradient_checkpointing_with_frozen_encoder(tiny_part):
    model, processor = tiny_part
    set_trainable(model, ["adapter"])
    model.activation_checkpointing_enable()
    model.train()
    model(**_training_batch(processor)).loss.backward()
    assert all(p.grad is not None for p in model.adapter.parameters())
    assert all(p.grad is None for p in model.audio_tower.parameters())


def test_bf16_forward_and_backward(tiny_part):
    model, processor = tiny_part
    model = model.to(torch.bfloat16)
    batch = _training_batch(processor)
    loss = model(**batch).loss
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(loss)


def test_sdpa_and_eager_attention_agree(tiny_part, tmp_path):
    model, processor = tiny_part
    model.save_pretrained(tmp_path)
    batch = _training_batch(processor)
    eager = PartForSpeechToText.from_pretrained(tmp_path, attn_implementation="eager").eval()
    sdpa = PartForSpeechToText.from_pretrained(tmp_path, attn_implementation="sdpa").eval()
    assert sdpa.language_model.config._attn_implementation == "sdpa"
    torch.testing.assert_close(eager(**batch).loss, sdpa(**batch).loss, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------------------------- LoRA, save, load
def _randomize_lora(model):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.2)


@pytest.mark.parametrize("lora_save_mode", ["merged", "unmerged"])
def test_save_load_identical_logits_with_lora(tiny_part, tmp_path, lora_save_mode):
    model, processor = tiny_part
    model.add_lora(r=4, lora_dropout=0.0)
    _randomize_lora(model)
    batch = _training_batch(processor)
    batch.pop("labels")
    expected = model(**batch).logits
    model.save_pretrained(tmp_path, lora_save_mode=lora_save_mode)
    loaded = AutoModelForSpeechSeq2Seq.from_pretrained(tmp_path).eval()
    assert loaded.has_lora == (lora_save_mode == "unmerged")
    assert model.has_lora  # saving merged does not change the model being trained
    torch.testing.assert_close(loaded(**batch).logits, expected, rtol=1e-4, atol=1e-5)


def test_save_load_without_lora_and_merge_in_place(tiny_part, tmp_path):
    model, processor = tiny_part
    batch = _training_batch(processor)
    batch.pop("labels")
    model.save_pretrained(tmp_path / "plain")
    loaded = AutoModel.from_pretrained(tmp_path / "plain").eval()
    torch.testing.assert_close(loaded(**batch).logits, model(**batch).logits)

    model.add_lora(r=4, lora_dropout=0.0)
    _randomize_lora(model)
    with_lora = model(**batch).logits
    model.set_lora_enabled(False)
    torch.testing.assert_close(model(**batch).logits, loaded(**batch).logits)
    model.set_lora_enabled(True)
    model.merge_lora()
    assert not model.has_lora and not any(".lora_" in n for n, _ in model.named_parameters())
    torch.testing.assert_close(model(**batch).logits, with_lora, rtol=1e-4, atol=1e-5)


def test_lora_merge_and_reload_keep_every_lora_config_field(tiny_part, tmp_path):
    """peft's merge, not a hand-written B @ A: LoRA biases, excluded modules, per-module ranks and `modules_to_save`
    survive a merged save and an unmerged save/reload exactly."""
    model, processor = tiny_part
    model.add_lora(
        r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "k_proj", "v_proj"], lora_bias=True,
        exclude_modules=r".*layers\.0\.self_attn\.q_proj", rank_pattern={"v_proj": 2},
        modules_to_save=["norm"],
    )
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name or "modules_to_save" in name:
                p.normal_(std=0.2)
    names = {n for n, _ in model.named_parameters()}
    assert not any("layers.0.self_attn.q_proj.lora_" in n for n in names)
    assert any("lora_B.default.bias" in n for n in names)
    batch = _training_batch(processor)
    batch.pop("labels")
    expected = model(**batch).logits

    model.save_pretrained(tmp_path / "merged")
    merged = AutoModelForSpeechSeq2Seq.from_pretrained(tmp_path / "merged").eval()
    assert not merged.has_lora
    torch.testing.assert_close(merged(**batch).logits, expected, rtol=1e-4, atol=1e-5)

    model.save_pretrained(tmp_path / "unmerged", lora_save_mode="unmerged")
    unmerged = AutoModelForSpeechSeq2Seq.from_pretrained(tmp_path / "unmerged").eval()
    stored = unmerged.config.lora_config
    assert stored["lora_bias"] and stored["modules_to_save"] == ["norm"] and stored["rank_pattern"] == {"v_proj": 2}
    assert {n for n, _ in unmerged.named_parameters()} == names
    torch.testing.assert_close(unmerged(**batch).logits, expected)


def test_lora_switch_leaves_the_trainable_set_alone(tiny_part):
    model, _ = tiny_part
    model.add_lora(r=2)
    set_trainable(model, ["adapter"])
    for enabled in (True, False, True):
        model.set_lora_enabled(enabled)
        assert not any(p.requires_grad for n, p in model.named_parameters() if ".lora_" in n)
    set_trainable(model, ["adapter", "llm_lora"])
    model.set_lora_enabled(False)
    assert all(p.requires_grad for n, p in model.named_parameters() if ".lora_" in n)


def test_adapter_only_save_is_a_peft_adapter(tiny_part, tmp_path):
    model, _ = tiny_part
    with pytest.raises(ValueError, match="add_lora"):
        model.save_pretrained(tmp_path, lora_save_mode="adapter_only")
    model.add_lora(r=2)
    model.save_pretrained(tmp_path, lora_save_mode="adapter_only")
    files = {p.name for p in tmp_path.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors"} <= files
    assert "model.safetensors" not in files


# ------------------------------------------------------------------------------------- transformers conventions
class HostSyncDetector(TorchFunctionMode):
    """Records tensor operations that make the host wait for the device (on an accelerator): reading values
    (`item`, `tolist`, `bool`/`int`/`float` of a tensor, `numpy`, `cpu`, `equal`) and data-dependent shapes
    (`nonzero`, boolean-mask indexing, `masked_select`, `unique`). On CPU nothing waits, but the same calls are made,
    so a CPU run shows what an accelerator run would sync on. `torch._assert_async` is not a sync (that is its job)."""

    SYNCS = {
        torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.__bool__, torch.Tensor.__int__, torch.Tensor.__float__,
        torch.Tensor.__index__, torch.Tensor.numpy, torch.Tensor.cpu, torch.equal, torch.Tensor.nonzero, torch.nonzero,
        torch.Tensor.masked_select, torch.masked_select, torch.Tensor.unique, torch.unique, torch.argwhere,
    }

    def __init__(self):
        super().__init__()
        self.syncs: list[str] = []
        self.paused = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if not self.paused:
            if func in self.SYNCS:
                self.syncs.append(getattr(func, "__qualname__", str(func)))
            elif func is torch.Tensor.__getitem__ and _has_bool_tensor(args[1]):
                self.syncs.append("boolean-mask indexing")
        return func(*args, **(kwargs or {}))


def _has_bool_tensor(index) -> bool:
    indices = index if isinstance(index, tuple) else (index,)
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in indices)


def _padded_batch(processor):
    """Three clips of different lengths (the feature and token paddings are exercised) and a text-only sample."""
    return processor(
        audio=[make_audio(0.9), make_audio(1.7, seed=1), None, make_audio(1.2, seed=2)],
        sampling_rate=16000,
        task=["asr", "asr", "mt", "s2tt"],
        source_language=["en", "de", "de", "fr"],
        target_language=["en", "de", "en", "en"],
        text=[None, None, "zwei Hunde", None],
        target_text=["one", "zwei", "two dogs", "three"],
    )


def test_audio_path_and_merge_make_no_host_device_sync(tiny_part):
    """From the start of forward to the LLM: encoder lengths, adapter, placeholder mask, its count check and the
    scatter of the audio embeddings. The encoder and the LLM (third-party modules) are not inspected."""
    model, processor = tiny_part
    batch = _padded_batch(processor)
    detector = HostSyncDetector()

    def pause(*_):
        detector.paused += 1

    def resume(*_):
        detector.paused -= 1

    hooks = [
        model.audio_tower.register_forward_pre_hook(pause),
        model.audio_tower.register_forward_hook(resume),
        model.get_decoder().register_forward_pre_hook(pause),  # the LLM and the loss after it are out of scope
    ]
    try:
        with detector:
            output = model(**batch)
    finally:
        for hook in hooks:
            hook.remove()
    assert torch.isfinite(output.loss)
    assert detector.paused == 1  # the LLM was reached
    assert not detector.syncs, f"host-device syncs before the LLM: {detector.syncs}"


def test_merge_places_each_clip_on_its_placeholders_in_order(tiny_part):
    model, processor = tiny_part
    batch = _padded_batch(processor)
    audio = model.get_audio_features(batch["input_features"], batch["feature_attention_mask"])
    embeds = model.get_input_embeddings()(batch["input_ids"])
    merged = model._merge_audio_embeddings(
        batch["input_ids"], embeds, audio.pooler_output, audio.audio_token_lengths
    )
    clips = iter(range(audio.pooler_output.shape[0]))
    for row, ids in enumerate(batch["input_ids"]):
        placeholders = ids == model.config.audio_token_id
        torch.testing.assert_close(merged[row][~placeholders], embeds[row][~placeholders])
        if placeholders.any():
            clip = next(clips)
            length = int(audio.audio_token_lengths[clip])
            torch.testing.assert_close(merged[row][placeholders], audio.pooler_output[clip, :length])
    # the same with inputs_embeds instead of input_ids: placeholders found by their embedding
    by_embedding = model(inputs_embeds=embeds, input_features=batch["input_features"],
                         feature_attention_mask=batch["feature_attention_mask"], attention_mask=batch["attention_mask"])
    by_ids = model(input_ids=batch["input_ids"], input_features=batch["input_features"],
                   feature_attention_mask=batch["feature_attention_mask"], attention_mask=batch["attention_mask"])
    torch.testing.assert_close(by_embedding.logits, by_ids.logits)


def test_placeholder_counts_moved_between_samples_raise(tiny_part):
    """Equal totals, wrong split: one placeholder moved from the second clip's sample to the first's."""
    model, processor = tiny_part
    batch = processor(audio=[make_audio(1.0), make_audio(1.0, seed=1)], sampling_rate=16000, task="asr",
                      source_language="en", target_text=["a", "b"])
    ids = batch["input_ids"].clone()
    last = (ids[1] == model.config.audio_token_id).nonzero()[-1, 0]
    ids[1, last] = 5
    first_text = (ids[0] == model.config.audio_token_id).nonzero()[-1, 0] + 1
    ids[0, first_text] = model.config.audio_token_id
    with pytest.raises(ValueError, match="placeholder tokens do not match"):
        model(input_ids=ids, input_features=batch["input_features"],
              feature_attention_mask=batch["feature_attention_mask"])


def test_adapter_attention_goes_through_the_attention_interface(tiny_part):
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    model, processor = tiny_part
    batch = _padded_batch(processor)
    calls = []

    def recording_attention(module, *args, **kwargs):
        calls.append(type(module).__name__)
        return sdpa_attention_forward(module, *args, **kwargs)

    AttentionInterface.register("part_test_recording", recording_attention)
    AttentionMaskInterface.register("part_test_recording", sdpa_mask)
    features = batch["input_features"], batch["feature_attention_mask"]
    audio = model.get_audio_features(*features)
    reference, lengths = audio.pooler_output, audio.audio_token_lengths
    model.set_attn_implementation({"adapter_config": "part_test_recording"})
    recorded = model.get_audio_features(*features).pooler_output
    assert calls.count("PartAdapterLayer") == model.config.adapter_config.num_hidden_layers
    torch.testing.assert_close(recorded, reference)
    model.set_attn_implementation("eager")
    assert model.config.adapter_config._attn_implementation == "eager"
    eager = model.get_audio_features(*features).pooler_output
    valid = torch.arange(reference.shape[1])[None, :] < lengths[:, None]
    torch.testing.assert_close(eager[valid], reference[valid], rtol=1e-4, atol=1e-5)


def test_fresh_adapter_is_initialised_alike_by_every_constructor(tmp_path):
    """`PartForSpeechToText(config)` and `from_pretrained_components` (a fresh adapter next to loaded parts) both
    initialise the adapter with its `_init_weights`: normal(initializer_range) weights, zero biases, LayerNorms at
    identity."""
    from transformers import FunAsrNanoEncoderConfig, Qwen2Config, Qwen2ForCausalLM
    from transformers.models.fun_asr_nano.modeling_fun_asr_nano import FunAsrNanoEncoder

    from modeling_part.tiny import build_tokenizer

    torch.manual_seed(0)
    FunAsrNanoEncoder(FunAsrNanoEncoderConfig(hidden_size=64, num_attention_heads=2, intermediate_size=64,
                                              num_hidden_layers=1, num_timestamp_prediction_layers=0)
                      ).save_pretrained(tmp_path / "encoder")
    tokenizer = build_tokenizer(vocab_size=300)
    Qwen2ForCausalLM(Qwen2Config(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=64, num_hidden_layers=1,
                                 num_attention_heads=2, num_key_value_heads=1)).save_pretrained(tmp_path / "llm")
    adapter_config = {"hidden_size": 256, "num_attention_heads": 4, "intermediate_size": 512}
    assembled = PartForSpeechToText.from_pretrained_components(
        tmp_path / "encoder", tmp_path / "llm", tokenizer=tokenizer, adapter_config=adapter_config
    )
    built = PartForSpeechToText(copy.deepcopy(assembled.config))
    std = getattr(assembled.config.adapter_config, "initializer_range", 0.02)
    for model in (assembled, built):
        for name, module in model.adapter.named_modules():
            if isinstance(module, (torch.nn.Linear, torch.nn.Conv1d)):
                assert torch.count_nonzero(module.bias) == 0, name
                assert abs(float(module.weight.detach().std()) / std - 1) < 0.1, name
            elif isinstance(module, torch.nn.LayerNorm):
                assert bool((module.weight == 1).all()) and torch.count_nonzero(module.bias) == 0, name


def test_return_dict_false_gives_tuples(tiny_part):
    model, processor = tiny_part
    batch = _training_batch(processor)
    as_tuple = model(**batch, return_dict=False)
    assert isinstance(as_tuple, tuple)
    torch.testing.assert_close(as_tuple[0], model(**batch).loss)
    features = model.get_audio_features(batch["input_features"], batch["feature_attention_mask"], return_dict=False)
    assert isinstance(features, tuple)


def test_resize_token_embeddings_keeps_the_tied_head(tiny_part):
    model, processor = tiny_part
    assert model.config.tie_word_embeddings and model.config.text_config.tie_word_embeddings
    vocab = model.config.text_config.vocab_size
    model.resize_token_embeddings(vocab + 8)
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    assert model.get_input_embeddings().weight.shape[0] == vocab + 8 == model.config.text_config.vocab_size
    batch = _training_batch(processor)
    assert torch.isfinite(model(**batch).loss)


@pytest.mark.parametrize("use_reentrant", [True, False])
def test_gradient_checkpointing_trains_the_whole_encoder(tiny_part, use_reentrant):
    """With reentrant checkpointing a checkpointed layer whose inputs need no gradient passes none to its weights;
    the encoder's first layer reads the features, so they are made to require it."""
    model, processor = tiny_part
    set_trainable(model, ["encoder", "adapter"])
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": use_reentrant})
    model.train()
    model(**_training_batch(processor)).loss.backward()
    missing = [n for n, p in model.audio_tower.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, missing


def test_decoding_logits_take_the_few_rows_path(tiny_part, monkeypatch):
    """Decoding steps compute the head as `weight @ hidden.T` (docs/design.md): the same logits within float32
    rounding, and the head module's own forward (BLAS split over the rows) is not called."""
    from modeling_part.modeling_part import _FEW_ROWS, _output_logits

    model, processor = tiny_part
    head = model.get_output_embeddings()
    hidden = torch.randn(3, 5, head.in_features)[:, -1:]  # a strided slice, as logits_to_keep=1 leaves it
    biased = torch.nn.Linear(head.in_features, 7)
    for module in (head, biased):
        torch.testing.assert_close(_output_logits(module, hidden), module(hidden), rtol=1e-5, atol=1e-5)
    many = torch.randn(_FEW_ROWS + 1, head.in_features)
    assert torch.equal(_output_logits(head, many), head(many))  # more rows: the module itself

    calls = []
    monkeypatch.setattr(head, "forward", lambda x: calls.append(x.shape) or F.linear(x, head.weight, head.bias))
    batch = processor(audio=[make_audio(1.0), make_audio(1.4, 1)], sampling_rate=16000, task="asr", source_language="en")
    model.generate(**batch, max_new_tokens=4, do_sample=False)
    assert calls == []
