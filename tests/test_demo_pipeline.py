"""A miniature of `make demo` and `make paper`: tiny corpus, a few pretraining steps, every PART stage, the test
evaluation, the plots and the model card."""

import json
import sys
from pathlib import Path

import pytest
import torch
from datasets import Dataset, load_from_disk

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from examples.demo.run_demo import (  # noqa: E402
    DemoArguments,
    chance_metrics,
    demo_schedule,
    finished_run,
    load_encoder_with_dropout,
    main as demo_main,
    results_table,
    run_settings,
    scores_by_engine_and_voice,
)
from examples.demo.run_paper import main as paper_main, verdicts  # noqa: E402
from modeling_part.modeling_part import build_audio_tower  # noqa: E402
from modeling_part.tiny import tiny_part_config  # noqa: E402
from trainers.stages import load_schedule  # noqa: E402

TINY = ["--languages", "en", "de", "zh", "--train_items_per_language", "6", "--test_items", "2",
        "--encoder_steps", "2", "--llm_steps", "2", "--llm_text_items", "30", "--max_steps", "8", "--batch_size", "4", "--eval_batch_size", "8",
        "--probes_per_label", "1", "--adapter_width", "32"]


@pytest.mark.slow
def test_demo_pipeline_end_to_end(tmp_path):
    # Pico training speakers and augmentation on (opt-in flags), passed through to the corpus
    shares = ["--train_pico_share", "0.5", "--train_augment_share", "0.5"]
    results = demo_main(["--output_dir", str(tmp_path), *TINY, *shares])
    run = tmp_path / "part"
    metrics = results["metrics"]
    assert {"test_wer_en", "test_wer_de", "test_cer_zh", "test_bleu_de-en", "test_bleu_zh-en"} <= set(metrics)
    summary = json.loads((run / "training_summary.json").read_text())
    # the stand-in encoder was CTC-trained with dropout 0.1; PART trains it without (--encoder_dropout 0)
    assert json.loads((tmp_path / "components" / "encoder" / "config.json").read_text())["hidden_dropout"] == 0.1
    assert json.loads((run / "config.json").read_text())["audio_config"]["hidden_dropout"] == 0.0
    assert [s["name"] for s in summary["stages"]] == ["1_adapter", "2a_encoder_top", "2b_encoder_full", "3_cross_language"]
    for name in ("loss_per_stage.png", "gradient_similarity_stages.png", "README.md", "model.safetensors",
                 "predictions_test.jsonl", "results.json"):
        assert (run / name).exists(), name
    card = (run / "README.md").read_text()
    assert "model-index" in card and "wer" in card.lower()
    corpus = load_from_disk(str(tmp_path / "corpus"))
    train_speakers = set(corpus["train"]["speaker"])
    assert any(s.endswith("/pico-t1") or s.endswith("/pico-t2") or s.endswith("/pico-t3") for s in train_speakers)
    assert not any(s.endswith(("/pico-a", "/pico-b", "/m3", "/f2")) for s in train_speakers)
    lines = (run / "predictions_test.jsonl").read_text().splitlines()
    assert len(lines) == len(corpus["test"])
    # the same test items spoken by Pico (en, de of en/de/zh), scored per engine and per held-out voice
    assert len((run / "predictions_test_pico.jsonl").read_text().splitlines()) == len(corpus["test_pico"]) > 0
    assert {"test_pico_wer_en", "test_pico_wer_de", "test_pico_bleu_de-en"} <= set(results["test_pico_metrics"])
    engines = results["engine_voice_metrics"]
    assert list(engines) == ["espeak", "espeak f2", "espeak m3", "espeak, Pico's languages", "pico", "pico-a", "pico-b"]
    assert "cer_zh" in engines["espeak"] and "cer_zh" not in engines["espeak, Pico's languages"]
    assert engines["pico"]["wer_de"] == results["test_pico_metrics"]["test_pico_wer_de"]
    assert "| **asr_avg_error** |" in results["tables"]["engines"]
    assert set(results["chance_metrics"]) >= {"wer_en", "cer_zh", "bleu_de-en", "s2tt_avg_bleu"}

    # every stage scored on the test split (the last is the final model's score), beside chance and the stand-ins
    stages = ["1_adapter", "2a_encoder_top", "2b_encoder_full", "3_cross_language"]
    assert list(results["stage_metrics"]) == stages and results["stage_metrics"][stages[-1]] == metrics
    for index, name in enumerate(stages[:-1]):
        assert (run / f"stage-{index}-{name}" / "generation_metrics.json").exists()
        assert {"test_asr_avg_error", "test_s2tt_avg_bleu", "test_cer_zh"} <= set(results["stage_metrics"][name])
    table = results["tables"]["stages"]
    assert table.splitlines()[0].split(" | ")[1:] == ["chance", *stages[:-1], stages[-1] + " |"]
    assert "| **asr_avg_error** |" in table and "| bleu_zh-en |" in table
    stand_ins = results["stand_ins"]
    assert set(stand_ins["encoder"]["cer"]) == {"en", "de", "zh"} and set(stand_ins["llm"]["mt_bleu"]) == {"de-en", "zh-en"}
    assert "| **average** |" in results["tables"]["stand_ins"]
    assert (run / "scores_per_stage.png").exists()
    assert results["timings"]["total"] >= results["timings"]["PART training (all stages)"] > 0
    assert json.loads((tmp_path / "components" / "components.json").read_text())["corpus"]["languages"] == ["en", "de", "zh"]

    # make paper on the same corpus and components: two systems, one seed, trained in two worker processes; a table
    # with deltas vs PART
    stats = paper_main(["--output_dir", str(tmp_path / "paper"), "--corpus_dir", str(tmp_path / "corpus"),
                        "--components_dir", str(tmp_path / "components"), "--presets", "part", "baseline_2stage",
                        "--seeds", "0", "--workers", "2", *TINY, "--adapter_stride", "3", "--lora_rank", "4"])
    assert set(stats) == {"part", "baseline_2stage"}
    assert (tmp_path / "paper" / "baseline_2stage" / "seed0.log").exists()  # the worker processes' logs
    run = tmp_path / "paper" / "part" / "seed0"
    assert json.loads((run / "config.json").read_text())["adapter_config"]["downsample_stride"] == 3
    cross = json.loads((run / "training_summary.json").read_text())["schedule"]["stages"][-1]
    assert cross["lora"]["r"] == 4 and cross["lora"]["lora_alpha"] == 8 and cross["lr_scale"] == 0.5
    assert cross["lora"]["lora_dropout"] == 0.0  # the demo's, not the schedule's 0.05
    table = (tmp_path / "paper" / "results.md").read_text()
    assert "(Δ" in table and "(1 seed)" in table and "asr_avg_error" in table and "| chance |" in table
    assert "vs baseline_2stage" in table and "one seed on a side" in table  # the verdicts (test_verdicts_...)
    assert "| **pico_asr_avg_error** |" in table and "| pico_bleu_de-en |" in table  # Pico's test voices, with chance
    pico_row = next(line for line in table.splitlines() if line.startswith("| pico_wer_de |"))
    assert not pico_row.endswith("| – |") and "- Pico test voices: S2TT average BLEU: part" in table  # chance, verdict
    settings = json.loads((run / "results.json").read_text())["settings"]
    assert settings["adapter_stride"] == 3 and settings["train_items_per_language"] == 6 and "output_dir" not in settings
    # a finished run trained with other settings is refused, not mixed into the table
    with pytest.raises(ValueError, match=r"other settings \(lora_rank=4 against this run's lora_rank=8\)"):
        paper_main(["--output_dir", str(tmp_path / "paper"), "--corpus_dir", str(tmp_path / "corpus"),
                    "--components_dir", str(tmp_path / "components"), "--presets", "part", "--seeds", "0", *TINY,
                    "--adapter_stride", "3", "--lora_rank", "8"])

    # the demo rerun into its folder with other settings is refused: it would resume (report) the finished run
    with pytest.raises(ValueError, match=r"other settings \(learning_rate=0.001 against this run's learning_rate=0.002\)"):
        demo_main(["--output_dir", str(tmp_path), *TINY, *shares, "--learning_rate", "0.002"])

    # stand-ins made for another corpus are refused: their pretraining may have seen this test split
    with pytest.raises(ValueError, match="were made for the corpus"):
        demo_main(["--output_dir", str(tmp_path / "other"), "--components_dir", str(tmp_path / "components"),
                   *TINY, "--seed", "1"])


