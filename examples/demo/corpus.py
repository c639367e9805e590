"""Build the embedded multilingual demo corpus: synthetic speech with exact transcripts and translations.

Everything comes from installed packages (espeak-ng voices from `espeakng-loader`, number words from
`num2words`, CLDR names from `babel`), so the corpus is made on the user's machine, deterministically
for a seed. Rows are (task, sample) pairs in a `datasets.DatasetDict` with train/dev/test splits:
"asr" (speech in X -> text in X), "s2tt" (speech in X != en -> English text) and "mt" (text in X -> English
text, no audio). Dev and test hold the same items in every language; no item content is in two splits. With
`other_engine_test`, an evaluation-only split `test_pico` holds the test items again, spoken by another synthesizer
(SVOX Pico) in the languages it has. With `train_pico_share`, a share of the train and dev utterances in those
languages is spoken by Pico's training speakers (`PICO_TRAIN_SPEAKERS`, other prosody settings than the test split's);
with `train_augment_share`, a share of the train utterances is augmented (`examples/demo/augment.py`: speed, reverb,
band-limiting, noise). Both 0 (the default here) is the espeak-only corpus.

    python -m examples.demo.corpus --output_dir outputs/demo/corpus --seed 0
    python examples/demo/corpus.py --output_dir outputs/demo/corpus --seed 0
"""

from __future__ import annotations

import json
import os
import random
import shutil
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the `examples.demo` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from examples.demo.augment import AUGMENTATION_SETTINGS, EFFECTS, draw_augmentation  # noqa: E402
from examples.demo.texts import LANGUAGES, SemanticItem, make_item_splits, render, spoken_text  # noqa: E402
from examples.demo.tts import (  # noqa: E402
    BASE_VOICES,
    ENGINES,
    PICO_VOICES,
    SAMPLE_RATE,
    SpeechRequest,
    synthesize_batch,
)
from modeling_part.processing_part import TASKS  # noqa: E402

SPLITS: tuple[str, ...] = ("train", "dev", "test")
TARGET_LANGUAGE = "en"
"""Translation target of the "s2tt" and "mt" rows."""

EXTRA_BASE_VOICES: dict[str, tuple[str, ...]] = {"en": ("en-us", "en"), "es": ("es", "es-419")}
"""Languages with more than one espeak accent (American/British English, Castilian/Latin American Spanish)."""

SHARD_SIZE = 160
"""Utterances per synthesis worker process; part of what defines the audio, so kept fixed."""

CORPUS_VERSION = 2
"""Bumped whenever texts or audio for the same arguments change; stored with the corpus."""


@dataclass(frozen=True)
class Speaker:
    """A synthetic speaker: an espeak-ng voice variant ("" is the plain voice) with its own speaking-rate range
    (words per minute) and pitch range (0-100), from which each of its utterances draws."""

    variant: str
    rate: tuple[int, int]
    pitch: tuple[int, int]


SPEAKERS: dict[str, Speaker] = {
    "plain": Speaker("", (160, 190), (40, 60)),
    "m1": Speaker("m1", (150, 180), (30, 50)),
    "m2": Speaker("m2", (165, 195), (35, 55)),
    "m3": Speaker("m3", (145, 175), (40, 60)),
    "m4": Speaker("m4", (155, 185), (30, 50)),
    "m5": Speaker("m5", (160, 190), (35, 55)),
    "m6": Speaker("m6", (150, 180), (40, 60)),
    "m7": Speaker("m7", (165, 195), (30, 50)),
    "f1": Speaker("f1", (155, 185), (45, 70)),
    "f2": Speaker("f2", (145, 175), (50, 70)),
    "f3": Speaker("f3", (160, 190), (45, 65)),
    "f4": Speaker("f4", (150, 180), (50, 70)),
    "f5": Speaker("f5", (165, 195), (45, 65)),
}
"""The speakers, by name; an utterance's `speaker` column is "<espeak voice>/<speaker name>"."""

TEST_SPEAKERS: tuple[str, ...] = ("m3", "f2")
"""Held-out speakers: they speak the test split and nothing else, so the test measures unheard voices."""

TRAIN_SPEAKERS: tuple[str, ...] = tuple(name for name in SPEAKERS if name not in TEST_SPEAKERS)
"""The speakers of the train and dev splits."""

