"""The main job (`make demo`): PART end to end on the embedded multilingual corpus, on a CPU, with no network.

1. synthesise the corpus (espeak-ng speech in 8 languages, exact transcripts and translations; the test split is
   spoken by held-out speakers; a share of train and dev spoken by SVOX Pico's training speakers, a share of
   train augmented);
2. take the pretrained stand-ins shipped in `examples/demo/components` (`make components`: BPE tokenizer,
   CTC-trained SenseVoice-style encoder, Qwen2-style LLM), train them here when the corpus differs from theirs, or take
   `--audio_encoder` / `--llm` hub ids or folders; score the stand-ins alone (encoder CTC CER, LLM text MT and copy);
3. assemble the PART model with `PartForSpeechToText.from_pretrained_components`;
4. train the `part` schedule (or `--schedule`) with `PartTrainer`, with the gradient-similarity analysis, scoring the
   test split after every stage;
5. evaluate on the test split (WER/CER per language, BLEU per direction), and on the same items spoken by another
   synthesizer (SVOX Pico, `--other_engine_test`), per engine and per held-out voice; write plots, results and a
   model card, and print the results tables (chance, stand-ins, every stage, PART, engines and voices) and where the
   time went.

    python examples/demo/run_demo.py --output_dir outputs/demo
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402
from transformers import AutoConfig, HfArgumentParser, PreTrainedModel, set_seed  # noqa: E402
from transformers.utils import logging  # noqa: E402

from examples.demo.corpus import PICO_TEST_SPLIT, build_corpus, speaker_name  # noqa: E402
from examples.demo.pretrain import (  # noqa: E402
    BUILDING,
    CTC_HEAD,
    MANIFEST,
    SHIPPED_COMPONENTS,
    EncoderSettings,
    LLMSettings,
    build_components,
    corpus_spec,
    evaluate_encoder,
    evaluate_llm,
)
from examples.demo.texts import LANGUAGES  # noqa: E402
from model_cards import write_model_card  # noqa: E402
from modeling_part import PartFeatureExtractor, PartForSpeechToText, PartProcessor  # noqa: E402
from modeling_part.modeling_part import load_pretrained_audio_encoder  # noqa: E402
from trainers import MixtureComponent, PartTrainer, PartTrainingArguments  # noqa: E402
from trainers.callbacks import (  # noqa: E402
    GradientSimilarityCallback,
    StageEvaluationCallback,
    build_probe_batches,
    read_stage_metrics,
)
from trainers.metrics import compute_speech_metrics  # noqa: E402
from trainers.stages import PRESETS, Schedule, load_schedule  # noqa: E402

logger = logging.get_logger("part.demo")


@dataclass
class DemoArguments:
    """Settings of the demo; the defaults fit `make demo` into 30 minutes on 2 CPU cores."""

    output_dir: str = field(default="outputs/demo", metadata={"help": "Where everything is written."})
    seed: int = field(default=0, metadata={"help": "Seed for the corpus, the components and PART training."})
    schedule: str = field(default="part", metadata={"help": "A preset or a JSON/YAML schedule file."})
    max_steps: int = field(
        default=3500,
        metadata={"help": "PART optimizer steps over all stages (5,000 from 4 to 6 December 2026, 4,000 before: "
                  "docs/demo.md)."},
    )
    batch_size: int = field(default=16, metadata={"help": "PART training batch size."})
    max_tokens_per_batch: int = field(
        default=0,
        metadata={"help": "Token-budget batches of this many LLM positions (padded) instead of --batch_size "
                  "(0: fixed batches). See docs/batching.md."},
    )
    max_audio_seconds_per_batch: float = field(
        default=0.0, metadata={"help": "Token-budget batches: audio seconds per batch, padded (0: no limit)."}
    )
    learning_rate: float = field(
        default=1e-3, metadata={"help": "Peak learning rate of the first stage (later stages: --later_stages_lr_scale x it)."}
    )
    warmup_steps: float = field(
        default=0.05, metadata={"help": "Warm-up of each stage: a share of its steps if < 1, else a number of steps."}
    )
    eval_batch_size: int = field(default=32, metadata={"help": "Batch size of test-set generation."})
    languages: list[str] = field(default_factory=lambda: list(LANGUAGES), metadata={"help": "Corpus languages."})
    train_items_per_language: int = field(
        default=1000,
        metadata={"help": "Corpus size: training items per language, each spoken once (500, the earlier default: "
                  "ASR 24.2 +- 3.7 / S2TT 54.0 +- 7.5 over three seeds against 22.0 +- 1.0 / 60.7 +- 4.4, but "
                  "74.0 against 82.5 ASR on the never-heard Pico voices; docs/demo.md)."},
    )
    test_items: int = field(default=40, metadata={"help": "Test items per language."})
    synthesis_workers: int | None = field(
        default=None,
        metadata={"help": "Corpus synthesis processes (default: one per CPU core); the audio does not depend on it."},
    )
    encoder_steps: int = field(
        default=EncoderSettings.steps, metadata={"help": "CTC steps of the encoder, when the stand-ins are trained here."}
    )
    llm_steps: int = field(default=LLMSettings.steps, metadata={"help": "LLM steps, when the stand-ins are trained here."})
    llm_text_items: int = field(
        default=LLMSettings.text_items, metadata={"help": "Text items of the LLM, when the stand-ins are trained here."}
    )
    audio_encoder: str | None = field(default=None, metadata={"help": "A pretrained encoder (hub id or folder)."})
    llm: str | None = field(default=None, metadata={"help": "A pretrained causal LM (hub id or folder)."})
    corpus_dir: str | None = field(default=None, metadata={"help": "Reuse a corpus here (default output_dir/corpus)."})
    components_dir: str | None = field(
        default=None,
        metadata={"help": "Stand-ins to use (or train into). Default: the shipped examples/demo/components when they "
                  "were made for this corpus (same languages, seed and held-out sizes), else output_dir/components."},
    )
    evaluate_stages: bool = field(default=True, metadata={"help": "Score the test split after every stage."})
    probes_per_label: int = field(default=4, metadata={"help": "Dev samples per (task, language) gradient probe."})
    adapter_width: int = field(default=256, metadata={"help": "Width of the new adapter (4x in its feed-forward)."})
    adapter_stride: int | None = field(
        default=None,
        metadata={"help": "The adapter's downsampling stride over the encoder's 60 ms frames (None: the smallest that "
                  "keeps the audio token rate at or below 12.5/s, i.e. 2)."},
    )
    later_stages_lr_scale: float = field(
        default=0.5,
        metadata={"help": "Peak learning rate of every stage of a preset after the first, as a multiple of "
                  "--learning_rate, in place of the preset's (0.3 and 0.2, sized for the paper's large pretrained "
                  "encoder and LLM); 0 keeps the preset's. A schedule file keeps its own rates."},
    )
    lora_rank: int = field(
        default=64,
        metadata={"help": "LoRA rank of the LLM in the cross-language stage (alpha = 2 x rank), in place of the "
                  "schedule's 16 (64 is a quarter of the demo LLM's width, 256); 0 keeps the schedule's."},
    )
    lora_dropout: float = field(
        default=0.0,
        metadata={"help": "Dropout of the LoRA inputs in the cross-language stage, in place of the schedule's 0.05: the "
                  "demo underfits, and on a CPU the dropout masks cost 8% of a stage-3 step (docs/demo.md); negative "
                  "keeps the schedule's."},
    )
    encoder_dropout: float = field(
        default=0.0,
        metadata={"help": "Dropout of the pretrained encoder while PART trains it (every dropout probability of its "
                  "config; the demo stand-in was CTC-trained with 0.1, and the PART run underfits); negative keeps "
                  "the checkpoint's."},
    )
    other_engine_test: bool = field(
        default=True,
        metadata={"help": f"Also synthesise the test items with SVOX Pico (py-nanotts; en/de/fr/es/it, two prosody "
                  f"settings: the corpus's {PICO_TEST_SPLIT!r} split) and score the final model on them, per engine "
                  "and per held-out voice (about 10 CPU seconds of synthesis and 720 more generations); false turns "
                  "it off."},
    )
    train_pico_share: float = field(
        default=0.0,
        metadata={"help": "Share of the train and dev utterances in Pico's languages (en/de/fr/es/it) spoken by SVOX "
                  "Pico's training speakers (pico-t1..t3: other prosody settings than the held-out pico-a/pico-b) "
                  "instead of espeak-ng; 0: espeak only, so the Pico split measures an unheard engine. 0.3 with "
                  "--train_augment_share 0.5 measured: Pico 80.4 -> 40.3 ASR error, but espeak's held-out voices "
                  "26.8 -> 35.7 (docs/demo.md). The shipped stand-ins still fit: they depend on the held-out items and "
                  "speakers only."},
    )
    train_augment_share: float = field(
        default=0.0,
        metadata={"help": "Share of the train utterances augmented with one or two of speed perturbation (0.9-1.1), "
                  "reverberation (RT60 0.2-0.6 s), band-limiting (telephone or 4-6 kHz low-pass) and noise (10-30 dB "
                  "SNR); 0: none."},
    )
    encoder_last_k: int = field(
        default=2,
        metadata={"help": "Top encoder layers of the schedule's `encoder_last_k` stages (the paper: 8 of SenseVoice's "
                  "50; the demo encoder has 6)."},
    )


RUN_INDEPENDENT_SETTINGS = frozenset(
    {"output_dir", "corpus_dir", "components_dir", "synthesis_workers", "eval_batch_size", "evaluate_stages"}
)
"""`DemoArguments` that change neither what a run trains nor how its final model is scored (`evaluate_stages`: up
to floating-point rounding, see docs/paper.md)."""


def stand_ins_digest(encoder_path: str, llm_path: str) -> str:
    """A digest of what PART loads from the encoder and the LLM: every file of each local folder but the encoder's
    CTC head (which only scores the encoder alone), or the path itself for a hub id."""
    digest = hashlib.sha256()
    for path in (encoder_path, llm_path):
        folder = Path(path)
        if not folder.is_dir():
            digest.update(f"hub id {path}\0".encode())
            continue
        for file in sorted(p for p in folder.iterdir() if p.is_file() and p.name != CTC_HEAD):
            digest.update(file.name.encode() + b"\0" + hashlib.sha256(file.read_bytes()).digest())
        digest.update(b"\1")  # the end of a folder
    return digest.hexdigest()[:16]


def run_settings(args: DemoArguments, encoder_path: str, llm_path: str) -> dict:
    """What a run's results depend on besides its own schedule and seed (recorded apart): the `DemoArguments` and the
    stand-ins' digest (`stand_ins_digest`), as JSON reads them back: the "settings" of `results.json` and
    `run_settings.json`, compared by `finished_run`."""
    settings = {f.name: getattr(args, f.name) for f in dataclasses.fields(DemoArguments)}
    settings = {k: v for k, v in settings.items() if k not in RUN_INDEPENDENT_SETTINGS}
    return json.loads(json.dumps({**settings, "stand-ins": stand_ins_digest(encoder_path, llm_path)}))


def finished_run(run_dir: Path, schedule: str, seed: int, settings: dict) -> dict | None:
    """The `results.json` of the finished run in `run_dir`, or None if it has not finished, after checking that the
    run there (finished, or interrupted and to be resumed) has this schedule, seed and `settings` (`run_settings`):
    reusing or resuming a run trained otherwise would mix two runs unseen."""
    records = [run_dir / name for name in ("results.json", "run_settings.json") if (run_dir / name).exists()]
    if not records:
        if any(run_dir.glob("stage-*")):
            raise ValueError(f"{run_dir} holds checkpoints of a run that recorded no settings, so it cannot be resumed "
                             "safely; remove the folder to train it again.")
        return None
    recorded = json.loads(records[0].read_text())
    if "settings" not in recorded:
        raise ValueError(f"{records[0]} records no settings (a run from before they were recorded), so it cannot be "
                         f"reused safely; add its settings to it, or remove {run_dir} to train the run again.")
    expected = {**settings, "run's schedule": schedule, "run's seed": seed}
    found = {**recorded["settings"], "run's schedule": recorded.get("schedule"), "run's seed": recorded.get("seed")}
    differ = sorted(k for k in expected.keys() | found.keys() if found.get(k) != expected.get(k))
    if differ:
        raise ValueError(
            f"{run_dir} holds a run trained with other settings ("
            + ", ".join(f"{k}={found.get(k)!r}" for k in differ) + " against this run's "
            + ", ".join(f"{k}={expected.get(k)!r}" for k in differ)
            + "); pass another --output_dir, or remove the folder to train it again."
        )
    return recorded if records[0].name == "results.json" else None


def corpus_components(split) -> list[MixtureComponent]:
    """One mixture component per (task, source language, target language) of a corpus split."""
    keys = sorted(set(zip(split["task"], split["source_language"], split["target_language"])))
    components = []
    for task, source, target in keys:
        rows = split.filter(
            lambda t, s, g: t == task and s == source and g == target,
            input_columns=["task", "source_language", "target_language"],
        )
        name = f"{task}_{source}" if task == "asr" else f"{task}_{source}_{target}"
        components.append(
            MixtureComponent(name, rows.select_columns(["audio", "text", "source_text", "duration"]), task, source, target)
        )
    return components


def demo_corpus_spec(args: DemoArguments) -> dict:
    """What of the demo's corpus the stand-ins depend on (see `pretrain.corpus_spec`)."""
    return corpus_spec(dict(languages=args.languages, seed=args.seed, dev_items=args.test_items, test_items=args.test_items))