def _stand_ins(folder: Path, llm_weights: bytes = b"llm") -> tuple[str, str]:
    for name, files in {"encoder": {"model.safetensors": b"encoder", "ctc_head.safetensors": b"head"},
                        "llm": {"model.safetensors": llm_weights, "tokenizer.json": b"{}"}}.items():  # fmt: skip
        (folder / name).mkdir(parents=True, exist_ok=True)
        for file, content in files.items():
            (folder / name / file).write_bytes(content)
    return str(folder / "encoder"), str(folder / "llm")


def test_finished_run_reuses_or_resumes_only_a_run_with_the_same_settings(tmp_path):
    stand_ins = _stand_ins(tmp_path / "components")
    settings = run_settings(DemoArguments(train_items_per_language=1000), *stand_ins)
    assert "output_dir" not in settings and "synthesis_workers" not in settings and settings["max_steps"] == 3500
    run = tmp_path / "part" / "seed0"
    assert finished_run(run, "part", 0, settings) is None
    run.mkdir(parents=True)
    (run / "results.json").write_text(json.dumps({"metrics": {}}))
    with pytest.raises(ValueError, match="records no settings"):
        finished_run(run, "part", 0, settings)
    done = {"schedule": "part", "seed": 0, "settings": settings, "metrics": {"test_asr_avg_error": 20.0}}
    (run / "results.json").write_text(json.dumps(done))
    assert finished_run(run, "part", 0, settings)["metrics"] == {"test_asr_avg_error": 20.0}
    other = run_settings(DemoArguments(train_items_per_language=500, output_dir="elsewhere"), *stand_ins)
    with pytest.raises(ValueError, match=r"train_items_per_language=1000 against this run's train_items_per_language=500"):
        finished_run(run, "part", 0, other)

    # other stand-ins (here: another LLM) are other settings; the encoder's CTC head, which PART never loads, is not
    retrained = run_settings(DemoArguments(train_items_per_language=1000), *_stand_ins(tmp_path / "new", b"llm 2"))
    with pytest.raises(ValueError, match=r"other settings \(stand-ins="):
        finished_run(run, "part", 0, retrained)
    (tmp_path / "components" / "encoder" / "ctc_head.safetensors").write_bytes(b"another head")
    assert run_settings(DemoArguments(train_items_per_language=1000), *stand_ins) == settings
    hub = run_settings(DemoArguments(train_items_per_language=1000), "FunAudioLLM/Fun-ASR-Nano-2512", "Qwen/Qwen3-0.6B")
    assert hub["stand-ins"] not in (settings["stand-ins"], retrained["stand-ins"])
    with pytest.raises(ValueError, match=r"run's seed=0 against this run's run's seed=1"):
        finished_run(run, "part", 1, settings)

    # an interrupted run (checkpoints, no results) is resumed only with the settings it started with
    (run / "results.json").unlink()
    (run / "stage-0-1_adapter").mkdir()
    with pytest.raises(ValueError, match="recorded no settings"):
        finished_run(run, "part", 0, settings)
    (run / "run_settings.json").write_text(json.dumps({"schedule": "part", "seed": 0, "settings": settings}))
    assert finished_run(run, "part", 0, settings) is None
    with pytest.raises(ValueError, match=r"other settings \(train_items_per_language=1000 against"):
        finished_run(run, "part", 0, other)
    with pytest.raises(ValueError, match=r"run's schedule='part' against this run's run's schedule='baseline_2stage'"):
        finished_run(run, "baseline_2stage", 0, settings)

