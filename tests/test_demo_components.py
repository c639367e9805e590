"""The demo's pretrained stand-ins (examples/demo/pretrain.py): what they are trained on, in which layout, and that
the training does what it says (tiny models, a few steps)."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

pytest.importorskip("espeakng_loader", reason="the demo corpus needs the `demo` extra (espeakng-loader)")

from examples.demo import pretrain  # noqa: E402
from examples.demo.corpus import build_corpus  # noqa: E402
from examples.demo.texts import make_item_splits, render  # noqa: E402
from modeling_part import PartFeatureExtractor, PartForSpeechToText, PartProcessor  # noqa: E402

TINY = dict(languages=["en", "de", "zh"], train_items_per_language=12, dev_items=2, test_items=3, seed=0)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return build_corpus(tmp_path_factory.mktemp("corpus"), progress=False, **TINY)


@pytest.fixture(scope="module")
def components(corpus, tmp_path_factory):
    """Stand-ins trained for a few steps on the tiny corpus, with their manifest."""
    folder = tmp_path_factory.mktemp("components")
    spec = pretrain.corpus_spec(TINY)
    encoder = pretrain.EncoderSettings(hidden_size=32, num_layers=1, num_heads=2, steps=3, batch_size=4, warmup_steps=1)
    llm = pretrain.LLMSettings(hidden_size=32, num_layers=1, num_heads=2, steps=3, batch_size=4, warmup_steps=1,
                               text_items=20, slot_noise=1.0)  # fmt: skip
    report = pretrain.build_components(corpus, spec, folder, encoder, llm, seed=0)
    return folder, report


@pytest.fixture
def components_copy(components, tmp_path):
    """(the stand-ins' folder, its manifest, a copy of the folder to rebuild in)."""
    import shutil

    folder, _ = components
    shutil.copytree(folder, tmp_path / "components")
    return folder, json.loads((folder / pretrain.MANIFEST).read_text()), tmp_path / "components"


def test_text_side_never_holds_a_held_out_item():
    held_out = pretrain.held_out_contents(pretrain.corpus_spec(TINY))
    splits = make_item_splits(TINY["languages"], 0, TINY["dev_items"], TINY["test_items"], TINY["seed"])
    assert held_out == {item.content for item in splits.dev + splits.test} and len(held_out) == 5
    items = pretrain.text_items(2000, held_out, seed=0)
    assert len(items) == 2000 and not {item.content for item in items} & held_out
    assert len({item.content for item in items}) > 500  # far more text than the speech corpus holds


def test_llm_examples_are_laid_out_as_the_processor_lays_out_prompts(components):
    """The copy / translate analogues put the text where the processor puts the audio placeholders: a frozen LLM
    sees PART's own prompt, with text-like content between the audio delimiters."""
    folder, _ = components
    model, tokenizer = PartForSpeechToText.from_pretrained_components(
        audio_encoder=str(folder / "encoder"), llm=str(folder / "llm"), return_tokenizer=True
    )
    processor = PartProcessor.for_model(model.config, tokenizer, PartFeatureExtractor.from_pretrained(folder / "encoder"))
    text, english = "Heute ist Montag, der fünfte Mai.", "Today is Monday, the fifth of May."
    text_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    for kind, task, target_language, answer in (("copy", "asr", "de", text), ("translate", "s2tt", "en", english)):
        prompt, answer_ids = pretrain.text_example(tokenizer, kind, "de", text, answer)
        instruction = processor.prompt_templates[task].format(
            source_language="German", target_language=processor.language_names[target_language]
        )
        expected = processor.build_prompt_ids(instruction, num_audio_tokens=len(text_ids))
        audio = [i for i, token in enumerate(expected) if token == processor.audio_token_id]
        expected[audio[0] : audio[-1] + 1] = text_ids
        assert prompt == expected
        assert answer_ids == tokenizer(answer, add_special_tokens=False)["input_ids"]
    prompt, _ = pretrain.text_example(tokenizer, "mt", "de", text, english)
    assert prompt == processor(text=text, task="mt", source_language="de", target_language="en")["input_ids"][0].tolist()
    # the doubled-token noise only ever repeats a slot token in place
    import random

    noisy, _ = pretrain.text_example(tokenizer, "copy", "de", text, text, repeat=1.0, rng=random.Random(0))
    assert noisy[1 : 1 + 2 * len(text_ids)] == [t for t in text_ids for _ in range(2)]
    # a shuffled copy: the slot and the answer are one permutation of the text's tokens, the rest of the prompt as is
    shuffled, shuffled_answer = pretrain.text_example(tokenizer, "copy", "de", text, text, rng=random.Random(0), shuffle=True)
    plain, _ = pretrain.text_example(tokenizer, "copy", "de", text, text)
    assert shuffled_answer != text_ids and sorted(shuffled_answer) == sorted(text_ids)
    assert shuffled == [plain[0], *shuffled_answer, *plain[1 + len(text_ids) :]]
    with pytest.raises(ValueError, match="shuffle needs kind='copy'"):
        pretrain.text_example(tokenizer, "translate", "de", text, english, rng=random.Random(0), shuffle=True)
    # llm_examples: every item gives text and copy in each language, mt and translate out of English, and with
    # shuffled_copy_share 1 a shuffled twin of every copy
    items = pretrain.text_items(5, set(), seed=0)
    for share, per_item in ((0.0, 2 + 4), (1.0, 3 + 5)):
        settings = pretrain.LLMSettings(shuffled_copy_share=share)
        examples = pretrain.llm_examples(items, ["en", "de"], tokenizer, settings, seed=0)
        assert len(examples) == per_item * len(items)
    # copies of the repeated languages are drawn copy_repeats times, each with its own slot-token doubling
    settings = pretrain.LLMSettings(repeated_copy_languages=("de",), copy_repeats=3, slot_repeat_probability=0.5)
    examples = pretrain.llm_examples(items, ["en", "de"], tokenizer, settings, seed=0)
    assert len(examples) == (6 + 2) * len(items)
    bos = tokenizer.convert_tokens_to_ids(pretrain.AUDIO_BOS_TOKEN)
    german = [tokenizer(render(item, "de"), add_special_tokens=False)["input_ids"] for item in items]
    german_copies = [prompt for prompt, answer in examples if prompt[:1] == [bos] and answer in german]
    english_answers = [prompt for prompt, answer in examples if prompt[:1] == [bos] and answer not in german
                      and tokenizer.decode(answer) in {render(item, "en") for item in items}]  # fmt: skip
    assert len(german_copies) == 3 * len(items) and len(english_answers) == 2 * len(items)  # en copy, de translate
    assert any(len({tuple(p) for p in german_copies[3 * i : 3 * i + 3]}) > 1 for i in range(len(items)))
    for bad in (dict(copy_repeats=0), dict(repeated_copy_languages=("zh",), copy_repeats=2)):
        with pytest.raises(ValueError, match="copy_repeats must be >= 1"):
            pretrain.llm_examples(items, ["en", "de"], tokenizer, pretrain.LLMSettings(**bad), seed=0)


def test_components_manifest_records_corpus_training_and_scores(components, corpus):
    folder, report = components
    manifest = json.loads((folder / pretrain.MANIFEST).read_text())
    assert manifest["corpus"] == pretrain.corpus_spec(TINY) and manifest["corpus"]["test_speakers"]
    encoder = manifest["encoder"]
    assert encoder["ctc_labels"] == "characters"  # the default (see test_ctc_pretraining_... for "tokens")
    assert encoder["labels_longer_than_frames"] == 0  # two labels per frame: no utterance is dropped
    assert encoder["training_samples"] == len(encoder["settings"]["speed_factors"]) * encoder["utterances"]
    assert set(encoder["test"]["cer"]) == set(encoder["test"]["asr_error"]) == set(TINY["languages"])
    assert encoder["test"]["utterances"] == 9
    llm = manifest["llm"]["test"]
    assert set(llm["copy_accuracy"]) == set(TINY["languages"]) and set(llm["mt_bleu"]) == {"de-en", "zh-en"}
    for name in ("encoder/model.safetensors", "encoder/ctc_head.safetensors", "encoder/preprocessor_config.json",
                 "llm/model.safetensors", "llm/tokenizer.json"):  # fmt: skip
        assert (folder / name).exists(), name
    assert not list(folder.glob("encoder/*.py"))  # the package provides PartFeatureExtractor: no exported source


def test_text_of_test_split_is_the_corpus_test_text(corpus):
    """`rebuild_llm` scores the LLM on the test split's text without the speech: the very rows it would read."""
    columns = ["task", "source_language", "source_text", "text"]
    expected = [r for r in corpus["test"].select_columns(columns).to_list() if r["task"] != "s2tt"]
    assert pretrain.text_of_test_split(pretrain.corpus_spec(TINY)).to_list() == expected


def test_rebuild_llm_keeps_the_encoder_and_retrains_the_text_side(components_copy, tmp_path):
    folder, report, copy = components_copy
    spec = pretrain.corpus_spec(TINY)
    llm = pretrain.LLMSettings(hidden_size=32, num_layers=1, num_heads=2, steps=2, batch_size=4, warmup_steps=1,
                               text_items=10)  # fmt: skip
    rebuilt = pretrain.rebuild_llm(copy, spec, llm, seed=1)
    manifest = json.loads((copy / pretrain.MANIFEST).read_text())
    assert manifest == rebuilt and manifest["encoder"] == report["encoder"]
    assert manifest["llm"]["settings"]["text_items"] == 10 and manifest["llm"]["examples"] != report["llm"]["examples"]
    assert set(manifest["llm"]["test"]["copy_accuracy"]) == set(TINY["languages"])
    for name in ("encoder/model.safetensors", "encoder/ctc_head.safetensors"):
        assert (copy / name).read_bytes() == (folder / name).read_bytes()
    with pytest.raises(ValueError, match="made for the corpus"):
        pretrain.rebuild_llm(copy, {**spec, "seed": 1}, llm)
    manifest["encoder"]["settings"]["ctc_labels"] = "tokens"
    (copy / pretrain.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="a new tokenizer needs a new encoder"):
        pretrain.rebuild_llm(copy, spec, llm)
    with pytest.raises(FileNotFoundError, match="records no encoder"):
        pretrain.rebuild_llm(tmp_path / "empty", spec, llm)


def test_anneal_llm_continues_the_llm_keeping_tokenizer_and_encoder(components_copy, tmp_path):
    """`make components`' anneal phase: the LLM trains on from its weights (not anew), with its own tokenizer."""
    from safetensors.torch import load_file

    folder, report, copy = components_copy
    spec = pretrain.corpus_spec(TINY)
    anneal = pretrain.LLMSettings(steps=2, batch_size=4, warmup_steps=1, learning_rate=1e-3, text_items=10,
                                  repeated_copy_languages=("zh",), copy_repeats=2)  # fmt: skip
    annealed = pretrain.anneal_llm(copy, spec, anneal, seed=0)
    manifest = json.loads((copy / pretrain.MANIFEST).read_text())
    assert manifest == annealed and manifest["encoder"] == report["encoder"]
    assert manifest["llm"]["annealed_from"] == report["llm"] and manifest["llm"]["settings"]["steps"] == 2
    assert manifest["llm"]["seconds"] > report["llm"]["seconds"]
    assert manifest["seconds"] == manifest["encoder"]["seconds"] + manifest["llm"]["seconds"]
    assert set(manifest["llm"]["test"]["copy_accuracy"]) == set(TINY["languages"])
    for name in ("encoder/model.safetensors", "encoder/ctc_head.safetensors", "llm/tokenizer.json",
                 "llm/tokenizer_config.json"):  # fmt: skip
        assert (copy / name).read_bytes() == (folder / name).read_bytes(), name
    # the LLM's architecture is the one it started with (LLMSettings' default size is 256, the tiny one's 32) ...
    assert json.loads((copy / "llm/config.json").read_text())["hidden_size"] == 32
    before, after = load_file(str(folder / "llm/model.safetensors")), load_file(str(copy / "llm/model.safetensors"))
    assert before.keys() == after.keys()
    # ... and its weights moved from where they were, a little (2 steps at 1e-3), not to a fresh initialisation
    change = max((after[k] - before[k]).abs().max().item() for k in before)
    assert 0 < change < 0.01
    with pytest.raises(ValueError, match="made for the corpus"):
        pretrain.anneal_llm(copy, {**spec, "seed": 1}, anneal)
    with pytest.raises(FileNotFoundError, match="records no llm"):
        pretrain.anneal_llm(tmp_path / "empty", spec, anneal)

    # `make components` rerun keeps what was built with its settings (and only anneals an LLM not annealed yet)
    encoder = pretrain.EncoderSettings(**report["encoder"]["settings"])
    llm = pretrain.LLMSettings(**{**report["llm"]["settings"], "repeated_copy_languages": ()})
    assert pretrain.built_components(copy, spec, encoder, llm, anneal) == manifest
    assert pretrain.built_components(folder, spec, encoder, llm, anneal) == report  # built, to be annealed
    for other in (dict(anneal=replace(anneal, steps=3)), dict(anneal=None), dict(llm=replace(llm, steps=4)),
                  dict(encoder=replace(encoder, steps=4)), dict(spec={**spec, "seed": 1}), dict(seed=1)):  # fmt: skip
        arguments = dict(spec=spec, encoder=encoder, llm=llm, anneal=anneal, seed=0) | other
        assert pretrain.built_components(copy, **arguments) is None, other
    assert pretrain.built_components(tmp_path / "empty", spec, encoder, llm, anneal) is None


def test_rebuild_encoder_keeps_the_text_side_and_retrains_the_encoder(components_copy, corpus, tmp_path):
    folder, report, copy = components_copy
    spec = pretrain.corpus_spec(TINY)
    encoder = pretrain.EncoderSettings(hidden_size=32, num_layers=1, num_heads=2, steps=2, batch_size=4, warmup_steps=1)
    rebuilt = pretrain.rebuild_encoder(corpus, spec, copy, encoder, seed=1)
    manifest = json.loads((copy / pretrain.MANIFEST).read_text())
    assert manifest == json.loads(json.dumps(rebuilt)) and manifest["llm"] == report["llm"]
    assert manifest["encoder"]["settings"]["steps"] == 2 and set(manifest["encoder"]["test"]["cer"]) == set(TINY["languages"])
    assert manifest["seconds"] == manifest["encoder"]["seconds"] + manifest["llm"]["seconds"]
    for name in ("llm/model.safetensors", "llm/tokenizer.json"):
        assert (copy / name).read_bytes() == (folder / name).read_bytes()
    assert (copy / "encoder/model.safetensors").read_bytes() != (folder / "encoder/model.safetensors").read_bytes()
    with pytest.raises(ValueError, match="made for the corpus"):
        pretrain.rebuild_encoder(corpus, {**spec, "seed": 1}, copy, encoder)
    with pytest.raises(FileNotFoundError, match="records no llm"):
        pretrain.rebuild_encoder(corpus, spec, tmp_path / "empty", encoder)
    with pytest.raises(ValueError, match="exclude each other"):
        pretrain.main(["--llm_only", "--encoder_only", "--output_dir", str(copy)])


def test_token_budget_batches_cover_each_epoch_within_the_budget():
    """`_forever` with a TokenBudget (the LLM's `max_tokens_per_batch`): each epoch's batches hold every sequence
    once, each batch padded to its longest stays within the budget, and they are the same for the same seed."""
    rng = np.random.default_rng(0)
    sequences = [(list(range(int(n))), 0) for n in rng.integers(3, 40, size=250)]
    budget = pretrain.TokenBudget(max_tokens=120, buffer_size=100, positions_fn=lambda s: len(s[0]),
                                  seconds_fn=lambda s: 0.0)  # fmt: skip

    def epochs(seed):
        batches, drawn = [], 0
        for batch in pretrain._forever(sequences, 4, seed, budget):
            batches.append(batch)
            drawn += len(batch)
            if drawn == 2 * len(sequences):
                return batches
            assert drawn < 2 * len(sequences)  # an epoch ends where a batch ends

    batches = epochs(seed=0)
    assert all(len(batch) * max(len(s) for s, _ in batch) <= 120 for batch in batches)
    assert sum(len(b) for b in batches) == 2 * len(sequences) and len(batches) < 2 * len(sequences) / 4
    first_epoch = [s for batch in batches for s in batch][: len(sequences)]  # epochs end where batches end (above)
    assert sorted(map(id, first_epoch)) == sorted(map(id, sequences))
    assert [[id(s) for s in b] for b in epochs(seed=0)] == [[id(s) for s in b] for b in batches]


def test_a_killed_pretraining_run_resumes_to_the_weights_of_an_uninterrupted_one(tmp_path):
    """`_train_loop` with a state file: killed after step 5 (state saved at step 4), rerun from scratch, it ends with
    the weights and losses of the run that was never interrupted (batches, dropout and a generator resumed)."""

    def train(state_path, kill_at=None, fingerprint=None):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Dropout(0.5), torch.nn.Linear(8, 1))
        generator, calls = torch.Generator().manual_seed(1), []

        def loss_fn(batch):
            calls.append(batch)
            if len(calls) == kill_at:
                raise KeyboardInterrupt
            inputs = torch.tensor(batch, dtype=torch.float32).unsqueeze(-1).repeat(1, 4)
            return model(inputs + torch.randn(inputs.shape, generator=generator)).pow(2).mean()

        losses, _ = pretrain._train_loop(model, pretrain._forever(list(range(10)), 3, seed=0), loss_fn, 8, 1e-2, 2,
                                         "test", state_path, fingerprint, [generator], save_every=2)  # fmt: skip
        return losses, [p.detach().clone() for p in model.parameters()]

    expected_losses, expected = train(None)
    state = tmp_path / pretrain.TRAINING_STATE
    with pytest.raises(KeyboardInterrupt):
        train(state, kill_at=6, fingerprint={"steps": 8})
    assert len(torch.load(state, weights_only=False)["losses"]) == 4
    losses, weights = train(state, fingerprint={"steps": 8})
    assert losses == expected_losses and all(torch.equal(a, b) for a, b in zip(weights, expected))
    with pytest.raises(ValueError, match="started with other settings"):
        train(state, fingerprint={"steps": 9})