def _read_manifest(folder: Path) -> dict | None:
    path = folder / MANIFEST
    return json.loads(path.read_text()) if path.exists() else None


def prepare_components(args: DemoArguments, corpus, out: Path) -> tuple[str, str, dict]:
    """Pretrained encoder and LLM folders: given hub ids/folders, the stand-ins made for this corpus (shipped or
    reused), or stand-ins trained here on the corpus (`pretrain.build_components`)."""
    if args.audio_encoder and args.llm:
        return args.audio_encoder, args.llm, {}
    spec = demo_corpus_spec(args)
    shipped = _read_manifest(SHIPPED_COMPONENTS)
    if not args.components_dir and shipped and shipped["corpus"] == spec:
        logger.warning(f"Using the pretrained demo stand-ins in {SHIPPED_COMPONENTS} (made by `make components`).")
        return str(SHIPPED_COMPONENTS / "encoder"), str(SHIPPED_COMPONENTS / "llm"), shipped
    if not args.components_dir and shipped:
        logger.warning(f"The shipped stand-ins were made for another corpus ({shipped['corpus']}); training new ones.")
    folder = Path(args.components_dir) if args.components_dir else out / "components"
    report = _read_manifest(folder)
    if report and report["corpus"] == spec:
        logger.warning(f"Reusing the pretrained demo stand-ins in {folder}.")
        return str(folder / "encoder"), str(folder / "llm"), report
    if report and args.components_dir:
        raise ValueError(
            f"The stand-ins in {folder} were made for the corpus {report['corpus']}, not this demo's {spec}: their "
            "pretraining may have seen this test split. Pass another --components_dir (they are trained there)."
        )
    if args.components_dir and folder.exists() and any(path.name != BUILDING for path in folder.iterdir()):
        raise FileExistsError(f"--components_dir {folder} holds no {MANIFEST} and is not empty; pass an empty or new folder.")
    settings = (EncoderSettings(steps=args.encoder_steps),
                LLMSettings(steps=args.llm_steps, text_items=args.llm_text_items))  # fmt: skip
    report = build_components(corpus, spec, folder, *settings, seed=args.seed)  # resumes an interrupted build
    return str(folder / "encoder"), str(folder / "llm"), report