def _split(rows):
    keys = ("task", "source_language", "target_language", "text")
    return Dataset.from_dict({k: [r[i] for r in rows] for i, k in enumerate(keys)})


def test_chance_metrics_answers_from_the_matching_training_texts():
    train = _split([("asr", "en", "en", "we need two liters"), ("asr", "de", "de", "wir brauchen zwei liter"),
                    ("s2tt", "de", "en", "we need two liters")])
    test = _split([("asr", "en", "en", "we need two liters"), ("asr", "de", "de", "wir brauchen zwei liter"),
                   ("s2tt", "de", "en", "we need two liters")])
    chance = chance_metrics(train, test)
    # one training text per key: the "random" answer is the right one, so chance is perfect here
    assert chance["wer_en"] == 0.0 and chance["wer_de"] == 0.0 and chance["bleu_de-en"] == pytest.approx(100.0)

    wrong = _split([("asr", "en", "en", "today is monday"), ("asr", "de", "de", "heute ist montag"),
                    ("s2tt", "de", "en", "today is monday")])
    chance = chance_metrics(wrong, test)
    assert chance["wer_en"] == 100.0 and chance["bleu_de-en"] == 0.0


def test_scores_by_engine_and_voice_scores_each_group_as_the_test_split_is_scored():
    def row(task, language, text, speaker):
        target = "en" if task == "s2tt" else language
        return {"task": task, "source_language": language, "target_language": target, "text": text, "speaker": speaker}

    test = [row("asr", "en", "we need two liters", "en-us+m3/m3"), row("asr", "en", "today is monday", "en-us+f2/f2"),
            row("asr", "zh", "今天", "cmn+f2/f2"), row("mt", "de", "we need two liters", "")]
    pico = [row("asr", "en", "we need two liters", "en-US/pico-a"),
            row("asr", "en", "we need two liters", "en-US/pico-b"),
            row("s2tt", "de", "we need two liters", "de-DE/pico-a")]
    columns = scores_by_engine_and_voice(test, ["we need two liters", "today is", "今天", "x"], pico,
                                         ["we need two liters", "we need", "we need two liters"])  # fmt: skip
    assert list(columns) == ["espeak", "espeak f2", "espeak m3", "espeak, Pico's languages", "pico", "pico-a", "pico-b"]
    assert columns["espeak m3"]["wer_en"] == 0.0 and columns["espeak f2"]["wer_en"] == pytest.approx(100 / 3)
    assert columns["espeak"]["wer_en"] == pytest.approx(100 / 7)  # jiwer's corpus WER: 1 error in 7 words
    assert "mt_avg_bleu" not in columns["espeak"] and columns["espeak f2"]["cer_zh"] == 0.0
    assert set(columns["espeak, Pico's languages"]) == {"wer_en", "asr_avg_error", "asr_samples"}
    assert columns["pico-a"]["wer_en"] == 0.0 and columns["pico-b"]["wer_en"] == 50.0
    assert columns["pico"]["wer_en"] == 25.0 and columns["pico-a"]["bleu_de-en"] == pytest.approx(100.0)
    assert "| espeak m3 |" in results_table(columns) and list(scores_by_engine_and_voice(test[:1], ["x"])) == [
        "espeak", "espeak m3"]  # fmt: skip