PICO_TEST_SPLIT = "test_pico"
"""The evaluation-only split of the test items spoken by SVOX Pico (`build_corpus(other_engine_test=True)`)."""

PICO_SPEAKERS: dict[str, Speaker] = {
    "pico-a": Speaker("", (150, 175), (40, 55)),
    "pico-b": Speaker("", (170, 195), (55, 70)),
}
"""Pico speakers: two prosody settings of Pico's one voice per language (rate and pitch on espeak's scales; Pico
has no voice variants). Every item of `PICO_TEST_SPLIT` is spoken by each of them."""

PICO_TRAIN_SPEAKERS: dict[str, Speaker] = {
    "pico-t1": Speaker("", (135, 160), (32, 39)),
    "pico-t2": Speaker("", (180, 210), (42, 54)),
    "pico-t3": Speaker("", (155, 180), (71, 85)),
}
"""Pico's training speakers (`build_corpus(train_pico_share=...)`): prosody settings of the same Pico voices (slow and
low, fast, high) whose rate-by-pitch ranges overlap no held-out speaker's of `PICO_SPEAKERS`; "pico-t" names them
apart from the held-out "pico-a" and "pico-b"."""


@dataclass
class DemoCorpusArguments:
    """What `build_corpus` makes; the defaults synthesise in about a minute on 2 CPU cores."""

    output_dir: str = field(metadata={"help": "Where `DatasetDict.save_to_disk` writes the corpus."})
    languages: list[str] = field(
        default_factory=lambda: list(LANGUAGES), metadata={"help": f"Language codes, from {', '.join(LANGUAGES)}."}
    )
    train_items_per_language: int = field(default=500, metadata={"help": "Training utterances per language."})
    dev_items: int = field(default=40, metadata={"help": "Dev items, spoken in every language."})
    test_items: int = field(default=40, metadata={"help": "Test items, spoken in every language."})
    seed: int = field(default=0, metadata={"help": "Seed for texts, speakers and prosody; same seed, same bytes."})
    num_workers: int | None = field(
        default=None, metadata={"help": "Synthesis processes (espeak-ng is single threaded); default: one per CPU core."},
    )
    progress: bool = field(default=True, metadata={"help": "Show a progress bar and print a summary."})
    reuse_existing: bool = field(
        default=False, metadata={"help": "Load the corpus in output_dir if it was built with the same arguments."}
    )
    other_engine_test: bool = field(
        default=False,
        metadata={"help": f"Also make the evaluation-only split {PICO_TEST_SPLIT!r}: the test items spoken by SVOX "
                  f"Pico (py-nanotts) in {', '.join(PICO_VOICES)}, by {' and '.join(PICO_SPEAKERS)}."},
    )
    train_pico_share: float = field(
        default=0.0,
        metadata={"help": f"Share (0-1) of the train and dev utterances in {', '.join(PICO_VOICES)} spoken by "
                  f"SVOX Pico's training speakers ({', '.join(PICO_TRAIN_SPEAKERS)}) instead of espeak-ng; "
                  "0: espeak only."},
    )
    train_augment_share: float = field(
        default=0.0,
        metadata={"help": "Share (0-1) of the train utterances augmented with one or two of speed perturbation, "
                  "reverberation, band-limiting and additive noise (examples/demo/augment.py); 0: none."},
    )


@dataclass(frozen=True)
class Utterance:
    """One item spoken in one language by one speaker, with the split it belongs to."""

    split: str
    index: int  # the item's index within its split (shared by all languages in dev/test)
    item: SemanticItem
    language: str
    text: str  # the written text (transcript); request.text is what the synthesizer reads
    request: SpeechRequest  # spoken text, voice and prosody
    speaker: str = ""  # the speaker's name where the voice does not carry it (Pico); "" for espeak


def _features():
    from datasets import Audio, Features, Value

    return Features(
        {
            "id": Value("string"),
            "task": Value("string"),
            "source_language": Value("string"),
            "target_language": Value("string"),
            "audio": Audio(sampling_rate=SAMPLE_RATE, decode=False),
            "source_text": Value("string"),
            "text": Value("string"),
            "duration": Value("float64"),
            "speaker": Value("string"),
        }
    )


def _to_dataset(rows: list[dict], split: str):
    """Rows -> `Dataset`, written straight to Arrow: `Audio.encode_example` would need torchcodec."""
    import pyarrow as pa
    from datasets import Dataset, DatasetInfo, NamedSplit

    features = _features()
    table = pa.Table.from_pylist(rows, schema=features.arrow_schema)
    return Dataset(table, info=DatasetInfo(features=features), split=NamedSplit(split))


