"""Model cards (front matter, model-index, schedule and results tables) and publishing: one recorded commit, whose
files load back as a PART model and processor. Nothing here may reach the network."""

import json
import re
import socket

import huggingface_hub
import pytest
import torch
import yaml
from huggingface_hub import CommitInfo, CommitOperationAdd, HfApi, ModelCard, ModelCardData, RepoUrl, metadata_load
from huggingface_hub.repocard_data import model_index_to_eval_results
from transformers import AutoModelForSpeechSeq2Seq, AutoProcessor

import modeling_part  # noqa: F401  (registers PART with the Auto classes)
from conftest import make_audio
from model_cards.card import build_model_card, parse_part_metrics, write_model_card
from model_cards.publish import missing_model_files, publish, publish_files
from modeling_part import PartForSpeechToText, PartProcessor
from modeling_part.tiny import build_tiny_part

METRICS = {
    "test_wer_de": 12.3456789,
    "test_wer_fr": 20.5,
    "test_cer_zh": 8.25,
    "test_asr_avg_error": 13.6984263,
    "test_bleu_de-en": 21.4,
    "test_bleu_zh-en": 15.125,
    "test_s2tt_avg_bleu": 18.2625,
    "test_mt_bleu_de-en": 30.0,
    "test_loss": 1.5,
    "test_asr_samples": 30,
}
SCHEDULE = {
    "name": "part",
    "stages": [
        {"name": "1_adapter", "trainable": ["adapter"], "tasks": {"asr": 1.0}, "fraction": 0.5, "learning_rate": 1e-3},
        {"name": "2_encoder", "trainable": ["adapter", "encoder_last_k"], "tasks": {"asr": 1.0}, "steps": 4,
         "encoder_last_k": 2},
        {"name": "3_cross_language", "trainable": ["adapter", "encoder", "llm_lora"],
         "tasks": {"asr": 1.0, "s2tt": 1.0, "mt": 0.25}, "fraction": 0.25, "lora": {"r": 8, "lora_alpha": 16}},
    ],
}
SUMMARY = {
    "schedule": SCHEDULE,
    "stages": [
        {"name": "1_adapter", "steps": 6, "trainable_parameters": 5000, "total_parameters": 100000,
         "first_loss": 6.25, "last_loss": 5.5, "seconds": 3.0},
        {"name": "2_encoder", "steps": 4, "trainable_parameters": 9000, "total_parameters": 100000,
         "first_loss": 5.5, "last_loss": 4.75, "seconds": 2.0},
        {"name": "3_cross_language", "steps": 3, "trainable_parameters": 30000, "total_parameters": 100000,
         "first_loss": 4.5, "last_loss": 3.125, "seconds": 4.5},
    ],
    "total_seconds": 9.5,
}
CARD_ARGS = {
    "languages": ["de", "fr", "zh", "en"],
    "dataset_name": "PART demo corpus",
    "base_models": {"encoder": "FunAudioLLM/Fun-ASR-Nano-2512-hf", "llm": "Qwen/Qwen2.5-1.5B"},
    "model_name": "part-tiny",
    "repo_id": "someone/part-tiny",
    "data_summary": {"asr": {"de": 1.5, "fr": 1.0, "zh": 2.0}, "s2tt": {"de-en": 0.5, "zh-en": 0.25}},
    "synthetic_data": True,
}


def front_matter(text: str) -> dict:
    match = re.match(r"---\n(.*?)\n---\n", text, flags=re.DOTALL)
    assert match, "the card must start with a YAML block"
    return yaml.safe_load(match.group(1))


def measured(eval_results) -> dict:
    return {(r.task_type, r.metric_type, r.metric_name): r.metric_value for r in eval_results}


def averages(scores) -> dict:
    return {s.task: s.value for s in scores if s.subject is None}


EXPECTED = {
    ("automatic-speech-recognition", "wer", "WER (de)"): 12.3456789,
    ("automatic-speech-recognition", "wer", "WER (fr)"): 20.5,
    ("automatic-speech-recognition", "cer", "CER (zh)"): 8.25,
    ("translation", "bleu", "BLEU (de-en)"): 21.4,
    ("translation", "bleu", "BLEU (zh-en)"): 15.125,
}