def test_chance_metrics_names_a_missing_training_key():
    train = _split([("asr", "en", "en", "one")])
    test = _split([("asr", "fr", "fr", "un")])
    with pytest.raises(ValueError, match="'asr', 'fr', 'fr'"):
        chance_metrics(train, test)


def test_demo_schedule_sizes_the_presets_later_learning_rates_and_keeps_a_files_own(tmp_path):
    args = DemoArguments(learning_rate=1e-3, later_stages_lr_scale=0.5, encoder_last_k=2)
    part = demo_schedule(args, "part")
    assert [stage.lr_scale for stage in part.stages] == [1.0, 0.5, 0.5, 0.5]
    assert [stage.peak_learning_rate(args.learning_rate)[0] for stage in part.stages] == [1e-3, 5e-4, 5e-4, 5e-4]
    assert {stage.encoder_last_k for stage in part.stages} == {2}
    assert [stage.lr_scale for stage in demo_schedule(args, "baseline_2stage").stages] == [1.0, 0.5]
    # the preset itself is untouched, and 0 keeps its rates
    assert [stage.lr_scale for stage in load_schedule("part").stages] == [1.0, 0.3, 0.2, 0.2]
    kept = demo_schedule(DemoArguments(later_stages_lr_scale=0), "part")
    assert [stage.lr_scale for stage in kept.stages] == [1.0, 0.3, 0.2, 0.2]
    # a schedule file is the user's: its rates stay
    path = tmp_path / "mine.json"
    load_schedule("part").save(path)
    assert [stage.lr_scale for stage in demo_schedule(args, str(path)).stages] == [1.0, 0.3, 0.2, 0.2]