def _speech_request(rng: random.Random, language: str, text: str, speakers: Sequence[str]) -> SpeechRequest:
    """A seeded utterance of one of `speakers` in `language`: accent, the speaker's voice variant, a rate and pitch
    from the speaker's ranges, loudness, pauses and noise floor."""
    base = rng.choice(EXTRA_BASE_VOICES.get(language, (BASE_VOICES[language],)))
    speaker = SPEAKERS[rng.choice(speakers)]
    voice = f"{base}+{speaker.variant}" if speaker.variant else base
    return SpeechRequest(text=text, voice=voice, **_prosody(rng, speaker))


def _prosody(rng: random.Random, speaker: Speaker) -> dict:
    """Seeded rate and pitch from the speaker's ranges, loudness, pauses, noise floor and noise seed."""
    return dict(
        rate=rng.randint(*speaker.rate),
        pitch=rng.randint(*speaker.pitch),
        gain=rng.uniform(0.5, 1.0),
        lead_silence=rng.uniform(0.1, 0.3),
        trail_silence=rng.uniform(0.1, 0.3),
        noise_level=10 ** rng.uniform(-4.0, -3.0),  # -80 to -60 dB full scale: no digital silence
        seed=rng.getrandbits(32),
    )


def plan_utterances(
    languages: Sequence[str], train_items_per_language: int, dev_items: int, test_items: int, seed: int
) -> list[Utterance]:
    """Every utterance to synthesise, in a fixed order: test, dev, then train, language by language; the test split
    is spoken by `TEST_SPEAKERS`, the others by `TRAIN_SPEAKERS`."""
    unknown = [language for language in languages if language not in BASE_VOICES]
    if unknown:
        raise ValueError(f"No espeak-ng voice is set up for {unknown}; choose languages from {', '.join(LANGUAGES)}.")
    if len(set(languages)) != len(languages) or not languages:
        raise ValueError(f"languages must be distinct and non-empty, got {list(languages)}.")
    splits = make_item_splits(languages, train_items_per_language, dev_items, test_items, seed)
    rng = random.Random(f"part-demo-speakers/{seed}")
    utterances = []
    for split, items_by_language in (
        ("test", {language: splits.test for language in languages}),
        ("dev", {language: splits.dev for language in languages}),
        ("train", splits.train),
    ):
        for language in languages:
            speakers = TEST_SPEAKERS if split == "test" else TRAIN_SPEAKERS
            for index, item in enumerate(items_by_language[language]):
                request = _speech_request(rng, language, spoken_text(item, language), speakers)
                utterances.append(Utterance(split, index, item, language, render(item, language), request))
    return utterances


def plan_pico_test(test_utterances: Sequence[Utterance], seed: int) -> list[Utterance]:
    """`PICO_TEST_SPLIT`: each espeak test utterance in a language Pico speaks, spoken again by every one of
    `PICO_SPEAKERS` (seeded prosody from its ranges, loudness, pauses and noise floor as `_speech_request` draws
    them). Its own random stream, so the espeak splits do not depend on it."""
    rng = random.Random(f"part-demo-pico-speakers/{seed}")
    utterances = []
    for utterance in test_utterances:
        if utterance.split != "test":
            raise ValueError(f"plan_pico_test takes test utterances, got one of the {utterance.split!r} split.")
        if utterance.language not in PICO_VOICES:
            continue
        for name, speaker in PICO_SPEAKERS.items():
            request = SpeechRequest(utterance.request.text, PICO_VOICES[utterance.language], **_prosody(rng, speaker),
                                    engine="pico")  # fmt: skip
            utterances.append(Utterance(PICO_TEST_SPLIT, utterance.index, utterance.item, utterance.language,
                                        utterance.text, request, speaker=name))  # fmt: skip
    return utterances


def _check_share(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} is a share of utterances, from 0 to 1 (0 turns it off); got {value}.")


