"""Long recordings: chunks cut at pauses, the word-level merge of overlapping windows, the pipeline's
chunk_length_s / batch_size / return_timestamps for ASR and S2TT, long test files in the evaluation helpers, and
training samples longer than the model takes (an error, or an explicit drop counted per component)."""

import itertools
import random

import numpy as np
import pytest
import torch
from datasets import Audio, Dataset

from modeling_part import PartSpeechRecognitionPipeline
from modeling_part.long_form import Chunk, chunk_timestamps, join_texts, merge_chunk_texts, plan_chunks
from modeling_part.tiny import build_tiny_part
from trainers.data import AudioLengthValidator, InvalidSampleError, MixtureComponent, MixtureDataset, audio_seconds
from trainers.evaluation import evaluate_speech_to_text, generate_predictions

from conftest import make_audio
from part_fixtures import tiny_trainer, wav_bytes

RATE = 16000
SEGMENTS = [4.0, 6.0, 3.0, 7.0, 5.0, 2.5, 6.5, 3.0]  # seconds of speech between pauses
PAUSE = 0.6


def recording(segments=SEGMENTS, pause=PAUSE, noise=0.0):
    """Speech-like segments with `pause` seconds of silence (plus optional noise) before each; returns the
    waveform and each segment's (start, end) in seconds."""
    rng = np.random.default_rng(1)
    parts, spans, position = [], [], 0
    for index, seconds in enumerate(segments):
        silence = (noise * rng.standard_normal(int(pause * RATE))).astype(np.float32)
        speech = make_audio(seconds, seed=index)
        parts += [silence, speech]
        position += len(silence)
        spans.append((position / RATE, (position + len(speech)) / RATE))
        position += len(speech)
    return np.concatenate(parts), spans


@pytest.mark.parametrize("noise", [0.0, 0.002])
def test_chunks_are_cut_inside_pauses_and_hold_whole_segments(noise):
    waveform, spans = recording(noise=noise)
    chunks = plan_chunks(waveform, chunk_length_s=12)
    assert len(chunks) >= 4
    for chunk in chunks:
        assert chunk.overlap == 0 and (chunk.end - chunk.start) / RATE <= 12
    for earlier, later in zip(chunks, chunks[1:]):
        assert earlier.end <= later.start
    # every segment lies whole inside one chunk: no cut falls in speech
    for start, end in spans:
        holders = [c for c in chunks if c.start / RATE <= start + 0.02 and end - 0.02 <= c.end / RATE]
        assert len(holders) == 1, (start, end, chunks)
    # and the chunks keep only a little of each pause (padding), not the silence itself
    assert chunks[0].start / RATE == pytest.approx(spans[0][0] - 0.1, abs=0.03)
    assert chunks[-1].end / RATE == pytest.approx(spans[-1][1], abs=0.13)


def test_without_pauses_windows_overlap_by_the_stride_and_cover_the_recording():
    waveform = make_audio(40.0)
    chunks = plan_chunks(waveform, chunk_length_s=10, stride_length_s=(1.5, 0.5))
    assert chunks[0].start == 0 and chunks[-1].end == len(waveform)
    assert all(c.end - c.start <= 10 * RATE for c in chunks)
    assert [c.overlap for c in chunks[1:]] == [2 * RATE] * (len(chunks) - 1)
    timestamps = chunk_timestamps(chunks)
    assert timestamps[0][0] == 0.0 and timestamps[-1][1] == 40.0
    assert all(a[1] == b[0] for a, b in zip(timestamps, timestamps[1:]))  # windows meet mid-overlap
    # a short recording is one chunk, untouched; silence alone has no chunk
    assert plan_chunks(make_audio(5.0), chunk_length_s=10) == [Chunk(0, 5 * RATE)]
    assert plan_chunks(np.zeros(40 * RATE, np.float32), chunk_length_s=10) == []
    with pytest.raises(ValueError, match="stride_length_s"):
        plan_chunks(waveform, chunk_length_s=10, stride_length_s=5)


def _window_transcripts(words, chunks, seconds_per_word, garble):
    """What a model would write for each window: the words whose middle falls in it, with a garbled word at each
    edge cut through a word (the `garble` flag)."""
    texts = []
    for index, chunk in enumerate(chunks):
        start, end = chunk.start / RATE, chunk.end / RATE
        inside = [w for i, w in enumerate(words) if start <= (i + 0.5) * seconds_per_word < end]
        if garble and index > 0:
            inside = ["uh" + inside[0][1:]] + inside[1:]
        if garble and index < len(chunks) - 1:
            inside = inside[:-1] + [inside[-1][:2] + "-"]
        texts.append(" ".join(inside))
    return texts


