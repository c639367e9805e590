"""Tests for the synthetic demo corpus (examples/demo): determinism, split hygiene, audio and exact translations."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root holds `examples/`

pytest.importorskip("espeakng_loader", reason="the demo corpus needs the `demo` extra (espeakng-loader)")
pytest.importorskip("num2words")
pytest.importorskip("babel")

import soundfile  # noqa: E402

from examples.demo import corpus as corpus_module  # noqa: E402
from examples.demo.numerals import ja_day_of_month, zh_cardinal  # noqa: E402
from examples.demo.texts import LANGUAGES, SemanticItem, make_item_splits, render, spoken_text  # noqa: E402
from examples.demo.tts import (  # noqa: E402
    EspeakError,
    EspeakSynthesizer,
    PicoError,
    PicoSynthesizer,
    SpeechRequest,
    render_request,
    synthesize_batch,
)

TINY = dict(languages=["en", "de", "zh", "ja"], train_items_per_language=8, dev_items=3, test_items=3)


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    """Two builds with seed 0 (2 workers vs 1, several shards) and one with seed 1."""
    patch = pytest.MonkeyPatch()
    patch.setattr(corpus_module, "SHARD_SIZE", 16)  # several worker processes even for a tiny corpus
    root = tmp_path_factory.mktemp("demo_corpus")
    try:
        first = corpus_module.build_corpus(root / "a", seed=0, num_workers=2, progress=False, **TINY)
        again = corpus_module.build_corpus(root / "b", seed=0, num_workers=1, progress=False, **TINY)
        other = corpus_module.build_corpus(root / "c", seed=1, num_workers=2, progress=False, **TINY)
    finally:
        patch.undo()
    return first, again, other, root


def _decode(row) -> tuple[np.ndarray, int]:
    return soundfile.read(io.BytesIO(row["audio"]["bytes"]), dtype="float32")


@pytest.mark.slow  # builds corpora in worker processes
def test_same_seed_gives_identical_corpus(builds):
    first, again, _, _ = builds
    assert list(first) == ["train", "dev", "test"]
    for split in first:
        assert first[split].to_dict() == again[split].to_dict()  # texts, ids, speakers and audio bytes


@pytest.mark.slow  # builds corpora in worker processes
def test_other_seed_gives_other_corpus(builds):
    first, _, other, _ = builds
    assert set(first["train"]["source_text"]) != set(other["train"]["source_text"])
    audio_a = [row["bytes"] for row in first["train"]["audio"] if row]
    audio_b = [row["bytes"] for row in other["train"]["audio"] if row]
    assert audio_a != audio_b


@pytest.mark.slow  # builds corpora in worker processes
def test_splits_share_no_item(builds):
    corpus = builds[0]
    texts = {split: set(corpus[split]["source_text"]) | set(corpus[split]["text"]) for split in corpus}
    assert not texts["train"] & texts["test"]
    assert not texts["train"] & texts["dev"]
    assert not texts["dev"] & texts["test"]
    # At the default size, on the semantic content itself (23 EUR in "price" counts as 23 EUR in "amount").
    splits = make_item_splits(LANGUAGES, 500, 40, 40, seed=0)
    held_out = {item.content for item in splits.dev + splits.test}
    assert len(held_out) == 80
    assert not any(item.content in held_out for items in splits.train.values() for item in items)


@pytest.mark.slow  # builds corpora in worker processes
def test_rows_per_task_and_language(builds):
    corpus = builds[0]
    for split, dataset in corpus.items():
        rows = dataset.to_list()
        by_id = {row["id"]: row for row in rows}
        for language in TINY["languages"]:
            assert any(r["task"] == "asr" and r["source_language"] == language for r in rows), (split, language)
        for row in rows:
            if row["task"] == "asr":
                assert row["source_text"] == row["text"] and row["target_language"] == row["source_language"]
            else:
                assert row["source_language"] != "en" and row["target_language"] == "en"
            if row["task"] == "mt":
                assert row["audio"] is None and row["duration"] == 0.0
            else:
                assert row["audio"]["bytes"] and row["duration"] > 0
        if split != "train":  # dev/test items are spoken in every language: the s2tt target is the English text
            for row in rows:
                if row["task"] == "s2tt":
                    english = by_id[row["id"].replace(f"-{row['source_language']}-s2tt", "-en-asr")]
                    assert row["text"] == english["text"]


@pytest.mark.slow  # builds corpora in worker processes
def test_audio_is_valid_speech(builds):
    for split, dataset in builds[0].items():
        for row in dataset:
            if row["audio"] is None:
                continue
            audio, rate = _decode(row)
            assert rate == 16_000 and audio.ndim == 1
            assert len(audio) / rate == pytest.approx(row["duration"], abs=1e-9)
            assert 0.3 < row["duration"] < 6.0
            assert np.isfinite(audio).all()
            assert np.sqrt(np.mean(audio**2)) > 0.01, row["id"]  # not silent
            assert np.mean(np.abs(audio) > 0.999) < 0.001, row["id"]  # not clipped
            assert np.std(audio) > 0.005 and len(np.unique(audio)) > 100


@pytest.mark.slow  # builds corpora in worker processes
def test_test_split_is_spoken_by_held_out_speakers(builds):
    corpus = builds[0]
    speakers = {split: {corpus_module.speaker_name(s) for s in corpus[split]["speaker"] if s} for split in corpus}
    assert speakers["test"] and speakers["test"] <= set(corpus_module.TEST_SPEAKERS)
    assert not (speakers["train"] | speakers["dev"]) & set(corpus_module.TEST_SPEAKERS)
    # At the default size: every held-out speaker is heard in the test split only, every other speaker in training,
    # each utterance with the rate and pitch ranges of its speaker.
    plan = corpus_module.plan_utterances(LANGUAGES, 500, 40, 40, seed=0)
    by_split: dict[str, set[str]] = {}
    for utterance in plan:
        name = corpus_module.speaker_name(corpus_module.speaker_of(utterance.request))
        by_split.setdefault(utterance.split, set()).add(name)
        speaker = corpus_module.SPEAKERS[name]
        assert speaker.rate[0] <= utterance.request.rate <= speaker.rate[1]
        assert speaker.pitch[0] <= utterance.request.pitch <= speaker.pitch[1]
    assert by_split["test"] == set(corpus_module.TEST_SPEAKERS)
    assert by_split["train"] == set(corpus_module.TRAIN_SPEAKERS) >= by_split["dev"]


def test_translations_are_exact():
    twenty_three_euros = SemanticItem("amount", (23, "EUR"))
    assert render(twenty_three_euros, "en") == "twenty-three euros"
    assert render(twenty_three_euros, "de") == "dreiundzwanzig Euro"
    assert render(twenty_three_euros, "fr") == "vingt-trois euros"
    assert render(twenty_three_euros, "zh") == "二十三欧元"
    assert render(twenty_three_euros, "ja") == "にじゅうさん ユーロ"
    assert render(SemanticItem("amount", (23, "RUB")), "ru") == "двадцать три российских рубля"
    today = SemanticItem("today", (0, 5, 5))  # Monday, 5 May
    assert render(today, "en") == "Today is Monday, the fifth of May."
    assert render(today, "de") == "Heute ist Montag, der fünfte Mai."
    assert render(today, "ru") == "Сегодня понедельник, пятое мая."
    assert render(today, "zh") == "今天是五月五日，星期一。"
    assert render(today, "ja") == "きょうは ごがつ いつか げつようび です。"
    price = SemanticItem("price", (21, "USD"))  # agreement: veintiún, двадцать один доллар
    assert render(price, "es") == "El precio es de veintiún dólares estadounidenses."
    assert render(price, "ru") == "Цена составляет двадцать один доллар США."
    assert render(SemanticItem("train", (2, 0)), "zh") == "火车两点出发。"
    assert render(today, "ja").startswith("きょうは") and spoken_text(today, "ja").startswith("きょうわ")


def test_cjk_number_readings():
    expected = {
        10: "十", 15: "十五", 23: "二十三", 101: "一百零一", 110: "一百一十", 1001: "一千零一",
        1010: "一千零一十", 2024: "两千零二十四", 10500: "一万零五百", 11000: "一万一千", 100000: "十万",
    }  # fmt: skip
    assert {number: zh_cardinal(number) for number in expected} == expected
    assert zh_cardinal(2, measure=True) == "两" and zh_cardinal(2) == "二"
    assert [ja_day_of_month(day) for day in (1, 4, 14, 17, 20, 24, 29)] == [
        "ついたち", "よっか", "じゅうよっか", "じゅうしちにち", "はつか", "にじゅうよっか", "にじゅうくにち",
    ]  # fmt: skip


@pytest.mark.slow  # builds corpora in worker processes
def test_reuse_existing_and_refuse_foreign_directory(builds, tmp_path):
    first, _, _, root = builds
    patch = pytest.MonkeyPatch()
    patch.setattr(corpus_module, "SHARD_SIZE", 16)  # the shard size is part of the stored arguments
    try:
        reused = corpus_module.build_corpus(root / "a", seed=0, progress=False, reuse_existing=True, **TINY)
    finally:
        patch.undo()
    assert reused["test"].to_dict() == first["test"].to_dict()
    (tmp_path / "notes.txt").write_text("not a corpus")
    with pytest.raises(FileExistsError, match="not empty"):
        corpus_module.build_corpus(tmp_path, progress=False, **TINY)


def test_clear_errors():
    with pytest.raises(EspeakError, match="'xx'"):
        EspeakSynthesizer().set_voice("xx")
    with pytest.raises(EspeakError, match="variant 'nope'"):
        EspeakSynthesizer().set_voice("de+nope")
    with pytest.raises(ValueError, match="choose languages from"):
        corpus_module.plan_utterances(["en", "tlh"], 1, 1, 1, seed=0)


def test_pico_engine_is_deterministic_16khz_speech():
    pytest.importorskip("py_nanotts", reason="the Pico engine needs the `demo` extra (py-nanotts)")
    request = SpeechRequest("Heute ist Freitag, der zwanzigste März.", "de-DE", rate=160, pitch=60, gain=0.8,
                            lead_silence=0.1, trail_silence=0.2, noise_level=1e-4, seed=3, engine="pico")  # fmt: skip
    other = SpeechRequest("We need seven milliliters.", "en-US", rate=190, pitch=45, engine="pico")
    # in worker processes, in two orders and shardings: the same bytes for the same request
    first = list(synthesize_batch([request, other, request], num_workers=2, shard_size=2, progress=False))
    again = list(synthesize_batch([other, request], num_workers=1, shard_size=8, progress=False))
    assert first[0] == first[2] == again[1] and first[1] == again[0]
    audio, rate = soundfile.read(io.BytesIO(first[0][0]), dtype="float32")
    assert rate == 16_000 and len(audio) == first[0][1]
    assert np.sqrt(np.mean(audio**2)) > 0.01 and np.mean(np.abs(audio) > 0.999) < 0.001
    assert np.abs(audio[: int(0.1 * rate) - 10]).max() < 0.01  # the lead silence is noise floor only
    with pytest.raises(PicoError, match="no voice 'ru-RU'"):
        render_request(PicoSynthesizer(), SpeechRequest("Привет", "ru-RU", engine="pico"))
    with pytest.raises(PicoError, match="pitch 2.40, outside"):
        render_request(PicoSynthesizer(), SpeechRequest("Hello", "en-US", pitch=120, engine="pico"))


def test_missing_pico_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "py_nanotts", None)  # import fails as if it were not installed
    with pytest.raises(PicoError, match=r"pip install -e '\.\[demo\]'"):
        list(synthesize_batch([SpeechRequest("Hello", "en-US", engine="pico")], progress=False))
    with pytest.raises(ValueError, match="Unknown speech engines"):
        list(synthesize_batch([SpeechRequest("Hello", "en-US", engine="festival")], progress=False))


@pytest.mark.slow  # builds a corpus in worker processes
def test_pico_test_split_repeats_the_test_items_and_leaves_the_espeak_splits_unchanged(builds):
    pytest.importorskip("py_nanotts", reason="the Pico split needs the `demo` extra (py-nanotts)")
    first, _, _, root = builds
    patch = pytest.MonkeyPatch()
    patch.setattr(corpus_module, "SHARD_SIZE", 16)  # as the fixture built `first`
    try:
        corpus = corpus_module.build_corpus(root / "pico", seed=0, progress=False, other_engine_test=True, **TINY)
    finally:
        patch.undo()
    split = corpus_module.PICO_TEST_SPLIT
    assert list(corpus) == ["train", "dev", "test", split]
    for name in ("train", "dev", "test"):  # the same texts, ids, speakers and audio bytes as without the Pico split
        assert corpus[name].to_dict() == first[name].to_dict()
    pico, test = corpus[split].to_dict(), first["test"].to_dict()
    # every (espeak) test asr/s2tt row of a language Pico speaks (en, de of TINY), once per Pico speaker; no mt rows
    expected = sorted(
        (row_id.replace("test-", f"{split}-").replace(f"-{task}", f"-{name}-{task}"), task, reference)
        for row_id, task, language, reference in zip(test["id"], test["task"], test["source_language"], test["text"])
        if task != "mt" and language in ("en", "de")
        for name in corpus_module.PICO_SPEAKERS
    )
    assert sorted(zip(pico["id"], pico["task"], pico["text"])) == expected
    assert {corpus_module.speaker_name(s) for s in pico["speaker"]} == set(corpus_module.PICO_SPEAKERS)
    assert {s.partition("/")[0] for s in pico["speaker"]} == {"en-US", "de-DE"}
    for row in corpus[split]:
        audio, rate = _decode(row)
        assert rate == 16_000 and len(audio) / rate == pytest.approx(row["duration"], abs=1e-9)
        assert np.sqrt(np.mean(audio**2)) > 0.01 and np.mean(np.abs(audio) > 0.999) < 0.001, row["id"]
    espeak_audio = {row["bytes"] for row in first["test"]["audio"] if row}
    assert not espeak_audio & {row["bytes"] for row in pico["audio"]}
    plan = corpus_module.plan_utterances(LANGUAGES, 500, 40, 40, seed=0)
    plan = corpus_module.plan_pico_test([u for u in plan if u.split == "test"], seed=0)
    # at the default size: 40 items x 2 speakers in each of en, de, fr, es, it, with the speakers' ranges
    assert len(plan) == 40 * 2 * 5 and {u.language for u in plan} == {"en", "de", "fr", "es", "it"}
    for utterance in plan:
        speaker = corpus_module.PICO_SPEAKERS[utterance.speaker]
        assert speaker.rate[0] <= utterance.request.rate <= speaker.rate[1]
        assert speaker.pitch[0] <= utterance.request.pitch <= speaker.pitch[1]