# ----------------------------------------------------------------------------------------------------- cards
def test_card_front_matter_and_model_index():
    card = build_model_card(metrics=METRICS, training_summary=SUMMARY, **CARD_ARGS)
    meta = front_matter(card.content)
    assert meta["language"] == ["de", "fr", "zh", "en"]
    assert meta["license"] == "apache-2.0"
    assert meta["library_name"] == "transformers"
    assert meta["pipeline_tag"] == "automatic-speech-recognition"
    assert {"speech-translation", "part", "speech-llm", "multilingual"} <= set(meta["tags"])
    assert meta["base_model"] == ["FunAudioLLM/Fun-ASR-Nano-2512-hf", "Qwen/Qwen2.5-1.5B"]
    assert meta["metrics"] == ["wer", "cer", "bleu"]

    # the Hub's model-index: one result per task/dataset, the exact values
    model_index = meta["model-index"]
    assert [r["task"]["type"] for r in model_index[0]["results"]] == ["automatic-speech-recognition", "translation"]
    assert all(r["dataset"] == {"name": "PART demo corpus", "type": "part-demo-corpus", "split": "test"}
               for r in model_index[0]["results"])
    name, eval_results = model_index_to_eval_results(model_index)
    assert name == "part-tiny"
    assert measured(eval_results) == EXPECTED

    # huggingface_hub parses it back into the same card data
    reloaded = ModelCard(card.content)
    assert reloaded.data.to_dict() == card.data.to_dict()
    assert measured(reloaded.data.eval_results) == EXPECTED
    assert str(reloaded) == card.content


def test_card_body_tables():
    text = build_model_card(metrics=METRICS, training_summary=SUMMARY, **CARD_ARGS).text
    # stage schedule
    assert "| # | stage | trainable | task mixture | steps |" in text
    assert "| 1 | `1_adapter` | adapter | ASR | 6 | 0.001 | 5K (5.0%) | 6.250 → 5.500 | 3 s |" in text
    assert "| 2 | `2_encoder` | adapter + encoder (top 2 layers) | ASR | 4 | run default |" in text
    assert "| 3 | `3_cross_language` | adapter + encoder + LLM (LoRA) | ASR + S2TT + MT (text) ×0.25 | 3 |" in text
    assert "LoRA on the LLM: rank 8, alpha 16" in text
    # the learning rate a stage trained with (the trainer records it) before the schedule's scale of the run's
    stages = [{**SUMMARY["stages"][0]}, {**SUMMARY["stages"][1], "learning_rate": 3e-4}, {**SUMMARY["stages"][2]}]
    schedule = {**SCHEDULE, "stages": [*SCHEDULE["stages"][:2], {**SCHEDULE["stages"][2], "lr_scale": 0.2}]}
    used = build_model_card(metrics=METRICS, training_summary={**SUMMARY, "schedule": schedule, "stages": stages},
                            **CARD_ARGS).text
    assert "| 2 | `2_encoder` | adapter + encoder (top 2 layers) | ASR | 4 | 0.0003 |" in used
    assert "| ASR + S2TT + MT (text) ×0.25 | 3 | 0.2 × run default |" in used
    overridden = build_model_card(metrics=METRICS, training_summary=SUMMARY, lora_config={"r": 2}, **CARD_ARGS).text
    assert "LoRA on the LLM: rank 2, alpha 16" in overridden
    # results per language and direction, averages as given
    assert "| German (`de`) | WER | 12.35 |" in text
    assert "| Chinese (`zh`) | CER | 8.25 |" in text
    assert "| **average** | WER/CER | **13.70** |" in text
    assert "| de → en | 21.40 |" in text and "| zh → en | 15.12 |" in text
    assert "| **average** | **18.26** |" in text
    # training data, usage, limitations, citation
    assert "| de-en | — | 0.5 |" in text and "| **total** | **4.5** | **0.8** |" in text
    assert 'pipeline("automatic-speech-recognition", model="someone/part-tiny")' in text
    assert 'task="s2tt", target_language="en"' in text and "trust_remote_code=True" in text
    assert "synthetic speech" in text and "Not every language improves" in text
    assert "arXiv:2509.19745" in text and "Zhang, Pei" in text