@pytest.mark.parametrize("garble", [False, True])
@pytest.mark.parametrize("seed", range(4))
def test_overlap_merge_loses_and_doubles_no_word(seed, garble):
    rng = random.Random(seed)
    vocabulary = ["the", "today", "is", "monday", "we", "need", "two", "liters", "of", "milk", "and", "bread"]
    words = [rng.choice(vocabulary) + ("," if rng.random() < 0.1 else "") for _ in range(150)]
    seconds_per_word = 0.4
    chunks = plan_chunks(make_audio(150 * seconds_per_word), chunk_length_s=10, stride_length_s=1.5)
    assert all(c.overlap for c in chunks[1:])
    texts = _window_transcripts(words, chunks, seconds_per_word, garble)
    merged = join_texts(merge_chunk_texts(texts, chunks))
    assert merged == " ".join(words)


def test_merge_of_characters_and_chunks_cut_at_pauses():
    # Chinese: no spaces; units are characters
    chunks = [Chunk(0, 6 * RATE), Chunk(4 * RATE, 10 * RATE, 2 * RATE)]
    texts = ["今天是星期三我们需要两升", "星期三我们需要两升牛奶和面包"]
    parts = merge_chunk_texts(texts, chunks)
    assert join_texts(parts) == "今天是星期三我们需要两升牛奶和面包"
    # cut at a pause: nothing removed, texts joined with a space
    chunks = [Chunk(0, 6 * RATE), Chunk(7 * RATE, 10 * RATE)]
    assert merge_chunk_texts(["we need two", "two liters"], chunks) == ["we need two", "two liters"]
    assert join_texts(["we need two", "", "two liters"]) == "we need two two liters"
    with pytest.raises(ValueError, match="one per chunk"):
        merge_chunk_texts(["a"], chunks)


@pytest.fixture(scope="module")
def long_form_part():
    """A tiny PART model with large random weights, so that its outputs differ from chunk to chunk."""
    torch.manual_seed(0)
    model, processor = build_tiny_part("sensevoice")
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() > 1:
                parameter.normal_(0, 0.3)
    return model.eval(), processor


def _pipeline(model, processor, **kwargs):
    return PartSpeechRecognitionPipeline(
        model=model, processor=processor, tokenizer=processor.tokenizer,
        feature_extractor=processor.feature_extractor, **kwargs,
    )


GENERATE = {"max_new_tokens": 4, "generate_kwargs": {"min_new_tokens": 4}}


@pytest.mark.parametrize("task", ["asr", "s2tt"])
def test_pipeline_long_form_is_the_chunks_outputs_joined_whatever_the_batch_size(long_form_part, task):
    model, processor = long_form_part
    waveform, spans = recording()
    languages = {"language": "de", "task": task, "target_language": "en" if task == "s2tt" else None}
    asr = _pipeline(model, processor)
    with pytest.raises(ValueError, match="chunk_length_s="):
        asr(waveform, sampling_rate=RATE, **languages, **GENERATE)

    result = asr(waveform, sampling_rate=RATE, chunk_length_s=12, return_timestamps=True, **languages, **GENERATE)
    chunks = plan_chunks(waveform, 12)
    expected = []
    for chunk in chunks:  # each chunk through the processor and generate on its own
        inputs = processor.apply_transcription_request(
            waveform[chunk.start : chunk.end], language="de", sampling_rate=RATE,
            target_language=languages["target_language"],
        )
        expected.append(processor.batch_decode(model.generate(**inputs, max_new_tokens=4, min_new_tokens=4))[0])
    assert all(expected) and len(set(expected)) > 1
    assert result["text"] == join_texts(expected)
    assert [c["text"] for c in result["chunks"]] == expected
    assert [c["timestamp"] for c in result["chunks"]] == chunk_timestamps(chunks)
    for start, end in spans:  # every segment inside one chunk's time span
        assert sum(s <= start + 0.02 and end - 0.02 <= e for s, e in (c["timestamp"] for c in result["chunks"])) == 1

    for batch_size in (2, 3):
        batched = asr(waveform, sampling_rate=RATE, chunk_length_s=12, return_timestamps=True, batch_size=batch_size,
                      **languages, **GENERATE)
        assert batched == result
    # set when the pipeline is built, as transformers' pipelines take them
    built = _pipeline(model, processor, chunk_length_s=12, batch_size=3, language="de")
    assert built(waveform, sampling_rate=RATE, task=task, target_language=languages["target_language"],
                 **GENERATE)["text"] == result["text"]


