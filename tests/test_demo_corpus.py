"""Tests for the synthetic demo corpus (examples/demo): determinism, split hygiene, audio, exact translations, Pico
training voices and augmentation."""

from __future__ import annotations

import io
import json
import random
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root holds `examples/`

pytest.importorskip("espeakng_loader", reason="the demo corpus needs the `demo` extra (espeakng-loader)")
pytest.importorskip("num2words")
pytest.importorskip("babel")

import soundfile  # noqa: E402

from examples.demo import augment  # noqa: E402
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


# Pico training speakers and augmentation (`train_pico_share`, `train_augment_share`)

RATE = 16_000


def _tone(frequency: float, seconds: float = 1.0, amplitude: float = 0.5) -> np.ndarray:
    return (amplitude * np.sin(2 * np.pi * frequency * np.arange(round(seconds * RATE)) / RATE)).astype(np.float32)


def _peak_frequency(audio: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(len(audio))))
    return float(np.fft.rfftfreq(len(audio), 1 / RATE)[np.argmax(spectrum)])


def _band_energy(audio: np.ndarray, low: float, high: float) -> float:
    power = np.abs(np.fft.rfft(audio.astype(np.float64))) ** 2
    frequencies = np.fft.rfftfreq(len(audio), 1 / RATE)
    return float(power[(frequencies >= low) & (frequencies < high)].sum())


def test_speed_perturbation_scales_duration_and_pitch():
    tone = _tone(200.0)
    faster, slower = augment.change_speed(tone, 1.1), augment.change_speed(tone, 0.9)
    assert len(faster) == round(RATE / 1.1) and len(slower) == round(RATE / 0.9)
    assert _peak_frequency(faster) == pytest.approx(220.0, abs=2.0)  # pitch and formants move with the speed
    assert _peak_frequency(slower) == pytest.approx(180.0, abs=2.0)
    assert np.sqrt(np.mean(faster**2)) == pytest.approx(np.sqrt(np.mean(tone**2)), rel=0.02)  # same level
    # band-limited: a tone near Nyquist sped up does not fold back into the band
    high = augment.change_speed(_tone(7800.0), 1.1)
    assert _band_energy(high, 0, 7000) < 1e-6 * _band_energy(_tone(7800.0), 0, 8001)
    assert augment.change_speed(tone, 1.0).tolist() == tone.tolist()


def test_band_limiting_removes_energy_outside_the_band():
    noise = np.random.default_rng(0).standard_normal(RATE).astype(np.float32) * 0.1
    telephone = augment.band_limit(noise, "telephone")
    assert len(telephone) == len(noise)
    total = _band_energy(noise, 0, 8001)
    assert _band_energy(telephone, 0, 290) < 1e-6 * total and _band_energy(telephone, 3410, 8001) < 1e-6 * total
    assert _band_energy(telephone, 300, 3400) == pytest.approx(_band_energy(noise, 300, 3400), rel=1e-3)
    lowpass = augment.band_limit(noise, "lowpass", cutoff=4500.0)
    assert _band_energy(lowpass, 4510, 8001) < 1e-6 * total
    assert _band_energy(lowpass, 0, 4500) == pytest.approx(_band_energy(noise, 0, 4500), rel=1e-3)
    with pytest.raises(ValueError, match="'telephone' or 'lowpass'"):
        augment.band_limit(noise, "radio")