def test_an_interrupted_components_build_leaves_the_folder_as_it_was_and_resumes(components_copy, corpus, monkeypatch):
    """`build_components` trains in `.building` and moves the components in at the end: killed in the LLM's
    training, the folder keeps its old components; rerun, it reuses the encoder it finished and completes."""
    folder, report, copy = components_copy
    spec = pretrain.corpus_spec(TINY)
    encoder = pretrain.EncoderSettings(hidden_size=32, num_layers=1, num_heads=2, steps=2, batch_size=4, warmup_steps=1)
    llm = pretrain.LLMSettings(hidden_size=32, num_layers=1, num_heads=2, steps=2, batch_size=4, warmup_steps=1,
                               text_items=10)  # fmt: skip
    before = {path: path.read_bytes() for path in copy.rglob("*") if path.is_file()}
    pretrain_llm, pretrain_encoder = pretrain.pretrain_llm, pretrain.pretrain_encoder
    monkeypatch.setattr(pretrain, "pretrain_llm", lambda *args: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        pretrain.build_components(corpus, spec, copy, encoder, llm, seed=1)
    assert {path: path.read_bytes() for path in copy.rglob("*") if path.is_file() and pretrain.BUILDING not in
            path.parts} == before and (copy / pretrain.BUILDING / "encoder" / pretrain.FINISHED).exists()  # fmt: skip
    monkeypatch.setattr(pretrain, "pretrain_llm", pretrain_llm)
    monkeypatch.setattr(pretrain, "pretrain_encoder", lambda *args: pytest.fail("the finished encoder is retrained"))
    rebuilt = pretrain.build_components(corpus, spec, copy, encoder, llm, seed=1)
    assert json.loads((copy / pretrain.MANIFEST).read_text()) == json.loads(json.dumps(rebuilt))
    assert rebuilt["encoder"]["settings"]["steps"] == 2 and rebuilt["llm"]["settings"]["text_items"] == 10
    assert sorted(path.name for path in copy.iterdir()) == ["components.json", "encoder", "llm"]
    assert not list(copy.rglob(pretrain.FINISHED)) and not list(copy.rglob(pretrain.TRAINING_STATE))
    assert (copy / "encoder/model.safetensors").read_bytes() != (folder / "encoder/model.safetensors").read_bytes()
    monkeypatch.setattr(pretrain, "pretrain_encoder", pretrain_encoder)


def test_half_precision_components_load_in_float32(components, tmp_path):
    import shutil

    folder, _ = components
    copy = tmp_path / "half"
    shutil.copytree(folder, copy)
    pretrain.shrink_to_half_precision(copy)
    size = lambda root: sum(p.stat().st_size for p in root.glob("*/*.safetensors"))  # noqa: E731
    assert size(copy) < 0.6 * size(folder)
    model, _ = pretrain.load_ctc_model(copy / "encoder")
    assert model.head.weight.dtype == torch.float32
    model = PartForSpeechToText.from_pretrained_components(audio_encoder=str(copy / "encoder"), llm=str(copy / "llm"))
    assert {p.dtype for p in model.parameters()} == {torch.float32}


@pytest.mark.parametrize("labels", ["tokens", "characters"])
def test_ctc_pretraining_learns_and_its_scores_are_computed_as_jiwer_does(labels, corpus, components, tmp_path):
    """A one-layer encoder on 12 utterances (4 per language), CTC over the LLM's BPE tokens (as SenseVoice, and
    `make components`) or over characters: the loss falls, the head decodes its labels back to the text, and the
    reported CER and word error are jiwer's and `compute_speech_metrics`' on the decoded text."""
    import jiwer
    from transformers import AutoTokenizer

    from trainers.metrics import compute_speech_metrics

    asr = corpus["train"].filter(lambda task: task == "asr", input_columns="task")
    asr = asr.select(range(0, len(asr), 3))  # 4 utterances per language
    tokenizer = AutoTokenizer.from_pretrained(components[0] / "llm")  # used for "tokens" only
    settings = pretrain.EncoderSettings(hidden_size=64, num_layers=1, num_heads=2, steps=60, batch_size=12,
                                        warmup_steps=5, learning_rate=3e-3, speed_factors=(1.0,), noise_snr_db=None,
                                        spec_augment=False, ctc_labels=labels)  # fmt: skip
    if labels == "tokens":
        with pytest.raises(ValueError, match="needs the LLM's tokenizer"):
            pretrain.pretrain_encoder(asr, tmp_path, settings, seed=0)
    report = pretrain.pretrain_encoder(asr, tmp_path, settings, seed=0, tokenizer=tokenizer)
    assert report["ctc_labels"] == labels and report["labels_longer_than_frames"] == 0
    assert report["ctc_loss_last"] < 0.6 * report["ctc_loss_first"], report
    model, decode = pretrain.load_ctc_model(tmp_path)
    text = asr[0]["text"]
    if labels == "tokens":
        assert (tmp_path / pretrain.CTC_TOKENIZER / "tokenizer.json").exists()
        assert model.upsampling == 1 and model.vocab_size == len(tokenizer) + 1  # + the blank
        assert decode([i + 1 for i in tokenizer(text, add_special_tokens=False)["input_ids"]]) == text
    else:
        assert model.upsampling == 2
        characters = sorted({c for t in asr["text"] for c in t})
        assert decode([characters.index(c) + 1 for c in text]) == text
    scores = pretrain.evaluate_encoder(tmp_path, asr)
    assert set(scores["cer"]) == set(TINY["languages"])
    assert scores["avg_cer"] == pytest.approx(np.mean(list(scores["cer"].values())))
    assert 0 <= scores["asr_avg_error"] and scores["asr_avg_error"] != scores["avg_cer"]  # words for en/de
    assert jiwer.cer(["abcd"], ["abed"]) == 0.25  # the unit scores count as jiwer does: edits / reference characters
    perfect = compute_speech_metrics(asr["text"], asr["text"], ["asr"] * len(asr), asr["source_language"], asr["source_language"])
    assert perfect["asr_avg_error"] == 0


def test_spec_augment_masks_the_same_mel_bins_in_every_stacked_frame():
    features = torch.ones(2, 30, 7 * 80)
    generator = torch.Generator().manual_seed(0)
    pretrain.spec_augment(features, [30, 20], num_mel_bins=80, generator=generator)
    stacked = features.view(2, 30, 7, 80)
    for i in range(2):
        kept_time = stacked[i].abs().sum(dim=(1, 2)) > 0
        bins = stacked[i][kept_time].reshape(-1, 80).abs().sum(0) == 0  # masked bins, over every kept frame
        assert bins.sum() <= 20
        for frame in stacked[i][kept_time]:
            assert torch.equal(frame.abs().sum(0) == 0, bins)  # each stacked frame masks exactly those bins
        assert (~kept_time).sum() <= 6


def test_shipped_stand_ins_are_made_for_the_default_demo_and_load():
    """`make demo` uses the shipped stand-ins only when their manifest names its corpus: keep the two in step."""
    from examples.demo.run_demo import DemoArguments, demo_corpus_spec

    manifest = json.loads((pretrain.SHIPPED_COMPONENTS / pretrain.MANIFEST).read_text())
    assert manifest["corpus"] == demo_corpus_spec(DemoArguments())
    assert manifest["encoder"]["test"]["avg_cer"] < 20 and manifest["llm"]["test"]["mt_avg_bleu"] > 80
    encoder, llm, anneal = pretrain.component_settings(pretrain.ComponentArguments())  # what `make components` trains
    trained = json.loads(json.dumps({"encoder": asdict(encoder), "llm": asdict(anneal), "base": asdict(llm)}))
    manifest["base"] = manifest["llm"]["annealed_from"]
    assert {name: manifest[name]["settings"] for name in trained} == trained
    assert manifest["llm"]["test"]["copy_avg_accuracy"] >= 98 and manifest["llm"]["test"]["mt_avg_bleu"] >= 95
    tokenizer = AutoTokenizer.from_pretrained(pretrain.SHIPPED_COMPONENTS / "llm")
    assert len(tokenizer("今天是十月二日")["input_ids"]) == 7  # one token per Han character
    model = PartForSpeechToText.from_pretrained_components(
        audio_encoder=str(pretrain.SHIPPED_COMPONENTS / "encoder"), llm=str(pretrain.SHIPPED_COMPONENTS / "llm")
    )
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    size = sum(p.stat().st_size for p in pretrain.SHIPPED_COMPONENTS.rglob("*") if p.is_file())
    assert size < 30 * 2**20  # the limit for what the repository ships


@pytest.mark.slow  # synthesises the held-out splits (640 utterances) and trains 2 encoders for 2 steps
def test_augmentation_ablation_reports_seen_and_held_out_voices(tmp_path):
    from examples.demo import augmentation_ablation

    results = augmentation_ablation.main(["--output_dir", str(tmp_path / "out"), "--corpus_dir", str(tmp_path / "corpus"),
                                          "--train_items_per_language", "2", "--steps", "2", "--variants", "none", "all"])  # fmt: skip
    assert list(results) == ["none", "all"]
    assert results["none"]["training_samples"] == results["none"]["utterances"]  # one copy: no speed perturbation
    assert results["all"]["training_samples"] == 3 * results["all"]["utterances"]
    table = (tmp_path / "out" / "results.md").read_text()
    assert "| none |" in table and "| all |" in table and (tmp_path / "out" / "augmentation.png").exists()
    with pytest.raises(ValueError, match="Unknown variants"):
        augmentation_ablation.main(["--output_dir", str(tmp_path / "out"), "--variants", "pitch"])