def score_stand_ins(encoder_path: str, llm_path: str, test) -> dict:
    """The demo stand-ins alone on the test split: encoder greedy CTC CER and ASR error, LLM text MT BLEU and copy
    accuracy."""
    if not (Path(encoder_path) / CTC_HEAD).exists():
        return {}  # a hub encoder: no CTC head to score it with
    asr = test.filter(lambda task: task == "asr", input_columns="task")
    return {"encoder": evaluate_encoder(encoder_path, asr), "llm": evaluate_llm(llm_path, test)}


def probe_samples(dev, per_label: int) -> dict[str, list[dict]]:
    """A few dev samples per (task, language) label, for the gradient-similarity analysis."""
    probes: dict[str, list[dict]] = {}
    for row in dev.select_columns(["task", "source_language", "target_language", "audio", "text"]):
        if row["task"] == "mt":
            continue
        label = f"asr/{row['source_language']}" if row["task"] == "asr" else f"s2tt/{row['source_language']}-en"
        if len(probes.setdefault(label, [])) < per_label:
            probes[label].append(row)
    return probes


def plot_losses(summary: dict, path: Path) -> None:
    """Training loss per step, coloured by stage, with the stage boundaries marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4))
    offset = 0
    for stage in summary["stages"]:
        entries = summary["losses"][stage["name"]]
        ax.plot([offset + e["step"] for e in entries], [e["loss"] for e in entries], label=stage["name"])
        offset += stage["global_step"]
        ax.axvline(offset, color="grey", lw=0.5, ls="--")
    ax.set_xlabel("optimizer step (all stages)")
    ax.set_ylabel("training loss")
    ax.set_title(f"PART training loss per stage ({summary['schedule']['name']})")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def chance_metrics(train, test, seed: int = 0) -> dict[str, float]:
    """The test metrics of a system that does not listen: each test item is answered with a random training text of
    the same task and languages. The demo's texts share templates ("We need <number> <unit>."), so this level is
    well above zero BLEU; a model that beats it uses the speech (or source text), not only the task prior."""
    rng = random.Random(seed)
    pool: dict[tuple[str, str, str], list[str]] = {}
    for row in train.select_columns(["task", "source_language", "target_language", "text"]):
        pool.setdefault((row["task"], row["source_language"], row["target_language"]), []).append(row["text"])
    columns = test.select_columns(["task", "source_language", "target_language", "text"]).to_dict()
    keys = list(zip(columns["task"], columns["source_language"], columns["target_language"]))
    missing = sorted({key for key in keys if key not in pool})
    if missing:
        raise ValueError(f"The training split has no text for {missing}, which the test split evaluates.")
    predictions = [rng.choice(pool[key]) for key in keys]
    return compute_speech_metrics(predictions, columns["text"], *zip(*keys)) if keys else {}


METRIC_ORDER = ("wer_", "cer_", "asr_avg_error", "bleu_", "s2tt_avg_bleu", "mt_bleu_", "mt_avg_bleu")
"""Rows of the results tables, in this order (by prefix)."""


def _metric_rows(columns: dict[str, dict], prefix: str) -> list[str]:
    names = {key[len(prefix):] if key.startswith(prefix) else key for metrics in columns.values() for key in metrics}
    names = {name for name in names if name.startswith(METRIC_ORDER)}
    rank = lambda name: (next(i for i, p in enumerate(METRIC_ORDER) if name.startswith(p)), name)  # noqa: E731
    return sorted(names, key=rank)


def results_table(columns: dict[str, dict], prefix: str = "test_") -> str:
    """A Markdown table: one row per metric (ASR error per language, BLEU per direction, averages), one column per
    system (`{column name: metrics}`; a metric key may carry `prefix`), "–" where a system has no such metric."""
    rows = _metric_rows(columns, prefix)
    lines = ["| metric (WER/CER: lower is better; BLEU: higher) | " + " | ".join(columns) + " |",
             "|---" * (len(columns) + 1) + "|"]  # fmt: skip
    for name in rows:
        cells = []
        for metrics in columns.values():
            value = metrics.get(prefix + name, metrics.get(name))
            cells.append("–" if value is None else f"{value:.1f}")
        bold = name in ("asr_avg_error", "s2tt_avg_bleu")
        lines.append(f"| {f'**{name}**' if bold else name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def stand_ins_table(stand_ins: dict) -> str:
    """A Markdown table of the stand-ins alone, per language: the encoder's greedy CTC CER and its ASR error (the
    metric PART's ASR is scored with: WER, CER for zh/ja), the LLM's copy accuracy and text MT BLEU."""
    encoder, llm = stand_ins["encoder"], stand_ins["llm"]
    asr_error = encoder.get("asr_error", {})
    dash = lambda value: "–" if value is None else f"{value:.1f}"  # noqa: E731
    lines = ["| language | encoder alone: CTC greedy CER % | encoder alone: ASR WER/CER % | LLM alone: copy accuracy % "
             "| LLM alone: text MT BLEU (→en) |", "|---|---|---|---|---|"]  # fmt: skip
    for language, cer in encoder["cer"].items():
        lines.append(f"| {language} | {cer:.1f} | {dash(asr_error.get(language))} | "
                     f"{dash(llm['copy_accuracy'].get(language))} | {dash(llm['mt_bleu'].get(f'{language}-en'))} |")  # fmt: skip
    lines.append(f"| **average** | {encoder['avg_cer']:.1f} | {dash(encoder.get('asr_avg_error'))} | "
                 f"{llm['copy_avg_accuracy']:.1f} | {llm['mt_avg_bleu']:.1f} |")  # fmt: skip
    return "\n".join(lines)


def plot_stages(columns: dict[str, dict], chance: dict, path: Path, prefix: str = "test_") -> None:
    """ASR average error and S2TT average BLEU after each stage, with the chance levels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(columns)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, metric, label in ((axes[0], "asr_avg_error", "ASR average WER/CER % (lower is better)"),
                              (axes[1], "s2tt_avg_bleu", "S2TT average BLEU (higher is better)")):  # fmt: skip
        values = [columns[name].get(prefix + metric, float("nan")) for name in names]
        ax.plot(range(len(names)), values, marker="o", label="PART after the stage")
        if metric in chance:
            ax.axhline(chance[metric], color="grey", ls="--", label="chance")
        ax.set_xticks(range(len(names)), names, rotation=20, fontsize=8)
        ax.set_title(label, fontsize=10)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def prepare(args: DemoArguments) -> tuple[object, str, str, dict]:
    """The corpus and the pretrained components (built, or reused when already there)."""
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    corpus = build_corpus(
        args.corpus_dir or out / "corpus",
        languages=args.languages,
        train_items_per_language=args.train_items_per_language,
        dev_items=args.test_items,
        test_items=args.test_items,
        seed=args.seed,
        num_workers=args.synthesis_workers,
        reuse_existing=True,
        other_engine_test=args.other_engine_test,
        train_pico_share=args.train_pico_share,
        train_augment_share=args.train_augment_share,
    )
    encoder_path, llm_path, report = prepare_components(args, corpus, out)
    return corpus, encoder_path, llm_path, report