def test_pipeline_merges_overlapping_windows_of_speech_without_pauses(long_form_part):
    model, processor = long_form_part
    waveform = make_audio(40.0, seed=3)
    asr = _pipeline(model, processor)
    result = asr(waveform, sampling_rate=RATE, language="en", chunk_length_s=12, stride_length_s=2,
                 return_timestamps=True, **GENERATE)
    chunks = plan_chunks(waveform, 12, 2)
    assert len(chunks) == 5 and all(c.overlap == 4 * RATE for c in chunks[1:])
    texts = []
    for chunk in chunks:
        inputs = processor.apply_transcription_request(waveform[chunk.start : chunk.end], language="en",
                                                       sampling_rate=RATE)
        texts.append(processor.batch_decode(model.generate(**inputs, max_new_tokens=4, min_new_tokens=4))[0])
    parts = merge_chunk_texts(texts, chunks)
    assert result["text"] == join_texts(parts) and [c["text"] for c in result["chunks"]] == parts
    assert [c["timestamp"] for c in result["chunks"]] == [(0, 10), (10, 18), (18, 26), (26, 34), (34, 40)]


def test_pipeline_reads_a_long_file_chunk_by_chunk(long_form_part, tmp_path):
    """A file is scanned block by block and read chunk by chunk: the same chunks and text as the array; at another
    rate and in stereo, the chunks' times are the same."""
    import soundfile

    model, processor = long_form_part
    waveform, _ = recording()
    asr = _pipeline(model, processor)
    call = {"language": "en", "chunk_length_s": 12, "return_timestamps": True, **GENERATE}
    expected = asr(waveform, sampling_rate=RATE, **call)
    soundfile.write(tmp_path / "mono16k.wav", waveform, RATE, subtype="FLOAT")
    assert asr(str(tmp_path / "mono16k.wav"), **call) == expected
    import soxr

    stereo = np.stack([soxr.resample(waveform, RATE, 44100)] * 2, axis=1)
    soundfile.write(tmp_path / "stereo44k.wav", stereo, 44100, subtype="FLOAT")
    result = asr(str(tmp_path / "stereo44k.wav"), **call)
    assert len(result["chunks"]) == len(expected["chunks"])
    for ours, theirs in zip(result["chunks"], expected["chunks"]):
        assert ours["timestamp"] == pytest.approx(theirs["timestamp"], abs=0.03)
        assert ours["text"]


def test_pipeline_refuses_chunks_longer_than_the_model_takes_and_other_timestamps(long_form_part):
    model, processor = long_form_part
    asr = _pipeline(model, processor)
    waveform, _ = recording()
    with pytest.raises(ValueError, match="chunk_length_s=40 is longer than the 30.0 s"):
        asr(waveform, sampling_rate=RATE, language="en", chunk_length_s=40)
    with pytest.raises(ValueError, match="return_timestamps='word'"):
        asr(waveform, sampling_rate=RATE, language="en", chunk_length_s=12, return_timestamps="word")
    # short audio with chunk_length_s: one chunk, the same text as without
    clip = make_audio(3.0)
    assert asr(clip, sampling_rate=RATE, language="en", chunk_length_s=12, **GENERATE) == asr(
        clip, sampling_rate=RATE, language="en", **GENERATE
    )


def test_evaluation_scores_a_long_test_file_as_the_pipeline_transcribes_it(long_form_part):
    model, processor = long_form_part
    waveform, _ = recording()
    long_sample = {"task": "asr", "source_language": "de", "target_language": "de", "text": "ein langer text",
                   "audio": {"bytes": wav_bytes(waveform), "path": None}}
    short = {"task": "asr", "source_language": "de", "target_language": "de", "text": "kurz",
             "audio": {"array": make_audio(2.0, seed=5), "sampling_rate": RATE}, "duration": 2.0}
    samples = [short, long_sample, dict(short, task="s2tt", target_language="en")]
    with pytest.raises(ValueError, match="exceeds max_audio_seconds"):
        generate_predictions(model, processor, samples, progress=False, max_new_tokens=4)

    predictions = generate_predictions(model, processor, samples, batch_size=3, progress=False, chunk_length_s=12,
                                       max_new_tokens=4, min_new_tokens=4)
    asr = _pipeline(model, processor)
    assert predictions[1] == asr(waveform, sampling_rate=RATE, language="de", chunk_length_s=12, **GENERATE)["text"]
    plain = generate_predictions(model, processor, [short, samples[2]], progress=False, max_new_tokens=4,
                                 min_new_tokens=4)
    assert [predictions[0], predictions[2]] == plain  # short samples are untouched
    metrics, _ = evaluate_speech_to_text(model, processor, samples, progress=False, chunk_length_s=12,
                                         max_new_tokens=4, min_new_tokens=4)
    assert "test_wer_de" in metrics and "test_bleu_de-en" in metrics


