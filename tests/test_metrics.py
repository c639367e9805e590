"""Tests for trainers.metrics: normalisation, WER/CER, BLEU, the Trainer compute_metrics and the evaluate modules."""

import json

import evaluate
import jiwer
import numpy as np
import pytest
import sacrebleu

from trainers.metrics import (
    CER_LANGUAGES,
    HypothesisCap,
    TextNormalizer,
    bleu_by_direction,
    bleu_tokenizer,
    compute_speech_metrics,
    evaluate_metric_path,
    uses_cer,
    word_error_rate,
)


def identity(text, language):
    return text


# --- WER / CER ---------------------------------------------------------------------------------------------


def test_wer_hand_computed():
    rates = word_error_rate(["the cat sit on mat"], ["the cat sat on the mat"], ["en"])
    rate = rates["en"]
    assert (rate.metric, rate.errors, rate.reference_units) == ("wer", 2, 6)  # one substitution, one deletion
    assert rate.value == pytest.approx(100 * 2 / 6)


def test_wer_is_corpus_level_per_language():
    rates = word_error_rate(
        ["a b c d", "x", "ein zwei"],
        ["a b c d", "y", "ein zwei drei"],
        ["en", "en", "de"],
    )
    assert rates["en"].value == pytest.approx(100 * 1 / 5)  # not the mean of per-sentence rates (50%)
    assert rates["de"].value == pytest.approx(100 * 1 / 3)
    assert rates["en"].num_samples == 2 and rates["de"].num_samples == 1


def test_cer_languages_and_spaces_ignored():
    assert {"zh", "cmn", "ja", "ko", "yue"} <= CER_LANGUAGES
    assert uses_cer("zh-CN") and uses_cer("cmn_hans_cn") and not uses_cer("de")
    assert word_error_rate(["猫 坐在 垫子 上"], ["猫坐在垫子上"], "zh")["zh"].value == 0.0
    rate = word_error_rate(["猫坐垫子上"], ["猫坐在垫子上。"], "zh")["zh"]
    assert (rate.metric, rate.errors, rate.reference_units) == ("cer", 1, 6)  # punctuation removed by normalisation


def test_normalisation_removes_case_punctuation_and_brackets():
    normalizer = TextNormalizer()
    assert normalizer("Hello, World!  [noise] (laughs) Ça va?", "fr") == "hello world ça va"
    assert word_error_rate(["hello world"], ["Hello, World!"], "en")["en"].errors == 0
    assert word_error_rate(["hello world"], ["Hello, World!"], "en", normalizer=identity)["en"].errors == 2


def test_english_normaliser_needs_spelling_map_and_never_touches_german(tmp_path):
    assert not TextNormalizer().uses_english_normalizer  # transformers ships no spelling map
    path = tmp_path / "normalizer.json"
    path.write_text(json.dumps({"colour": "color"}))
    for normalizer in (
        TextNormalizer(str(path)),
        TextNormalizer.from_tokenizer(type("T", (), {"english_spelling_normalizer": {"colour": "color"}})()),
    ):
        assert normalizer.uses_english_normalizer
        assert normalizer("Dr. Müller won't change the colour", "en") == "doctor muller will not change the color"
        assert normalizer("Dr. Müller won't change the colour", "de") == "dr müller won t change the colour"
    normalizer = TextNormalizer({"colour": "color"})
    assert word_error_rate(["the color"], ["the colour"], "en", normalizer=normalizer)["en"].errors == 0
    assert word_error_rate(["the color"], ["the colour"], "de", normalizer=normalizer)["de"].errors == 1


# Speech LLMs fail by inserting (repeating, continuing, translating instead of transcribing): thirty words for a
# one-word reference is 29 insertions, a WER of 2900%, and that is what jiwer and the paper report.
INSERTION_REFERENCES = ["hello", "the cat sat on the mat", "good morning"]
INSERTION_HYPOTHESES = [
    "hello " + " ".join(f"word{i}" for i in range(29)),  # 30 words for 1
    "the cat sat on the mat " + "and then it sat on the mat again " * 3,  # 6 + 24 words for 6
    "good evening",
]


def test_wer_is_uncapped_by_default_and_equals_jiwer():
    runaway = word_error_rate([INSERTION_HYPOTHESES[0]], [INSERTION_REFERENCES[0]], "en")["en"]
    assert (runaway.errors, runaway.reference_units) == (29, 1)
    assert runaway.value == pytest.approx(2900.0) == pytest.approx(100 * jiwer.wer("hello", INSERTION_HYPOTHESES[0]))
    corpus = word_error_rate(INSERTION_HYPOTHESES, INSERTION_REFERENCES, "en")["en"]
    # Corpus level, as jiwer.wer over lists: all edits / all reference words (not a mean of sentence rates).
    assert corpus.value == pytest.approx(100 * jiwer.wer(INSERTION_REFERENCES, INSERTION_HYPOTHESES))
    assert corpus.value == pytest.approx(100 * (29 + 24 + 1) / 9)
    characters = word_error_rate(["猫" * 30], ["猫"], "zh")["zh"]  # CER: characters, spaces removed
    assert characters.value == pytest.approx(100 * jiwer.cer("猫", "猫" * 30)) == pytest.approx(2900.0)
    metrics = compute_speech_metrics(INSERTION_HYPOTHESES, INSERTION_REFERENCES, ["asr"] * 3, ["en"] * 3, ["en"] * 3)
    assert metrics["wer_en"] == pytest.approx(100 * jiwer.wer(INSERTION_REFERENCES, INSERTION_HYPOTHESES))
    assert metrics["asr_avg_error"] == metrics["wer_en"]
    assert not [key for key in metrics if "cap" in key]  # nothing capped, nothing labelled as capped