def plan_training_voices(
    utterances: Sequence[Utterance], seed: int, train_pico_share: float = 0.0, train_augment_share: float = 0.0
) -> list[Utterance]:
    """`utterances` (of `plan_utterances`) with `train_pico_share` of the train and of the dev utterances of each
    language Pico speaks given to Pico's training speakers (`PICO_TRAIN_SPEAKERS`: the same text, Pico's voice, a
    speaker and prosody as `plan_pico_test` draws them), and `train_augment_share` of the train utterances of each
    language (of either engine) augmented (`augment.draw_augmentation`: one or two effects). Test utterances are
    kept. Each choice has its own random stream: which utterances are augmented does not depend on the Pico share,
    and with both shares 0 the utterances come back unchanged."""
    _check_share("train_pico_share", train_pico_share)
    _check_share("train_augment_share", train_augment_share)
    utterances = list(utterances)
    positions: dict[tuple[str, str], list[int]] = defaultdict(list)  # (split, language) -> positions, in plan order
    for position, utterance in enumerate(utterances):
        positions[(utterance.split, utterance.language)].append(position)
    if train_pico_share > 0:
        rng = random.Random(f"part-demo-train-pico/{seed}")
        names = list(PICO_TRAIN_SPEAKERS)
        for (split, language), group in positions.items():
            if split not in ("train", "dev") or language not in PICO_VOICES:
                continue
            for position in sorted(rng.sample(group, round(train_pico_share * len(group)))):
                utterance, name = utterances[position], rng.choice(names)
                request = SpeechRequest(utterance.request.text, PICO_VOICES[language],
                                        **_prosody(rng, PICO_TRAIN_SPEAKERS[name]), engine="pico")  # fmt: skip
                utterances[position] = replace(utterance, request=request, speaker=name)
    if train_augment_share > 0:
        rng = random.Random(f"part-demo-train-augment/{seed}")
        for (split, _), group in positions.items():
            if split != "train":
                continue
            for position in sorted(rng.sample(group, round(train_augment_share * len(group)))):
                utterance = utterances[position]
                request = replace(utterance.request, augmentation=draw_augmentation(rng))
                utterances[position] = replace(utterance, request=request)
    return utterances


def composition(utterances: Sequence[Utterance]) -> str:
    """Utterances per split and engine, and the augmented ones with their effects (`plan_training_voices`)."""
    lines = []
    for split in dict.fromkeys(utterance.split for utterance in utterances):
        group = [utterance for utterance in utterances if utterance.split == split]
        engines = {engine: sum(u.request.engine == engine for u in group) for engine in ENGINES}
        line = f"{split}: {len(group)} utterances (" + ", ".join(f"{e} {n}" for e, n in engines.items() if n) + ")"
        augmented = [u.request.augmentation for u in group if u.request.augmentation is not None]
        if augmented:
            effects = {effect: sum(effect in a.effects for a in augmented) for effect in EFFECTS}
            line += f"; {len(augmented)} augmented (" + ", ".join(f"{e} {n}" for e, n in effects.items()) + ")"
        lines.append(line)
    return "\n".join(lines)


def speaker_of(request: SpeechRequest) -> str:
    """The `speaker` column: the espeak voice and the speaker's name ("de+m3/m3", "cmn/plain")."""
    _, _, variant = request.voice.partition("+")
    return f"{request.voice}/{variant or 'plain'}"


def speaker_name(speaker_column: str) -> str:
    """The speaker's name (a key of `SPEAKERS`, `PICO_SPEAKERS` or `PICO_TRAIN_SPEAKERS`) from a `speaker` column
    value."""
    return speaker_column.rpartition("/")[2]


def engine_of(speaker_column: str) -> str:
    """The synthesizer (of `tts.ENGINES`) of a `speaker` column value: Pico's speakers are named "pico-..."."""
    return "pico" if speaker_name(speaker_column).startswith("pico-") else "espeak"