ENCODER_DROPOUT_FIELDS = ("dropout", "hidden_dropout", "attention_dropout", "activation_dropout")
"""Config fields of a speech encoder that hold a dropout probability (SenseVoice-style, Whisper)."""


def load_encoder_with_dropout(name_or_path: str, dropout: float) -> PreTrainedModel:
    """The pretrained encoder (`load_pretrained_audio_encoder`, in float32 as `from_pretrained_components` loads it)
    with every dropout probability of its config set to `dropout`; a negative `dropout` keeps the checkpoint's."""
    if dropout < 0:
        return load_pretrained_audio_encoder(name_or_path, dtype=torch.float32)
    if dropout >= 1:
        raise ValueError(f"--encoder_dropout is a probability below 1 (negative: the checkpoint's), got {dropout}.")
    config = AutoConfig.from_pretrained(name_or_path)
    fields = {name: dropout for name in ENCODER_DROPOUT_FIELDS if isinstance(getattr(config, name, None), float)}
    if not fields:
        logger.warning(f"{name_or_path}'s config ({config.model_type}) has none of {ENCODER_DROPOUT_FIELDS} at its top "
                       "level: its dropout is kept as saved.")  # fmt: skip
    return load_pretrained_audio_encoder(name_or_path, dtype=torch.float32, **fields)