def test_hypothesis_cap_is_opt_in_and_labelled():
    cap = HypothesisCap()
    assert len(cap.truncate(["w"] * 100, 20)) == 40  # 2 x reference
    assert len(cap.truncate(["w"] * 100, 3)) == 13  # reference + 10
    assert HypothesisCap(ratio=3.0, margin=0).limit(4) == 12
    reference = "one two three four five"
    runaway = " ".join([reference] * 20)  # 100 words
    uncapped = word_error_rate([runaway], [reference], "en")["en"]
    assert (uncapped.name, uncapped.errors, uncapped.num_capped, uncapped.hypothesis_cap) == ("wer", 95, 0, None)
    capped = word_error_rate([runaway], [reference], "en", hypothesis_cap=True)["en"]
    assert (capped.name, capped.errors, capped.num_capped) == ("wer_capped", 10, 1)  # 15 kept: 5 hits + 10 ins.
    assert capped.hypothesis_cap == cap
    assert word_error_rate(["猫" * 50], ["猫猫"], "zh", hypothesis_cap=cap)["zh"].errors == 10  # characters for CER
    assert word_error_rate(["猫" * 50], ["猫猫"], "zh")["zh"].errors == 48


def test_capped_metrics_come_with_their_label_next_to_the_plain_ones():
    metrics = compute_speech_metrics(
        [*INSERTION_HYPOTHESES, "猫" * 30],
        [*INSERTION_REFERENCES, "猫"],
        ["asr"] * 4,
        ["en"] * 3 + ["zh"],
        ["en"] * 3 + ["zh"],
        hypothesis_cap={"ratio": 2.0, "margin": 10},
    )
    assert metrics["wer_en"] == pytest.approx(100 * jiwer.wer(INSERTION_REFERENCES, INSERTION_HYPOTHESES))
    assert metrics["cer_zh"] == pytest.approx(2900.0)
    # Capped: 1 hit + 10 insertions; 6 hits + 10 insertions (16 of 30 words kept); one substitution.
    assert metrics["wer_capped_en"] == pytest.approx(100 * (10 + 10 + 1) / 9)
    assert metrics["cer_capped_zh"] == pytest.approx(1000.0)
    assert metrics["asr_avg_error"] == pytest.approx((metrics["wer_en"] + metrics["cer_zh"]) / 2)
    assert metrics["asr_avg_error_capped"] == pytest.approx((metrics["wer_capped_en"] + metrics["cer_capped_zh"]) / 2)
    assert (metrics["asr_capped_hypotheses"], metrics["asr_hypothesis_cap_ratio"]) == (3, 2.0)
    assert metrics["asr_hypothesis_cap_margin"] == 10


@pytest.mark.parametrize(
    "value, message",
    [(0.5, "hypothesis_cap=0.5"), ({"ratio": 0.5}, "ratio must be a number >= 1"),
     ({"margin": -1}, "margin must be an int >= 0"), ({"max_ratio": 2}, "hypothesis_cap=")],
)
def test_hypothesis_cap_errors_name_what_to_pass(value, message):
    with pytest.raises(ValueError, match=message):
        word_error_rate(["a"], ["a"], "en", hypothesis_cap=value)


def test_empty_reference_and_hypothesis():
    assert word_error_rate([""], ["a b"], "en")["en"].errors == 2
    rate = word_error_rate(["a"], ["[noise]"], "en")["en"]
    assert rate.errors == 1 and np.isnan(rate.value)


# --- BLEU --------------------------------------------------------------------------------------------------

HYPOTHESES = ["the cat sat on the mat today", "a dog is running in the park", "it is raining"]
REFERENCES = ["the cat sat on the mat", "a dog runs in the park", "it rains heavily"]


def test_bleu_equals_sacrebleu_13a():
    scores = bleu_by_direction(HYPOTHESES, REFERENCES, ["de"] * 3, ["en"] * 3)
    assert scores == {"de-en": pytest.approx(sacrebleu.corpus_bleu(HYPOTHESES, [REFERENCES], tokenize="13a").score)}