def test_metrics_without_prefix_and_with_a_baseline():
    unprefixed = {key.removeprefix("test_"): value for key, value in METRICS.items()}
    card = build_model_card(metrics=unprefixed, training_summary=SUMMARY, **CARD_ARGS)
    assert measured(card.data.eval_results) == EXPECTED
    # one typed row per language / direction, then the averages, computed when not given
    scores = parse_part_metrics({"wer_de": 10.0, "cer_zh": 20.0, "bleu_de-en": 30.0})
    assert [(s.task, s.metric, s.subject, s.value) for s in scores if s.subject] == [
        ("asr", "wer", "de", 10.0), ("asr", "cer", "zh", 20.0), ("s2tt", "bleu", "de-en", 30.0)]
    assert averages(scores) == {"asr": 15.0, "s2tt": 30.0}
    assert averages(parse_part_metrics(METRICS)) == {"asr": 13.6984263, "s2tt": 18.2625, "mt": 30.0}  # as given
    # a prefixed key wins over the same key without it, wherever it comes
    assert [(s.subject, s.value) for s in parse_part_metrics({"wer_de": 1.0, "test_wer_de": 2.0, "wer_fr": 3.0})
            if s.subject] == [("de", 2.0), ("fr", 3.0)]

    baseline = {"test_wer_de": 13.0, "test_wer_fr": 19.0, "test_cer_zh": 9.0, "test_bleu_de-en": 20.0,
                "test_bleu_zh-en": 16.0}
    text = build_model_card(
        metrics=METRICS, training_summary=SUMMARY, baseline_metrics=baseline, baseline_name="Baseline-2stage",
        **CARD_ARGS,
    ).text
    assert "| German (`de`) | WER | 12.35 | 13.00 | -0.65 |" in text
    assert "worse for fr (WER 20.50 vs 19.00); zh-en (BLEU 15.12 vs 16.00)" in text


def test_capped_error_rates_never_enter_the_card():
    """Opt-in capped rates (`compute_speech_metrics(hypothesis_cap=...)`) sit next to the plain ones; a card and its
    model-index report only plain WER/CER, never a capped number as the WER of a language named "capped_de"."""
    capped = {"test_wer_capped_de": 5.0, "test_cer_capped_zh": 4.0, "test_asr_avg_error_capped": 4.5,
              "test_asr_capped_hypotheses": 2, "test_asr_hypothesis_cap_ratio": 2.0,
              "test_asr_hypothesis_cap_margin": 10}
    card = build_model_card(metrics={**METRICS, **capped}, training_summary=SUMMARY, **CARD_ARGS)
    assert measured(card.data.eval_results) == EXPECTED
    scores = parse_part_metrics({**METRICS, **capped})
    assert scores == parse_part_metrics(METRICS) and averages(scores)["asr"] == METRICS["test_asr_avg_error"]
    with pytest.raises(ValueError, match="capped error rates .* are not reported in a card"):
        parse_part_metrics({"test_wer_capped_de": 5.0})


def test_card_from_stage_summaries_only():
    """A summary without the schedule (only the trainer's stage records) still gives the schedule table."""
    stages = [{**s, "trainable_groups": ["adapter"], "tasks": {"asr": 1.0}} for s in SUMMARY["stages"]]
    card = build_model_card(metrics={"wer_de": 5.0}, training_summary={"stages": stages}, model_name="m")
    assert "| 1 | `1_adapter` | adapter | ASR | 6 |" in card.text
    assert front_matter(card.content)["metrics"] == ["wer"]
    assert "### Speech translation" not in card.text


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"metrics": None}, "needs the test metrics: pass metrics="),
        ({"metrics": {"test_loss": 1.0}}, "test_wer_<lang>"),
        ({"metrics": {"eval_wer_de": 1.0}}, "metric_key_prefix='eval'"),
        ({"metrics": {"test_wer_de": float("nan")}}, "'test_wer_de' is nan"),
        ({"training_summary": None}, "needs the training summary: pass training_summary="),
        ({"training_summary": {"total_seconds": 1}}, "neither 'schedule' nor 'stages'"),
        ({"languages": ["German"]}, "not an ISO 639 code"),
        ({"base_models": ["/local/qwen"]}, "not a Hub model id"),
        ({"base_models": ["Qwen/Qwen2.5-1.5B.git"]}, "not a Hub model id"),  # huggingface_hub's validate_repo_id
        ({"data_summary": {"asr": {"de": -1}}}, "give a number >= 0"),
    ],
)
def test_card_input_errors(kwargs, message):
    args = {**CARD_ARGS, "metrics": METRICS, "training_summary": SUMMARY, **kwargs}
    with pytest.raises(ValueError, match=re.escape(message)):
        build_model_card(**args)