def demo_schedule(args: DemoArguments, schedule: str, mt_weight: float = 0.25) -> Schedule:
    """`schedule` sized for the demo's models: every stage's `encoder_last_k` is `args.encoder_last_k`; for a preset,
    with `args.later_stages_lr_scale`, every stage after the first peaks at that multiple of the run's learning rate
    (a schedule file keeps its own rates)."""
    plan = load_schedule(schedule, mt_weight=mt_weight)
    stages = [dataclasses.replace(stage, encoder_last_k=args.encoder_last_k) for stage in plan.stages]
    if args.later_stages_lr_scale and schedule in PRESETS:
        stages[1:] = [dataclasses.replace(stage, lr_scale=args.later_stages_lr_scale) for stage in stages[1:]]
    return dataclasses.replace(plan, stages=stages)


def _score(pairs: Sequence[tuple[dict, str]]) -> dict[str, float]:
    """`compute_speech_metrics` (uncapped) of (sample, prediction) pairs."""
    if not pairs:
        return {}
    samples, predictions = zip(*pairs)
    columns = [[sample[key] for sample in samples] for key in ("text", "task", "source_language", "target_language")]
    return compute_speech_metrics(list(predictions), *columns)


def scores_by_engine_and_voice(
    test_samples: Sequence[dict],
    test_predictions: Sequence[str],
    other_samples: Sequence[dict] = (),
    other_predictions: Sequence[str] = (),
) -> dict[str, dict[str, float]]:
    """The spoken test rows (asr, s2tt; not mt) scored per engine and per held-out voice, as the test split is scored
    (`compute_speech_metrics`, uncapped WER/CER): `{column: metrics}` with "espeak" (its held-out voices together, all
    languages), "espeak <voice>" for each, and with Pico's rows (`other_*`) "espeak, Pico's languages" (the espeak
    rows of the languages Pico speaks: the comparable column), "pico" and "pico <voice>" for each of its voices."""
    if len(test_samples) != len(test_predictions) or len(other_samples) != len(other_predictions):
        raise ValueError("scores_by_engine_and_voice needs one prediction per sample.")
    espeak = [(s, p) for s, p in zip(test_samples, test_predictions) if s["task"] != "mt"]
    other = [(s, p) for s, p in zip(other_samples, other_predictions) if s["task"] != "mt"]
    columns = {"espeak": _score(espeak)}
    for voice in sorted({speaker_name(s["speaker"]) for s, _ in espeak}):
        columns[f"espeak {voice}"] = _score([(s, p) for s, p in espeak if speaker_name(s["speaker"]) == voice])
    if other:
        languages = {s["source_language"] for s, _ in other}
        columns["espeak, Pico's languages"] = _score([(s, p) for s, p in espeak if s["source_language"] in languages])
        columns["pico"] = _score(other)
        for voice in sorted({speaker_name(s["speaker"]) for s, _ in other}):
            columns[voice] = _score([(s, p) for s, p in other if speaker_name(s["speaker"]) == voice])
    return columns