@pytest.mark.parametrize("color", ["white", "pink"])
def test_noise_hits_the_requested_snr(color):
    speech = _tone(300.0, 2.0) * np.repeat(np.random.default_rng(1).uniform(0, 1, 20), RATE // 10).astype(np.float32)
    for snr_db in (10.0, 20.0, 30.0):
        noisy = augment.add_noise(speech, snr_db, color, np.random.default_rng(2))
        added = noisy.astype(np.float64) - speech
        measured = 10 * np.log10(np.mean(speech.astype(np.float64) ** 2) / np.mean(added**2))
        assert measured == pytest.approx(snr_db, abs=0.5)
    noise = augment.noise_signal(4 * RATE, color, np.random.default_rng(3))
    low, high = _band_energy(noise, 100, 200), _band_energy(noise, 4000, 4100)  # equal widths
    assert (low / high > 10) if color == "pink" else (0.5 < low / high < 2)  # pink: power ~ 1/f


def test_reverberation_adds_a_decaying_tail():
    click = np.zeros(RATE // 2, dtype=np.float32)
    click[100] = 0.5
    rt60 = 0.4
    wet = augment.reverberate(click, rt60, 0.5, np.random.default_rng(0))
    tail = round(rt60 * RATE)
    assert len(wet) == len(click) + tail - 1  # the tail rings on after the clip
    assert wet[100] != 0 and np.abs(wet[101 : 101 + tail - 1]).max() > 0
    window = RATE // 50  # 20 ms windows at the start and the end of the response
    start = np.mean(wet[101 : 101 + window].astype(np.float64) ** 2)
    end = np.mean(wet[100 + tail - window : 100 + tail].astype(np.float64) ** 2)
    assert 45 < 10 * np.log10(start / end) < 70  # about 60 dB down after rt60
    response = augment.impulse_response(rt60, np.random.default_rng(0))
    assert np.sum(response**2) == pytest.approx(1.0)


def test_augmentation_is_deterministic_for_its_seed_and_keeps_the_peak():
    speech = _tone(250.0, 1.0, amplitude=0.98)
    every = augment.Augmentation(speed=1.07, rt60=0.3, wet=0.4, band="lowpass", cutoff=5000.0, snr_db=10.0,
                                 noise="pink", seed=7)  # fmt: skip
    assert every.effects == augment.EFFECTS
    first, again = augment.apply_augmentation(speech, every), augment.apply_augmentation(speech, every)
    assert first.dtype == np.float32 and first.tobytes() == again.tobytes()
    other = augment.apply_augmentation(speech, replace(every, seed=8))
    assert other.tobytes() != first.tobytes()
    assert np.abs(first).max() <= augment.PEAK + 1e-6  # scaled down, not clipped
    draws = [augment.draw_augmentation(random.Random(f"draw/{i}")) for i in range(300)]
    assert draws[:5] == [augment.draw_augmentation(random.Random(f"draw/{i}")) for i in range(5)]
    assert {len(draw.effects) for draw in draws} == {1, 2}
    assert {effect for draw in draws for effect in draw.effects} == set(augment.EFFECTS)
    for draw in draws:
        assert draw.speed == 1.0 or 0.9 <= draw.speed <= 1.1
        assert draw.rt60 == 0.0 or (0.2 <= draw.rt60 <= 0.6 and 0.2 <= draw.wet <= 0.5)
        assert draw.snr_db is None or 10 <= draw.snr_db <= 30
        assert draw.band != "lowpass" or 4000 <= draw.cutoff <= 6000
    with pytest.raises(ValueError, match="speed 3"):
        augment.Augmentation(speed=3)
    with pytest.raises(ValueError, match="'white' or 'pink'"):
        augment.Augmentation(snr_db=10, noise="brown")


def test_augmented_request_renders_deterministically():
    request = SpeechRequest("We need seven milliliters.", "en-us", gain=0.9, noise_level=1e-4, seed=5)
    augmented = replace(request, augmentation=augment.Augmentation(speed=1.1, snr_db=20.0, seed=1))
    first = list(synthesize_batch([request, augmented], num_workers=1, shard_size=1, progress=False))
    again = list(synthesize_batch([augmented], num_workers=1, shard_size=1, progress=False))
    assert first[1] == again[0] and first[1] != first[0]
    assert first[1][1] == pytest.approx(first[0][1] / 1.1, abs=1)  # 10% shorter


def test_training_voice_plan_at_the_default_size():
    plan = corpus_module.plan_utterances(LANGUAGES, 500, 40, 40, seed=0)
    assert corpus_module.plan_training_voices(plan, 0) == plan  # both shares 0: unchanged
    voices = corpus_module.plan_training_voices(plan, 0, train_pico_share=0.3, train_augment_share=0.5)
    augmented_only = corpus_module.plan_training_voices(plan, 0, train_augment_share=0.5)
    assert len(voices) == len(plan)
    held_out = set(corpus_module.TEST_SPEAKERS) | set(corpus_module.PICO_SPEAKERS)
    for before, after, alone in zip(plan, voices, augmented_only):
        assert (after.split, after.index, after.language, after.text) == (before.split, before.index, before.language,
                                                                          before.text)  # fmt: skip
        if after.split == "test":
            assert after == before
        if after.request.engine == "pico":
            assert after.split in ("train", "dev") and after.language in corpus_module.PICO_VOICES
            assert after.request.voice == corpus_module.PICO_VOICES[after.language]
            assert after.request.text == before.request.text
            speaker = corpus_module.PICO_TRAIN_SPEAKERS[after.speaker]
            assert speaker.rate[0] <= after.request.rate <= speaker.rate[1]
            assert speaker.pitch[0] <= after.request.pitch <= speaker.pitch[1]
        else:
            assert after.request.voice == before.request.voice and not after.speaker
        if after.split != "test":  # no held-out voice, of either engine
            name = after.speaker or corpus_module.speaker_name(corpus_module.speaker_of(after.request))
            assert name not in held_out
        assert after.request.augmentation == alone.request.augmentation  # its own stream: the same with or without Pico
        assert alone.request.augmentation is None or alone.split == "train"
    for split, per_language in (("train", 500), ("dev", 40)):
        for language in LANGUAGES:
            group = [u for u in voices if u.split == split and u.language == language]
            pico = sum(u.request.engine == "pico" for u in group)
            assert pico == (round(0.3 * per_language) if language in corpus_module.PICO_VOICES else 0)
            augmented = sum(u.request.augmentation is not None for u in group)
            assert augmented == (250 if split == "train" else 0)
    assert {u.speaker for u in voices if u.request.engine == "pico"} == set(corpus_module.PICO_TRAIN_SPEAKERS)
    # the training Pico speakers' rate-by-pitch ranges overlap no held-out one's
    for train in corpus_module.PICO_TRAIN_SPEAKERS.values():
        for test in corpus_module.PICO_SPEAKERS.values():
            assert train.rate[1] < test.rate[0] or test.rate[1] < train.rate[0] or \
                train.pitch[1] < test.pitch[0] or test.pitch[1] < train.pitch[0]  # fmt: skip
    with pytest.raises(ValueError, match="train_pico_share is a share"):
        corpus_module.plan_training_voices(plan, 0, train_pico_share=1.5)
    with pytest.raises(ValueError, match="train_augment_share is a share"):
        corpus_module.build_corpus("unused", progress=False, train_augment_share=-0.1)


@pytest.mark.slow  # builds corpora in worker processes
def test_shares_zero_give_the_same_corpus(builds):
    first, _, _, root = builds
    patch = pytest.MonkeyPatch()
    patch.setattr(corpus_module, "SHARD_SIZE", 16)  # as the fixture built `first`
    try:
        zero = corpus_module.build_corpus(root / "zero", seed=0, progress=False, train_pico_share=0.0,
                                          train_augment_share=0.0, **TINY)  # fmt: skip
    finally:
        patch.undo()
    assert list(zero) == list(first)
    for split in first:
        assert zero[split].to_dict() == first[split].to_dict()
    assert (root / "zero" / "demo_corpus.json").read_text() == (root / "a" / "demo_corpus.json").read_text()


@pytest.mark.slow  # builds a corpus in worker processes
def test_pico_training_voices_and_augmentation_keep_the_voice_split(builds):
    pytest.importorskip("py_nanotts", reason="Pico's training voices need the `demo` extra (py-nanotts)")
    first, _, _, root = builds
    patch = pytest.MonkeyPatch()
    patch.setattr(corpus_module, "SHARD_SIZE", 16)
    arguments = dict(seed=0, progress=False, other_engine_test=True, train_pico_share=0.5, train_augment_share=0.5,
                     **TINY)  # fmt: skip
    try:
        corpus = corpus_module.build_corpus(root / "voices", **arguments)
        # the same arguments load it again (its config, speakers' ranges included, reads back equal), no synthesis
        patch.setattr(corpus_module, "synthesize_batch", lambda *args, **kwargs: pytest.fail("synthesised again"))
        reused = corpus_module.build_corpus(root / "voices", reuse_existing=True, **arguments)
    finally:
        patch.undo()
    assert reused["train"].to_dict() == corpus["train"].to_dict()
    held_out = set(corpus_module.TEST_SPEAKERS) | set(corpus_module.PICO_SPEAKERS)
    for split in ("train", "dev"):
        speakers = [s for s in corpus[split]["speaker"] if s]
        assert not {corpus_module.speaker_name(s) for s in speakers} & held_out, split
        pico = [s for s in speakers if corpus_module.engine_of(s) == "pico"]
        assert pico and {corpus_module.speaker_name(s) for s in pico} <= set(corpus_module.PICO_TRAIN_SPEAKERS)
        assert {s.partition("/")[0] for s in pico} <= {"en-US", "de-DE"}  # Pico's voices of TINY's languages
        assert sorted(corpus[split]["id"]) == sorted(first[split]["id"])  # the same rows, mt ones included
    assert corpus["test"].to_dict() == first["test"].to_dict()  # the test split is the same bytes
    assert {corpus_module.speaker_name(s) for s in corpus[corpus_module.PICO_TEST_SPLIT]["speaker"]} == set(
        corpus_module.PICO_SPEAKERS
    )
    for row in corpus["train"]:
        if row["audio"] is None:
            continue
        audio, rate = _decode(row)
        assert rate == 16_000 and len(audio) / rate == pytest.approx(row["duration"], abs=1e-9)
        assert np.sqrt(np.mean(audio**2)) > 0.005, row["id"]
        assert np.mean(np.abs(audio) > 0.999) < 0.001, row["id"]
    config = json.loads((root / "voices" / "demo_corpus.json").read_text())
    assert config["train_pico_share"] == 0.5 and config["train_augment_share"] == 0.5
    assert set(config["pico_train_speakers"]) == set(corpus_module.PICO_TRAIN_SPEAKERS)
    assert "train_pico_share" not in json.loads((root / "a" / "demo_corpus.json").read_text())
    # half of the 8 train items of en and de, and of the 3 dev items (round(1.5) = 2): utterances per engine
    summary = corpus_module.summarize(corpus)
    assert "pico 8 utterances" in summary.split("\ndev:")[0] and "pico 4 utterances" in summary.split("\ndev:")[1]