def test_write_model_card_reads_the_run_folder(tmp_path):
    (tmp_path / "training_summary.json").write_text(json.dumps({k: v for k, v in SUMMARY.items() if k != "schedule"}))
    (tmp_path / "schedule.json").write_text(json.dumps(SCHEDULE))
    (tmp_path / "all_results.json").write_text(json.dumps({"train_loss": 2.0, **METRICS}))
    (tmp_path / "config.json").write_text(
        json.dumps({"text_config": {"_name_or_path": "Qwen/Qwen2.5-1.5B"}, "audio_config": {"_name_or_path": ""}})
    )
    path = write_model_card(tmp_path, dataset_name="PART demo corpus")
    assert path == tmp_path / "README.md"
    card = ModelCard.load(path)
    # the Hub's metadata reader gives the same card data, and ModelCardData takes it back as it is
    metadata = metadata_load(path)
    assert metadata == card.data.to_dict() and ModelCardData(**metadata).to_dict() == metadata
    assert card.data.base_model == ["Qwen/Qwen2.5-1.5B"]
    assert card.data.model_name == tmp_path.name
    assert measured(card.data.eval_results) == EXPECTED
    assert "| 3 | `3_cross_language` |" in card.text

    run = tmp_path / "unfinished"
    run.mkdir()
    (run / "results.json").write_text(json.dumps(METRICS))
    with pytest.raises(ValueError, match="needs the training summary.*training_summary.json does not exist"):
        write_model_card(run)
    with pytest.raises(ValueError, match="is not a folder"):
        write_model_card(tmp_path / "README.md")


# ----------------------------------------------------------------------------------------------- publishing
@pytest.fixture
def offline(monkeypatch):
    """HF_HUB_OFFLINE, and any socket connection fails the test."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


@pytest.fixture
def hub_calls(monkeypatch, offline):
    """Records ModelCard.validate, HfApi.create_repo and HfApi.create_commit (with their operations) instead of
    calling the Hub."""
    calls = {"validate": [], "create_repo": [], "create_commit": []}

    def validate(self, repo_type=None):
        assert not calls["create_repo"], "the card is validated before the repository is created"
        calls["validate"].append((str(self), repo_type))

    def create_repo(self, repo_id, **kwargs):
        calls["create_repo"].append({"repo_id": repo_id, **kwargs})
        return RepoUrl(f"https://huggingface.co/{repo_id}")

    def create_commit(self, repo_id, operations, **kwargs):
        calls["create_commit"].append({"repo_id": repo_id, "operations": list(operations), **kwargs})
        oid = "0" * 40
        return CommitInfo(f"https://huggingface.co/{repo_id}/commit/{oid}", kwargs["commit_message"], "", oid)

    monkeypatch.setattr(ModelCard, "validate", validate)
    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "create_commit", create_commit)
    return calls


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    """A finished run's folder: tiny model + processor + summaries + card, and the leftovers a run also holds."""
    torch.manual_seed(0)
    model, processor = build_tiny_part("sensevoice")
    folder = tmp_path_factory.mktemp("part-run")
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    (folder / "training_summary.json").write_text(json.dumps(SUMMARY))
    (folder / "schedule.json").write_text(json.dumps(SCHEDULE))
    (folder / "results.json").write_text(json.dumps(METRICS))
    write_model_card(folder, repo_id="someone/part-tiny", dataset_name="PART demo corpus", synthetic_data=True)
    checkpoint = folder / "stage-0-1_adapter" / "checkpoint-1"
    checkpoint.mkdir(parents=True)
    (checkpoint / "optimizer.pt").write_bytes(b"optimizer state")
    (checkpoint / "model.safetensors").write_bytes(b"stage weights")
    (folder / "checkpoint-7").mkdir()
    (folder / "checkpoint-7" / "trainer_state.json").write_text("{}")
    (folder / "training_args.bin").write_bytes(b"pickle")
    (folder / "runs").mkdir()
    (folder / "runs" / "events.out.tfevents.1").write_bytes(b"events")
    return folder, model.eval(), processor