def test_whisper_front_end_refuses_audio_it_would_cut_at_30_seconds():
    torch.manual_seed(0)
    _, processor = build_tiny_part("whisper", num_mel_bins=80)
    processor.max_audio_seconds = 60.0
    assert processor.effective_max_audio_seconds == 30.0
    with pytest.raises(ValueError, match="longer than the 30 s a Whisper encoder takes"):
        processor.apply_transcription_request(make_audio(35.0), language="en", sampling_rate=RATE)


def _speech_component(name, seconds):
    rows = {"audio": [{"path": None, "bytes": wav_bytes(make_audio(s, seed=i))} for i, s in enumerate(seconds)],
            "text": ["eins"] * len(seconds)}
    dataset = Dataset.from_dict(rows).cast_column("audio", Audio(sampling_rate=RATE, decode=False))
    return MixtureComponent(name, dataset, "asr", "de", "de")


def test_training_samples_longer_than_the_model_takes_are_an_error_or_dropped_and_counted():
    components = [_speech_component("short", [1.0, 1.5, 1.0]), _speech_component("mixed", [1.0, 3.0, 2.5, 1.0])]
    assert audio_seconds(components[1].dataset[1]) == pytest.approx(3.0)
    with pytest.raises(InvalidSampleError, match=r"component 'mixed'.*longer than the 2.0 s.*drop_long_audio=True"):
        list(MixtureDataset(components, stopping_strategy="exhaust", validate=AudioLengthValidator(2.0)))
    mixture = MixtureDataset(components, stopping_strategy="exhaust", validate=AudioLengthValidator(2.0, drop=True))
    samples = list(mixture)
    assert len(samples) == 5 and dict(mixture.skipped) == {"mixed (audio over 2 s)": 2}
    assert all(audio_seconds(s) <= 2.0 for s in samples)


def test_trainer_checks_audio_length_against_the_processor(tmp_path):
    trainer = tiny_trainer(tmp_path / "error")
    trainer.processor.max_audio_seconds = 0.75  # the tiny corpus has 0.6-0.9 s clips
    stage = trainer.schedule.stages[0]
    with pytest.raises(InvalidSampleError, match="longer than the 0.75 s"):
        list(itertools.islice(trainer._stage_dataset(0, stage), 50))
    trainer = tiny_trainer(tmp_path / "drop", drop_long_audio=True)
    trainer.processor.max_audio_seconds = 0.75
    dataset = trainer._stage_dataset(0, stage)
    samples = list(itertools.islice(dataset, 30))
    assert all(audio_seconds(s) <= 0.75 for s in samples)
    assert dataset.skipped and all(key.endswith("(audio over 0.75 s)") for key in dataset.skipped)


@pytest.mark.slow
def test_long_form_example_measures_a_recording_from_a_corpus(long_form_part, tmp_path):
    """examples/long_form.py on a tiny saved model and corpus: the recording, its transcript and the figures."""
    import json
    import sys
    from pathlib import Path

    from datasets import DatasetDict

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from examples.long_form import main

    model, processor = long_form_part
    model.save_pretrained(tmp_path / "model")
    processor.save_pretrained(tmp_path / "model")
    rows = {"id": [], "task": [], "source_language": [], "target_language": [], "text": [], "audio": []}
    for index in range(4):
        rows["id"].append(f"u{index}")
        for key, value in (("task", "asr"), ("source_language", "en"), ("target_language", "en")):
            rows[key].append(value)
        rows["text"].append(f"we need {['two', 'three', 'four', 'five'][index]} liters")
        rows["audio"].append({"bytes": wav_bytes(make_audio(2.0 + index, seed=index)), "path": None})
    test = Dataset.from_dict(rows).cast_column("audio", Audio(sampling_rate=RATE, decode=False))
    DatasetDict({"test": test}).save_to_disk(tmp_path / "corpus")

    results = main(["--model", str(tmp_path / "model"), "--corpus", str(tmp_path / "corpus"), "--minutes", "0.5",
                    "--chunk_length_s", "10", "--max_new_tokens", "4", "--output_dir", str(tmp_path / "out")])
    (entry,) = results["lengths"]
    assert entry["audio_seconds"] >= 30 and entry["utterances"] >= 8 and entry["chunks"] >= 3
    assert entry["peak_rss_mib"] > 0 and entry["seconds_per_audio_second"] > 0
    assert {"long_form_wer/cer", "per_utterance_wer/cer"} <= set(entry)
    assert (tmp_path / "out" / "recording_0.5min.wav").is_file()
    assert json.loads((tmp_path / "out" / "results.json").read_text())["table"] == results["table"]