def _rows(utterance: Utterance, wav: bytes, num_samples: int) -> list[dict]:
    """The asr row, and for a non-English source the s2tt and mt rows, of one utterance (one of `PICO_TEST_SPLIT`: no
    mt row, the test split has it already, and the speaker's name in its id, as every item has two speakers there)."""
    language, text = utterance.language, utterance.text
    stem = f"{utterance.split}-{utterance.index:05d}-{language}"
    if utterance.split == PICO_TEST_SPLIT:
        stem = f"{stem}-{utterance.speaker}"
    audio = {"path": f"{stem}.wav", "bytes": wav}
    duration = num_samples / SAMPLE_RATE
    speaker = f"{utterance.request.voice}/{utterance.speaker}" if utterance.speaker else speaker_of(utterance.request)
    rows = [dict(id=f"{stem}-asr", task="asr", source_language=language, target_language=language, audio=audio,
                 source_text=text, text=text, duration=duration, speaker=speaker)]  # fmt: skip
    if language != TARGET_LANGUAGE:
        english = render(utterance.item, TARGET_LANGUAGE)
        rows.append(dict(id=f"{stem}-s2tt", task="s2tt", source_language=language, target_language=TARGET_LANGUAGE,
                         audio=audio, source_text=text, text=english, duration=duration, speaker=speaker))  # fmt: skip
    if language != TARGET_LANGUAGE and utterance.split != PICO_TEST_SPLIT:
        rows.append(dict(id=f"{stem}-mt", task="mt", source_language=language, target_language=TARGET_LANGUAGE,
                         audio=None, source_text=text, text=english, duration=0.0, speaker=""))  # fmt: skip
    return rows


def summarize(corpus) -> str:
    """A table of audio hours (minutes) per split, language and task, row counts per split, and utterances (minutes)
    per engine."""
    lines = []
    for split, dataset in corpus.items():
        columns = dataset.select_columns(["task", "source_language", "duration", "speaker"])
        seconds: dict[tuple[str, str], float] = defaultdict(float)
        counts: dict[str, int] = defaultdict(int)
        engines: dict[str, list[float]] = {}
        for task, language, duration, speaker in zip(
            columns["task"], columns["source_language"], columns["duration"], columns["speaker"]
        ):
            seconds[(language, task)] += duration
            counts[task] += 1
            if task == "asr":  # one per utterance
                engines.setdefault(engine_of(speaker), []).append(duration)
        lines.append(f"{split}: {len(dataset)} rows ({', '.join(f'{task} {counts[task]}' for task in TASKS)})")
        for language in sorted({language for language, _ in seconds}):
            cells = [
                f"{task} {seconds[(language, task)] / 3600:.3f} h ({seconds[(language, task)] / 60:5.1f} min)"
                for task in ("asr", "s2tt")
                if (language, task) in seconds
            ]
            lines.append(f"  {language}: " + ", ".join(cells))
        total = sum(value for (_, task), value in seconds.items() if task == "asr")
        lines.append(f"  distinct audio: {total / 3600:.3f} h ({total / 60:.1f} min)")
        lines.append("  by engine: " + ", ".join(f"{engine} {len(values)} utterances ({sum(values) / 60:.1f} min)"
                                                 for engine, values in sorted(engines.items())))  # fmt: skip
    return "\n".join(lines)