def test_publish_uploads_one_commit_that_loads(run_folder, hub_calls, tmp_path):
    folder, model, processor = run_folder
    info = publish(folder, "someone/part-tiny", private=True, token="hf_test_token")
    assert info.oid == "0" * 40

    assert len(hub_calls["create_repo"]) == 1 and len(hub_calls["create_commit"]) == 1
    assert hub_calls["validate"] == [((folder / "README.md").read_text(encoding="utf-8"), "model")]
    repo = hub_calls["create_repo"][0]
    assert repo["repo_id"] == "someone/part-tiny" and repo["exist_ok"] and repo["private"]
    commit = hub_calls["create_commit"][0]
    assert commit["repo_id"] == "someone/part-tiny" and commit["commit_message"] == "Upload PART model"
    operations = commit["operations"]
    assert all(isinstance(op, CommitOperationAdd) for op in operations)
    paths = {op.path_in_repo for op in operations}
    assert {
        "config.json", "generation_config.json", "model.safetensors", "processor_config.json", "tokenizer.json",
        "tokenizer_config.json", "modeling_part.py", "configuration_part.py", "processing_part.py",
        "feature_extraction_part.py", "audio_utils.py", "README.md", "training_summary.json", "schedule.json",
        "results.json",
    } <= paths
    assert not [p for p in paths if p.startswith(("stage-", "checkpoint-", "runs/")) or p == "training_args.bin"]
    assert paths == set(publish_files(folder))

    # the committed files, written to a fresh folder, are a complete PART repository
    hub = tmp_path / "hub"
    for op in operations:
        target = hub / op.path_in_repo
        target.parent.mkdir(parents=True, exist_ok=True)
        with op.as_file() as f:
            target.write_bytes(f.read())
    loaded = AutoModelForSpeechSeq2Seq.from_pretrained(hub).eval()
    loaded_processor = AutoProcessor.from_pretrained(hub)
    assert isinstance(loaded, PartForSpeechToText) and isinstance(loaded_processor, PartProcessor)
    inputs = loaded_processor.apply_transcription_request(make_audio(1.0), language="de", sampling_rate=16000)
    with torch.no_grad():
        expected = model.generate(**processor(audio=make_audio(1.0), sampling_rate=16000, task="asr",
                                              source_language="de"), max_new_tokens=4)
        assert torch.equal(loaded.generate(**inputs, max_new_tokens=4), expected)
    card = ModelCard.load(hub / "README.md")
    assert measured(card.data.eval_results) == EXPECTED
    assert missing_model_files(hub) == []


def test_publish_refuses_an_incomplete_folder(run_folder, hub_calls, tmp_path):
    folder, _, _ = run_folder
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "processor_config.json", "audio_utils.py",
                 "modeling_part.py", "configuration_part.py", "processing_part.py", "feature_extraction_part.py"):
        (tmp_path / name).write_bytes((folder / name).read_bytes())
    with pytest.raises(ValueError) as error:
        publish(tmp_path, "someone/part-tiny")
    message = str(error.value)
    assert "model.safetensors" in message and "README.md" in message
    assert "config.json (" not in message and "tokenizer files" not in message
    assert hub_calls == {"validate": [], "create_repo": [], "create_commit": []}

    # remote code the auto_map (or a relative import) needs, and weights dropped by an ignore pattern
    (tmp_path / "audio_utils.py").unlink()
    problems = missing_model_files(tmp_path)
    assert any("audio_utils.py" in p for p in problems)
    with pytest.raises(ValueError, match="model.safetensors"):
        publish(folder, "someone/part-tiny", ignore_patterns=["*.safetensors"])
    assert hub_calls["create_repo"] == []


def test_publish_stops_when_the_hub_rejects_the_card(run_folder, hub_calls, monkeypatch):
    folder, _, _ = run_folder

    def reject(self, repo_type=None):
        raise ValueError('"model-index[0].results[0].metrics[0].value" must be a number')

    monkeypatch.setattr(ModelCard, "validate", reject)
    with pytest.raises(ValueError, match="model-index"):
        publish(folder, "someone/part-tiny")
    assert hub_calls["create_repo"] == [] and hub_calls["create_commit"] == []