def _write_predictions(path: Path, samples: Sequence[dict], predictions: Sequence[str]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for sample, prediction in zip(samples, predictions):
            record = {k: sample[k] for k in ("id", "task", "source_language", "target_language", "speaker")}
            record.update(reference=sample["text"], prediction=prediction)
            f.write(json.dumps(record, ensure_ascii=False) + "\n")


def train_and_evaluate(
    args: DemoArguments, corpus, encoder_path: str, llm_path: str, run_dir: Path, schedule: str, seed: int
) -> dict:
    """Assembles a PART model from the components, trains `schedule`, evaluates on the test split.

    Writes the model, `predictions_test.jsonl`, `loss_per_stage.png` and `results.json` into `run_dir` (with
    `evaluate_stages`, each stage's test metrics into its folder), and resumes an interrupted run there. With
    `args.other_engine_test` and a Pico split in `corpus`, also scores the final model on it
    (`predictions_test_pico.jsonl`, `test_pico_*` metrics) and per engine and voice (`scores_by_engine_and_voice`).
    """
    settings = run_settings(args, encoder_path, llm_path)
    finished_run(run_dir, schedule, seed, settings)  # a run already there must be this one
    run_dir.mkdir(parents=True, exist_ok=True)
    record = {"schedule": schedule, "seed": seed, "settings": settings}
    (run_dir / "run_settings.json").write_text(json.dumps(record, indent=2))
    set_seed(seed)
    adapter = {"hidden_size": args.adapter_width, "num_attention_heads": 4, "intermediate_size": 4 * args.adapter_width,
               "downsample_stride": args.adapter_stride}  # fmt: skip
    model, tokenizer = PartForSpeechToText.from_pretrained_components(
        audio_encoder=load_encoder_with_dropout(encoder_path, args.encoder_dropout), llm=llm_path,
        adapter_config=adapter, return_tokenizer=True,
    )
    processor = PartProcessor.for_model(model.config, tokenizer, PartFeatureExtractor.from_pretrained(encoder_path))
    probes = build_probe_batches(processor, probe_samples(corpus["dev"], args.probes_per_label))
    training_args = PartTrainingArguments(
        output_dir=str(run_dir),
        schedule=schedule,
        max_steps=args.max_steps,
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=args.eval_batch_size,
        learning_rate=args.learning_rate,
        warmup_steps=args.warmup_steps,
        logging_steps=10,
        save_steps=200,
        save_total_limit=1,
        report_to=[],
        seed=seed,
        use_cpu=not torch.cuda.is_available(),
        bf16=torch.cuda.is_available(),
        lr_scheduler_type="cosine",
        length_grouping_batches=0 if args.max_tokens_per_batch or args.max_audio_seconds_per_batch else 20,
        max_tokens_per_batch=args.max_tokens_per_batch,
        max_audio_seconds_per_batch=args.max_audio_seconds_per_batch,
        lora_r=args.lora_rank or None,
        lora_alpha=2 * args.lora_rank if args.lora_rank else None,
        lora_dropout=args.lora_dropout if args.lora_dropout >= 0 else None,
    )
    plan = demo_schedule(args, schedule, mt_weight=training_args.mt_weight)
    test_samples = corpus["test"].to_list()
    callbacks = [GradientSimilarityCallback(probes)]
    if args.evaluate_stages:  # every stage but the last: the final model below is that one
        callbacks.append(StageEvaluationCallback(test_samples, stages=[stage.name for stage in plan.stages[:-1]]))
    trainer = PartTrainer(
        model=model, args=training_args, train_components=corpus_components(corpus["train"]), processor=processor,
        schedule=plan, callbacks=callbacks,
    )  # fmt: skip
    trainer.train(resume_from_checkpoint=any(run_dir.glob("stage-*")))

    started = time.time()
    metrics, predictions = trainer.evaluate_generation(test_samples, metric_key_prefix="test")
    evaluation_seconds = time.time() - started
    _write_predictions(run_dir / "predictions_test.jsonl", test_samples, predictions)
    other_samples, other_predictions, other_metrics = [], [], {}
    started = time.time()
    if args.other_engine_test and PICO_TEST_SPLIT in corpus:
        other_samples = corpus[PICO_TEST_SPLIT].to_list()
        other_metrics, other_predictions = trainer.evaluate_generation(other_samples, metric_key_prefix=PICO_TEST_SPLIT)
        _write_predictions(run_dir / f"predictions_{PICO_TEST_SPLIT}.jsonl", other_samples, other_predictions)
    engines = scores_by_engine_and_voice(test_samples, predictions, other_samples, other_predictions)
    other_seconds = time.time() - started
    summary = json.loads((run_dir / "training_summary.json").read_text())
    plot_losses(summary, run_dir / "loss_per_stage.png")
    stages = read_stage_metrics(run_dir)
    stages[summary["stages"][-1]["name"]] = metrics
    results = {**record, "metrics": metrics, "stage_metrics": stages,
               f"{PICO_TEST_SPLIT}_metrics": other_metrics, "engine_voice_metrics": engines,
               "training_seconds": summary["total_seconds"], "evaluation_seconds": evaluation_seconds,
               "other_engine_seconds": other_seconds}  # fmt: skip
    (run_dir / "results.json").write_text(json.dumps(results, indent=2))
    return results


def run_demo(args: DemoArguments) -> dict:
    """The whole demo; prints the results tables, where the time went and where the files are."""
    started = time.time()
    timings: dict[str, float] = {}
    corpus, encoder_path, llm_path, component_report = prepare(args)
    timings["corpus and stand-ins"] = time.time() - started
    mark = time.time()
    stand_ins = score_stand_ins(encoder_path, llm_path, corpus["test"])
    timings["scoring the stand-ins alone"] = time.time() - mark
    run_dir = Path(args.output_dir) / "part"
    mark = time.time()
    results = train_and_evaluate(args, corpus, encoder_path, llm_path, run_dir, args.schedule, args.seed)
    timings["PART training (all stages)"] = results["training_seconds"]
    timings["test evaluation of the final model"] = results["evaluation_seconds"]
    timings["Pico split, engines and voices"] = results["other_engine_seconds"]
    timings["stage evaluations, probes, saving"] = time.time() - mark - sum(list(timings.values())[-3:])
    write_model_card(
        run_dir,
        metrics=results["metrics"],
        dataset_name="PART demo corpus (synthetic espeak-ng speech)",
        synthetic_data=True,
        model_name="PART demo model",
    )
    chance = chance_metrics(corpus["train"], corpus["test"], seed=args.seed)
    columns = {"chance": chance, **results["stage_metrics"]}
    plot_stages(results["stage_metrics"], chance, run_dir / "scores_per_stage.png")
    tables = {"stages": results_table(columns), "engines": results_table(results["engine_voice_metrics"])}
    if stand_ins:
        tables["stand_ins"] = stand_ins_table(stand_ins)
    timings["total"] = time.time() - started
    results.update(
        chance_metrics=chance, stand_ins=stand_ins, arguments=asdict(args), components=component_report,
        timings=timings, total_seconds=timings["total"], tables=tables,
    )  # fmt: skip
    (run_dir / "results.json").write_text(json.dumps(results, indent=2))
    print("\nTest split (held-out texts and held-out voices), after each stage; the last column is the PART model:")
    print(tables["stages"])
    other = "; Pico: the same items spoken by SVOX Pico" if results[f"{PICO_TEST_SPLIT}_metrics"] else ""
    print(f"\nThe PART model per engine and held-out voice (espeak: the test split{other}; spoken rows only):")
    print(tables["engines"])
    if stand_ins:
        print("\nThe pretrained stand-ins alone on the test split:")
        print(tables["stand_ins"])
    print("\nWhere the time went:")
    for name, seconds in timings.items():
        print(f"  {name:<40}{seconds / 60:6.1f} min")
    print(f"\nFiles in {run_dir}/:")
    print("  the trained PART model (LoRA merged) + processor + model card (README.md) + training_summary.json")
    print("  results.json (test metrics, per stage, per engine and voice, stand-ins, chance, timings)")
    print(f"  predictions_test.jsonl (and predictions_{PICO_TEST_SPLIT}.jsonl with --other_engine_test)")
    print("  loss_per_stage.png, scores_per_stage.png (test scores after each stage)")
    print("  gradient_similarity_stages.png, stage-*/gradient_similarity.png (the paper's Fig. 3 analysis)")
    return results


def main(argv: Sequence[str] | None = None) -> dict:
    (args,) = HfArgumentParser(DemoArguments).parse_args_into_dataclasses(args=argv)
    logging.set_verbosity_warning()
    return run_demo(args)


if __name__ == "__main__":
    main()
