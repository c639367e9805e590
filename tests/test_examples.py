"""Smoke tests of the example scripts `examples/run_asr.py` and `examples/run_speech_translation.py`: a tiny local
dataset (WAV clips + CSV / JSON lines) and a tiny saved PART model; train, evaluate, predict, resume, and assemble
a model from pretrained parts. The command-line runs are subprocesses; the others call `main(argv)` to save time."""

import csv
import json
import logging
import os
import shutil
import subprocess
import sys
from types import SimpleNamespace

import datasets
import pytest
import soundfile as sf
import torch
import transformers
from datasets import Dataset, DatasetDict
from transformers import AutoModelForSpeechSeq2Seq, FunAsrNanoEncoderConfig, Qwen2Config, Qwen2ForCausalLM
from transformers.models.fun_asr_nano.modeling_fun_asr_nano import FunAsrNanoEncoder

from modeling_part.tiny import build_tiny_part, build_tokenizer
from trainers import PartTrainingArguments

from conftest import make_audio

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")
sys.path.insert(0, EXAMPLES)

import run_asr  # noqa: E402
import run_speech_translation  # noqa: E402
from speech_text_utils import DataTrainingArguments, resolve_resume  # noqa: E402

TRANSCRIPTS = {"de": ["eins zwei", "drei", "vier"], "fr": ["un deux", "trois", "quatre"]}
TRANSLATIONS = ["one two", "three", "four"]
COMMON = ["--per_device_train_batch_size", "2", "--report_to", "none", "--use_cpu", "--disable_tqdm", "true",
          "--logging_steps", "1", "--generation_max_new_tokens", "3", "--seed", "0"]