def build_corpus(
    output_dir: str | Path,
    languages: Sequence[str] = LANGUAGES,
    train_items_per_language: int = 500,
    dev_items: int = 40,
    test_items: int = 40,
    seed: int = 0,
    num_workers: int | None = None,
    progress: bool = True,
    reuse_existing: bool = False,
    other_engine_test: bool = False,
    train_pico_share: float = 0.0,
    train_augment_share: float = 0.0,
):
    """Synthesise the demo corpus, save it with `save_to_disk` under `output_dir`, and return it.

    Returns a `datasets.DatasetDict` (train/dev/test, memory-mapped from `output_dir`) whose "audio"
    column holds 16 kHz 16-bit WAV bytes with `decode=False`; decode them with `soundfile`.
    With `other_engine_test` (and a language Pico speaks) it also holds `PICO_TEST_SPLIT` (see `plan_pico_test`),
    made after the others and from its own random stream: train/dev/test are the same bytes with or without it.
    `train_pico_share` and `train_augment_share` (see `plan_training_voices`) change train and dev only (the test split
    comes first in the synthesis order, so its bytes stay as they are); with both 0 the corpus is the espeak-only one.
    Pico's training utterances are synthesised in a batch of their own, after espeak's.
    The same arguments (apart from `num_workers`, default one per CPU core, and `progress`) give identical texts and
    audio bytes.
    An existing corpus in `output_dir` is replaced, or with `reuse_existing=True` loaded when it was
    built with the same arguments; any other non-empty directory is refused.
    """
    import datasets
    from datasets import DatasetDict, load_from_disk

    num_workers = num_workers or os.cpu_count() or 2
    output_dir = Path(output_dir)
    languages = list(languages)
    config = dict(
        version=CORPUS_VERSION, languages=languages, train_items_per_language=train_items_per_language,
        dev_items=dev_items, test_items=test_items, seed=seed, sample_rate=SAMPLE_RATE, shard_size=SHARD_SIZE,
    )  # fmt: skip
    _check_share("train_pico_share", train_pico_share)
    _check_share("train_augment_share", train_augment_share)
    pico_voices = {language: PICO_VOICES[language] for language in languages if language in PICO_VOICES}
    if other_engine_test:  # only then: a corpus built without it keeps its config
        config["pico_test_speakers"] = {name: asdict(speaker) for name, speaker in PICO_SPEAKERS.items()}
        config["pico_voices"] = pico_voices
    if train_pico_share > 0:  # likewise
        config.update(train_pico_share=train_pico_share, pico_voices=pico_voices,
                      pico_train_speakers={name: asdict(speaker) for name, speaker in PICO_TRAIN_SPEAKERS.items()})
    if train_augment_share > 0:
        config.update(train_augment_share=train_augment_share, train_augmentation=AUGMENTATION_SETTINGS)
    config = json.loads(json.dumps(config))  # as read back (tuples become lists), so that a reuse can match it
    config_path = output_dir / "demo_corpus.json"
    if reuse_existing and config_path.exists() and json.loads(config_path.read_text(encoding="utf-8")) == config:
        corpus = load_from_disk(str(output_dir))
        if progress:
            print(f"Reusing the demo corpus in {output_dir}\n{summarize(corpus)}")
        return corpus
    if output_dir.exists() and any(output_dir.iterdir()) and not (output_dir / "dataset_dict.json").exists():
        raise FileExistsError(f"{output_dir} is not empty and holds no corpus; choose an empty or new output_dir.")
    start = time.perf_counter()
    utterances = plan_utterances(languages, train_items_per_language, dev_items, test_items, seed)
    utterances = plan_training_voices(utterances, seed, train_pico_share, train_augment_share)
    audio: list[tuple[bytes, int] | None] = [None] * len(utterances)
    for engine, description in (("espeak", "demo corpus"), ("pico", "Pico training voices")):  # a batch per engine
        positions = [i for i, utterance in enumerate(utterances) if utterance.request.engine == engine]
        if positions:
            requests = [utterances[i].request for i in positions]
            results = synthesize_batch(requests, num_workers, SHARD_SIZE, progress, description)
            for position, result in zip(positions, results, strict=True):
                audio[position] = result
    rows: dict[str, list[dict]] = {split: [] for split in SPLITS}
    for utterance, (wav, num_samples) in zip(utterances, audio, strict=True):
        rows[utterance.split].extend(_rows(utterance, wav, num_samples))
    pico = plan_pico_test([u for u in utterances if u.split == "test"], seed) if other_engine_test else []
    if pico:  # a batch of its own: the espeak shards stay as they were
        rows[PICO_TEST_SPLIT] = []
        results = synthesize_batch([u.request for u in pico], num_workers, SHARD_SIZE, progress, "Pico test split")
        for utterance, (wav, num_samples) in zip(pico, results, strict=True):
            rows[PICO_TEST_SPLIT].extend(_rows(utterance, wav, num_samples))
    synthesis_seconds = time.perf_counter() - start

    corpus = DatasetDict({split: _to_dataset(rows.pop(split), split) for split in list(rows)})
    if output_dir.exists():
        shutil.rmtree(output_dir)
    bars_were_disabled = datasets.are_progress_bars_disabled()
    if not progress:
        datasets.disable_progress_bars()
    try:
        corpus.save_to_disk(str(output_dir))
    finally:
        if not bars_were_disabled:
            datasets.enable_progress_bars()
    config_path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    corpus = load_from_disk(str(output_dir))
    if progress:
        elapsed = time.perf_counter() - start
        print(f"Demo corpus in {output_dir} ({len(utterances) + len(pico)} utterances; "
              f"synthesis {synthesis_seconds:.1f} s, "
              f"total {elapsed:.1f} s)\n{composition(utterances + pico)}\n{summarize(corpus)}")  # fmt: skip
    return corpus


def main(argv: Sequence[str] | None = None):
    from transformers import HfArgumentParser

    (args,) = HfArgumentParser(DemoCorpusArguments).parse_args_into_dataclasses(args=argv)
    return build_corpus(**asdict(args))


if __name__ == "__main__":
    main()