def test_load_encoder_with_dropout_sets_the_configs_dropout_and_keeps_it_when_negative(tmp_path):
    encoder = build_audio_tower(tiny_part_config(64, 63, encoder="sensevoice").audio_config)
    encoder.config.hidden_dropout = 0.1
    encoder.half().save_pretrained(tmp_path / "encoder")  # the shipped stand-ins are fp16
    loaded = load_encoder_with_dropout(str(tmp_path / "encoder"), 0.0)
    assert loaded.config.hidden_dropout == 0.0 and loaded.config.attention_dropout == 0.0
    assert {p.dtype for p in loaded.parameters()} == {torch.float32}

    def rates(module):  # the probabilities its layers read from the config when built
        return {v for m in module.modules() for k, v in vars(m).items() if "dropout" in k and isinstance(v, float)}

    assert rates(loaded) == {0.0}
    kept = load_encoder_with_dropout(str(tmp_path / "encoder"), -1)
    assert kept.config.hidden_dropout == 0.1 and 0.1 in rates(kept)
    with pytest.raises(ValueError, match="--encoder_dropout"):
        load_encoder_with_dropout(str(tmp_path / "encoder"), 1.0)


def test_verdicts_say_whether_a_difference_lies_beyond_the_seed_spread():
    def run(asr, bleu):
        return {"metrics": {"test_asr_avg_error": asr, "test_s2tt_avg_bleu": bleu}}

    runs = {
        "part": [run(28.4, 45.8), run(21.4, 60.7), run(22.9, 55.5)],
        "baseline_2stage": [run(33.2, 45.0), run(33.9, 49.0), run(34.8, 41.6)],
        "no_task_staging": [run(28.0, 47.4)],
        "no_task_staging_no_lora": [run(29.5, 46.5)],
    }
    lines = verdicts(runs)
    assert "- ASR average error %: part 24.2 vs baseline_2stage 34.0: part better by 9.7, beyond the seed spread" in lines[0]
    assert "S2TT average BLEU: part 54.0 vs baseline_2stage 45.2: part better by 8.8, within the seed spread" in lines[4]
    # each ablation step against the one before it (higher error: worse), and a lower BLEU for PART is named so
    assert any("no_task_staging 28.0 vs no_task_staging_no_lora 29.5: no_task_staging better by 1.5, one seed" in line
               for line in lines)
    runs["baseline_2stage"] = [run(20.0, 70.0), run(21.0, 71.0)]
    assert "baseline_2stage better by 3.7, beyond the seed spread" in verdicts(runs)[0]
    # the scores of Pico's test voices (a run's `test_pico_metrics`) get verdicts of their own
    pico = {system: [{"metrics": {}, "test_pico_metrics": {"test_pico_asr_avg_error": error}} for error in errors]
            for system, errors in (("part", (70.0, 76.0)), ("baseline_2stage", (78.0, 77.0)))}
    assert verdicts(pico) == ["- Pico test voices: ASR average error %: part 73.0 vs baseline_2stage 77.5: part better by "
                              "4.5, beyond the seed spread (every seed of the better system beats every seed of the other)."]
    # runs that carry their seed are paired seed by seed: overlapping ranges, yet PART better on every shared seed
    paired = {"part": [{**run(e, 0.0), "seed": s} for s, e in ((0, 10.7), (1, 13.8), (2, 8.3))],
              "no_task_staging": [{**run(e, 0.0), "seed": s} for s, e in ((0, 16.4), (1, 17.1), (2, 10.6), (3, 1.0))]}
    assert verdicts(paired)[0] == ("- ASR average error %: part 10.9 vs no_task_staging 11.3: part better by 0.3, within "
                                   "the seed spread (the seeds' ranges overlap); paired by seed, part better on 3 of 3.")