def test_bleu_tokenizer_per_target():
    assert bleu_tokenizer("en") == "13a" and bleu_tokenizer("zh") == "zh" and bleu_tokenizer("ja") == "char"
    assert bleu_tokenizer("ja", {"ja": "ja-mecab"}) == "ja-mecab"
    hypotheses, references = ["我喜欢猫。", "今天下雨"], ["我很喜欢猫。", "今天下大雨"]
    scores = bleu_by_direction(hypotheses, references, ["en", "en"], ["zh", "zh"])
    zh_score = sacrebleu.corpus_bleu(hypotheses, [references], tokenize="zh").score
    assert scores["en-zh"] == pytest.approx(zh_score)
    assert zh_score != sacrebleu.corpus_bleu(hypotheses, [references], tokenize="13a").score


def test_bleu_per_direction():
    scores = bleu_by_direction(HYPOTHESES, REFERENCES, ["de", "de", "fr"], ["en", "en", "en"])
    assert set(scores) == {"de-en", "fr-en"}
    assert scores["de-en"] == pytest.approx(sacrebleu.corpus_bleu(HYPOTHESES[:2], [REFERENCES[:2]]).score)


# --- compute_speech_metrics and the Trainer's compute_metrics ------------------------------------------------


def test_compute_speech_metrics_keys_and_averages():
    metrics = compute_speech_metrics(
        predictions=["the cat sit on mat", "猫坐垫子上", *HYPOTHESES, "hallo welt"],
        references=["the cat sat on the mat", "猫坐在垫子上", *REFERENCES, "hallo welt"],
        tasks=["asr", "asr", "s2tt", "s2tt", "s2tt", "mt"],
        source_languages=["en", "zh", "de", "de", "fr", "en"],
        target_languages=["en", "zh", "en", "en", "en", "de"],
    )
    assert metrics["wer_en"] == pytest.approx(100 * 2 / 6)
    assert metrics["cer_zh"] == pytest.approx(100 * 1 / 6)
    assert metrics["asr_avg_error"] == pytest.approx((metrics["wer_en"] + metrics["cer_zh"]) / 2)
    assert metrics["s2tt_avg_bleu"] == pytest.approx((metrics["bleu_de-en"] + metrics["bleu_fr-en"]) / 2)
    assert metrics["mt_bleu_en-de"] == pytest.approx(sacrebleu.corpus_bleu(["hallo welt"], [["hallo welt"]]).score)
    assert (metrics["asr_samples"], metrics["s2tt_samples"], metrics["mt_samples"]) == (2, 3, 1)
    assert not [key for key in metrics if "capped" in key]


@pytest.mark.parametrize(
    "tasks, sources, targets, message",
    [
        (["asr"], ["de"], ["en"], "source_language 'de' != target_language 'en'"),
        (["tts"], ["de"], ["de"], "task 'tts'"),
        (["asr", "asr"], ["de"], ["de"], "one entry per sample"),
    ],
)
def test_compute_speech_metrics_rejects_bad_labels(tasks, sources, targets, message):
    with pytest.raises(ValueError, match=message):
        compute_speech_metrics(["x"], ["x"], tasks, sources, targets)


def test_compute_speech_metrics_scores_mixed_tasks_per_language():
    references = ["the cat sat on the mat", "hallo welt", "hello world"]
    metrics = compute_speech_metrics(
        ["the cat sit on mat", "hallo welt", "hello world"],
        references,
        ["asr", "asr", "s2tt"],
        ["en", "de", "de"],
        ["en", "de", "en"],
    )
    assert metrics["wer_en"] == pytest.approx(100 * 2 / 6) and metrics["wer_de"] == 0.0


# --- evaluate modules ----------------------------------------------------------------------------------------


def test_evaluate_load_from_local_path():
    part_wer = evaluate.load(evaluate_metric_path("part_wer"))
    result = part_wer.compute(
        predictions=["the cat sit on mat", "猫坐垫子上"],
        references=["The cat sat on the mat.", "猫坐在垫子上"],
        languages=["en", "zh"],
    )
    assert result["wer_en"] == pytest.approx(100 * 2 / 6) and result["cer_zh"] == pytest.approx(100 / 6)
    runaway = part_wer.compute(
        predictions=INSERTION_HYPOTHESES[:1], references=INSERTION_REFERENCES[:1], languages=["en"]
    )
    assert runaway == {"wer_en": pytest.approx(2900.0), "asr_avg_error": pytest.approx(2900.0), "asr_samples": 1}
    capped = part_wer.compute(
        predictions=INSERTION_HYPOTHESES[:1], references=INSERTION_REFERENCES[:1], languages=["en"], hypothesis_cap=True
    )
    assert (capped["wer_en"], capped["wer_capped_en"], capped["asr_capped_hypotheses"]) == (2900.0, 1000.0, 1)
    part_bleu = evaluate.load(evaluate_metric_path("part_bleu"))
    result = part_bleu.compute(
        predictions=HYPOTHESES, references=REFERENCES, source_languages=["de"] * 3, target_languages=["en"] * 3
    )
    assert result["bleu_de-en"] == pytest.approx(sacrebleu.corpus_bleu(HYPOTHESES, [REFERENCES]).score)
    with pytest.raises(ValueError, match="available: \\['part_bleu', 'part_wer'\\]"):
        evaluate_metric_path("wer")