def _schedule(path, stages):
    path.write_text(json.dumps({"name": path.stem, "stages": stages}))
    return str(path)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """Six 0.7 s clips (German and French) with transcripts and English translations, as CSV (relative audio paths)
    and JSON lines; a tiny saved PART model; two small schedules."""
    root = tmp_path_factory.mktemp("examples")
    (root / "clips").mkdir()
    rows = []
    for i in range(6):
        language = "de" if i % 2 == 0 else "fr"
        sf.write(root / "clips" / f"{i}.wav", make_audio(0.7, seed=i), 16000)
        rows.append({"audio": f"clips/{i}.wav", "sentence": TRANSCRIPTS[language][i // 2],
                     "translation": TRANSLATIONS[i // 2], "language": language, "key": f"utt{i}"})
    for name, subset in (("train", rows), ("dev", rows[:2]), ("test", rows[3:])):
        with open(root / f"{name}.csv", "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=["audio", "text", "language", "key"])
            writer.writeheader()
            for row in subset:
                writer.writerow({"audio": row["audio"], "text": row["sentence"], "language": row["language"],
                                 "key": row["key"]})
        with open(root / f"{name}.jsonl", "w", encoding="utf-8") as f:
            for row in subset:
                f.write(json.dumps({**row, "audio": str(root / row["audio"])}) + "\n")
    torch.manual_seed(0)
    model, processor = build_tiny_part("sensevoice")
    model.save_pretrained(root / "model")
    processor.save_pretrained(root / "model")
    _schedule(root / "two_asr_stages.json", [
        {"name": "adapter", "trainable": ["adapter"], "tasks": {"asr": 1.0}, "steps": 2},
        {"name": "encoder", "trainable": ["adapter", "encoder"], "tasks": {"asr": 1.0}, "steps": 2},
    ])
    _schedule(root / "asr_then_cross.json", [
        {"name": "asr", "trainable": ["adapter"], "tasks": {"asr": 1.0}, "steps": 1},
        {"name": "cross", "trainable": ["adapter", "llm_lora"], "tasks": {"asr": 1.0, "s2tt": 1.0, "mt": 0.5},
         "steps": 1},
    ])
    return root


@pytest.fixture
def restore_logging():
    """`main(argv)` sets the library log levels, as the scripts do; put them back for the other tests."""
    levels = transformers.utils.logging.get_verbosity(), datasets.utils.logging.get_verbosity()
    handlers = logging.root.handlers[:]
    yield
    transformers.utils.logging.set_verbosity(levels[0])
    transformers.utils.logging.reset_format()
    datasets.utils.logging.set_verbosity(levels[1])
    logging.root.handlers[:] = handlers


def _run_script(script, args, cwd):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run([sys.executable, os.path.join(EXAMPLES, script), *args], cwd=cwd, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def _lines(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.mark.slow
def test_run_asr_trains_evaluates_predicts_and_resumes(workdir, restore_logging):
    out = workdir / "asr_run"
    _run_script("run_asr.py", [
        "--model_name_or_path", "model", "--train_file", "train.csv", "--validation_file", "dev.csv",
        "--test_file", "test.csv", "--language_column", "language", "--id_column", "key",
        "--schedule", "two_asr_stages.json", "--max_steps", "4", "--save_steps", "1", "--output_dir", str(out),
        "--cache_dir", str(workdir / "cache"), "--do_train", "--do_eval", "--do_predict", *COMMON,
    ], cwd=workdir)
    assert AutoModelForSpeechSeq2Seq.from_pretrained(out) is not None
    for name in ("train_results.json", "eval_results.json", "test_results.json", "all_results.json", "README.md",
                 "training_summary.json"):
        assert (out / name).is_file(), name
    assert {"eval_loss", "eval_wer_de", "eval_wer_fr"} <= set(json.loads((out / "eval_results.json").read_text()))
    predictions = _lines(out / "predictions_test.jsonl")
    assert [p["id"] for p in predictions] == ["utt3", "utt4", "utt5"]
    assert predictions[0]["reference"] == "trois" and predictions[0]["source_language"] == "fr"
    assert all(isinstance(p["prediction"], str) for p in predictions)
    assert len(_lines(out / "predictions_eval.jsonl")) == 2

    # A crash after step 1 of the second stage: its later checkpoint, stage outputs and the final model are lost.
    stage = out / "stage-1-encoder"
    shutil.rmtree(stage / "checkpoint-2")
    shutil.rmtree(stage / "stage_model")
    (stage / "stage_complete.json").unlink()
    (out / "training_summary.json").unlink()
    run_asr.main([
        "--model_name_or_path", str(workdir / "model"), "--train_file", str(workdir / "train.csv"),
        "--language_column", "language", "--schedule", str(workdir / "two_asr_stages.json"), "--max_steps", "4",
        "--save_steps", "1", "--output_dir", str(out), "--cache_dir", str(workdir / "cache"), "--do_train",
        "--resume_from_checkpoint", "true", *COMMON,
    ])
    state = json.loads((stage / "checkpoint-2" / "trainer_state.json").read_text())
    assert state["global_step"] == 2 and (stage / "stage_complete.json").is_file()
    summary = json.loads((out / "training_summary.json").read_text())
    assert [s["name"] for s in summary["stages"]] == ["adapter", "encoder"]

    # The trained model through the script again, evaluation only, on a `save_to_disk` dataset.
    rows = _lines(workdir / "test.jsonl")
    DatasetDict({"test": Dataset.from_list(rows)}).save_to_disk(workdir / "saved_dataset")
    metrics = run_asr.main([
        "--model_name_or_path", str(out), "--dataset_name", str(workdir / "saved_dataset"), "--text_column",
        "sentence", "--language_column", "language", "--output_dir", str(workdir / "asr_eval"), "--do_predict",
        "--cap_hypotheses", *COMMON,
    ])
    assert metrics["test_samples"] == 3 and "test_wer_fr" in metrics
    # The opt-in cap adds labelled keys next to the plain (uncapped) ones; it never replaces them.
    assert {"test_wer_capped_fr", "test_asr_avg_error_capped", "test_asr_capped_hypotheses"} <= set(metrics)
    assert metrics["test_wer_capped_fr"] <= metrics["test_wer_fr"]
    assert len(_lines(workdir / "asr_eval" / "predictions_test.jsonl")) == 3


@pytest.mark.slow
def test_run_speech_translation_with_asr_and_mt_from_source_text(workdir):
    out = workdir / "st_run"
    _run_script("run_speech_translation.py", [
        "--model_name_or_path", "model", "--train_file", "train.jsonl", "--validation_file", "dev.jsonl",
        "--test_file", "test.jsonl", "--language_column", "language", "--target_language", "en",
        "--text_column", "translation", "--source_text_column", "sentence", "--schedule", "asr_then_cross.json",
        "--lora_r", "2", "--max_steps", "2", "--output_dir", str(out), "--cache_dir", str(workdir / "cache"),
        "--do_train", "--do_eval", "--do_predict", *COMMON,
    ], cwd=workdir)
    model = AutoModelForSpeechSeq2Seq.from_pretrained(out)
    assert not model.has_lora  # merged into the final model
    summary = json.loads((out / "training_summary.json").read_text())
    assert [s["name"] for s in summary["stages"]] == ["asr", "cross"]
    test_metrics = json.loads((out / "test_results.json").read_text())
    assert {"test_bleu_de-en", "test_bleu_fr-en", "test_loss"} <= set(test_metrics)
    predictions = _lines(out / "predictions_test.jsonl")
    assert len(predictions) == 3 and {p["task"] for p in predictions} == {"s2tt"}
    assert [p["reference"] for p in predictions] == ["three", "four", "four"]


def save_tiny_components(folder, encoder_layers: int) -> None:
    """Pretrained-part folders as a user passes them: `encoder` (SenseVoice-style), `tokenizer`, `llm` (Qwen2)."""
    torch.manual_seed(0)
    FunAsrNanoEncoder(
        FunAsrNanoEncoderConfig(hidden_size=32, num_attention_heads=2, intermediate_size=64,
                                num_hidden_layers=encoder_layers, num_timestamp_prediction_layers=0)
    ).save_pretrained(folder / "encoder")
    tokenizer = build_tokenizer(vocab_size=300)
    tokenizer.save_pretrained(folder / "tokenizer")
    Qwen2ForCausalLM(
        Qwen2Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                    num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True)
    ).save_pretrained(folder / "llm")


@pytest.mark.slow
def test_run_asr_assembles_a_model_from_pretrained_parts(workdir, tmp_path, restore_logging):
    save_tiny_components(tmp_path, encoder_layers=2)
    out = tmp_path / "run"
    metrics = run_asr.main([
        "--audio_encoder", str(tmp_path / "encoder"), "--llm", str(tmp_path / "llm"),
        "--tokenizer_name", str(tmp_path / "tokenizer"), "--train_file", str(workdir / "train.csv"),
        "--validation_file", str(workdir / "dev.csv"), "--do_eval", "--max_eval_samples", "2",
        "--language_column", "language", "--max_train_samples", "4",
        "--schedule", _schedule(tmp_path / "one.json", [
            {"name": "adapter", "trainable": ["adapter"], "tasks": {"asr": 1.0}, "steps": 1}]),
        "--max_steps", "1", "--output_dir", str(out), "--cache_dir", str(workdir / "cache"), "--do_train", *COMMON,
    ])
    assert metrics["train_samples"] == 4
    model = AutoModelForSpeechSeq2Seq.from_pretrained(out)
    assert model.config.text_config.hidden_size == 32 and (out / "processor_config.json").is_file()
    # the card is written from local parts: no Hub `base_model` (the folders are not Hub ids), and no error
    card = (out / "README.md").read_text()
    assert "model-index" in card and "wer" in card.lower()
    assert "base_model" not in card and str(tmp_path) not in card


def test_argument_errors_say_what_to_pass(workdir, tmp_path, restore_logging):
    with pytest.raises(ValueError, match="--model_name_or_path .* or both --audio_encoder and --llm"):
        run_asr.main(["--llm", "x", "--output_dir", str(tmp_path), "--do_train"])
    with pytest.raises(ValueError, match="--language_column .* or --source_language"):
        run_asr.main(["--model_name_or_path", str(workdir / "model"), "--train_file", str(workdir / "train.csv"),
                      "--output_dir", str(tmp_path / "a"), "--cache_dir", str(workdir / "cache"), "--do_train",
                      *COMMON])
    # Only s2tt data and the `part` preset, whose first stages train ASR: the error names the ways out.
    with pytest.raises(ValueError, match="--source_text_column"):
        run_speech_translation.main([
            "--model_name_or_path", str(workdir / "model"), "--train_file", str(workdir / "train.jsonl"),
            "--source_language", "de", "--target_language", "en", "--text_column", "translation",
            "--output_dir", str(tmp_path / "b"), "--cache_dir", str(workdir / "cache"), "--do_train",
            "--max_steps", "4", *COMMON])


def test_output_dir_with_progress_resumes_and_other_content_is_refused(tmp_path):
    def resolve(overwrite=False, resume=None):
        args = PartTrainingArguments(output_dir=str(tmp_path), do_train=True, report_to="none", use_cpu=True,
                                     resume_from_checkpoint=resume)
        return resolve_resume(args, DataTrainingArguments(overwrite_output_dir=overwrite))

    assert resolve() is None  # empty
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="--overwrite_output_dir"):
        resolve()
    stage = tmp_path / "stage-0-adapter"
    (stage / "checkpoint-3").mkdir(parents=True)
    (stage / "checkpoint-3" / "trainer_state.json").write_text("{}")
    assert resolve() is True
    assert resolve(resume="some/checkpoint") == "some/checkpoint"
    assert resolve(overwrite=True) is None and not stage.exists()


def test_push_publishes_the_final_model_folder_in_one_commit(tmp_path, monkeypatch):
    import model_cards
    from trainers import PartTrainer

    calls = []
    monkeypatch.setattr(model_cards, "publish", lambda folder, repo_id, **kwargs: calls.append((folder, repo_id, kwargs)))
    args = SimpleNamespace(should_save=True, hub_model_id="me/part-asr", hub_private_repo=None, hub_token=None,
                           hub_revision=None)
    trainer = SimpleNamespace(args=args, _base_output_dir=str(tmp_path))
    PartTrainer.push_to_hub(trainer)
    ((folder, repo_id, kwargs),) = calls
    assert folder == str(tmp_path) and repo_id == "me/part-asr" and kwargs["commit_message"] == "End of training"


def test_hub_options_reach_every_from_pretrained_of_the_pretrained_parts(tmp_path, monkeypatch):
    """--cache_dir, --token, --model_revision, --trust_remote_code and --dtype apply to the encoder, the LLM and the
    tokenizer when the scripts assemble a model from --audio_encoder and --llm, as they do for --model_name_or_path."""
    import modeling_part.modeling_part as modeling
    from speech_text_utils import ModelArguments, load_model_and_processor

    save_tiny_components(tmp_path, encoder_layers=1)

    calls = {}

    def spy(name, load):
        def recording(path, **kwargs):
            calls[name] = kwargs
            return load(path, **kwargs)
        return recording

    monkeypatch.setattr(modeling, "load_pretrained_audio_encoder",
                        spy("encoder", modeling.load_pretrained_audio_encoder))
    monkeypatch.setattr(modeling.AutoModelForCausalLM, "from_pretrained",
                        spy("llm", modeling.AutoModelForCausalLM.from_pretrained))
    monkeypatch.setattr(modeling.AutoTokenizer, "from_pretrained",
                        spy("tokenizer", modeling.AutoTokenizer.from_pretrained))
    model_args = ModelArguments(
        audio_encoder=str(tmp_path / "encoder"), llm=str(tmp_path / "llm"), tokenizer_name=str(tmp_path / "tokenizer"),
        cache_dir=str(tmp_path / "cache"), token="hf_not_a_real_token", model_revision="v1.2",
        trust_remote_code=True, dtype="bfloat16",
    )
    model, processor = load_model_and_processor(model_args)

    hub = {"cache_dir": str(tmp_path / "cache"), "token": "hf_not_a_real_token", "revision": "v1.2",
           "trust_remote_code": True}
    assert set(calls) == {"encoder", "llm", "tokenizer"}
    for name in ("encoder", "llm"):
        assert calls[name] == {**hub, "dtype": torch.bfloat16}, name
    assert calls["tokenizer"] == hub  # a tokenizer has no dtype
    assert model.language_model.dtype == torch.bfloat16 and processor.tokenizer is not None
