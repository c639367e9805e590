"""The main job (`make demo`): PART end to end on the embedded multilingual corpus, on a CPU, with no network.

1. synthesise the corpus (espeak-ng speech in 8 languages, exact transcripts and translations);
2. make small pretrained components (BPE tokenizer, CTC-trained SenseVoice-style encoder, Qwen2-style LLM) —
   or take `--audio_encoder` / `--llm` hub ids or folders;
3. assemble the PART model with `PartForSpeechToText.from_pretrained_components`;
4. train the `part` schedule (or `--schedule`) with `PartTrainer`, with the gradient-similarity analysis;
5. evaluate on the test split (WER/CER per language, BLEU per direction), write plots, results and a model card,
   and print the results table.

    python examples/demo/run_demo.py --output_dir outputs/demo
"""

from __future__ import annotations

import json
import random
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402
from transformers import HfArgumentParser, set_seed  # noqa: E402
from transformers.utils import logging  # noqa: E402

from examples.demo.corpus import build_corpus  # noqa: E402
from examples.demo.texts import LANGUAGES  # noqa: E402
from examples.demo.pretrain import EncoderSettings, LLMSettings, pretrain_encoder, pretrain_llm, train_tokenizer  # noqa: E402
from model_cards import write_model_card  # noqa: E402
from modeling_part import PartFeatureExtractor, PartForSpeechToText, PartProcessor  # noqa: E402
from trainers import MixtureComponent, PartTrainer, PartTrainingArguments  # noqa: E402
from trainers.callbacks import GradientSimilarityCallback, build_probe_batches  # noqa: E402
from trainers.metrics import compute_speech_metrics  # noqa: E402

logger = logging.get_logger("part.demo")


@dataclass
class DemoArguments:
    """Settings of the demo; the defaults fit `make demo` into 30 minutes on 2 CPU cores."""

    output_dir: str = field(default="outputs/demo", metadata={"help": "Where everything is written."})
    seed: int = field(default=0, metadata={"help": "Seed for the corpus, the components and PART training."})
    schedule: str = field(default="part", metadata={"help": "A preset or a JSON/YAML schedule file."})
    max_steps: int = field(default=1000, metadata={"help": "PART optimizer steps over all stages."})
    batch_size: int = field(default=16, metadata={"help": "PART training batch size."})
    learning_rate: float = field(
        default=1e-3, metadata={"help": "Peak learning rate of the first stage (the presets' later: x0.3, x0.2)."}
    )
    warmup_steps: float = field(
        default=0.05, metadata={"help": "Warm-up of each stage: a share of its steps if < 1, else a number of steps."}
    )
    eval_batch_size: int = field(default=32, metadata={"help": "Batch size of test-set generation."})
    languages: list[str] = field(default_factory=lambda: list(LANGUAGES), metadata={"help": "Corpus languages."})
    train_items_per_language: int = field(default=500, metadata={"help": "Corpus size (training items/language)."})
    test_items: int = field(default=40, metadata={"help": "Test items per language."})
    encoder_steps: int = field(default=800, metadata={"help": "CTC pretraining steps of the demo encoder."})
    llm_steps: int = field(default=500, metadata={"help": "Pretraining steps of the demo LLM."})
    audio_encoder: str | None = field(default=None, metadata={"help": "A pretrained encoder (hub id or folder)."})
    llm: str | None = field(default=None, metadata={"help": "A pretrained causal LM (hub id or folder)."})
    corpus_dir: str | None = field(default=None, metadata={"help": "Reuse a corpus here (default output_dir/corpus)."})
    components_dir: str | None = field(default=None, metadata={"help": "Reuse pretrained components from here."})
    probes_per_label: int = field(default=4, metadata={"help": "Dev samples per (task, language) gradient probe."})
    adapter_width: int = field(default=256, metadata={"help": "Width of the new adapter (4x in its feed-forward)."})


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


def prepare_components(args: DemoArguments, corpus, out: Path) -> tuple[str, str, dict]:
    """Pretrained encoder and LLM folders: given ones, reused ones, or freshly made from the corpus."""
    if args.audio_encoder and args.llm:
        return args.audio_encoder, args.llm, {}
    folder = Path(args.components_dir) if args.components_dir else out / "components"
    encoder_dir, llm_dir, done = folder / "encoder", folder / "llm", folder / "components.json"
    if done.exists():
        logger.warning(f"Reusing the pretrained demo components in {folder}")
        return str(encoder_dir), str(llm_dir), json.loads(done.read_text())
    shutil.rmtree(folder, ignore_errors=True)
    tokenizer = train_tokenizer(corpus["train"], folder / "tokenizer")
    report = {
        "encoder": pretrain_encoder(corpus["train"], encoder_dir, EncoderSettings(steps=args.encoder_steps), args.seed),
        "llm": pretrain_llm(corpus["train"], tokenizer, llm_dir, LLMSettings(steps=args.llm_steps), args.seed),
    }
    done.write_text(json.dumps(report, indent=2))
    return str(encoder_dir), str(llm_dir), report


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


def results_table(metrics: dict, prefix: str = "test_", chance: dict | None = None) -> str:
    """A plain-text table: ASR error per language, BLEU per direction, averages (and the chance level, if given)."""
    lines = [f"{'metric':<22}{'PART':>8}" + (f"{'chance':>9}" if chance else "")]
    for key in sorted(metrics):
        name = key[len(prefix) :] if key.startswith(prefix) else key
        if name.startswith(("wer_", "cer_", "bleu_", "mt_bleu_")) or name in ("asr_avg_error", "s2tt_avg_bleu", "mt_avg_bleu"):
            line = f"{name:<22}{metrics[key]:>8.2f}"
            if chance and name in chance:
                line += f"{chance[name]:>9.2f}"
            lines.append(line)
    if chance:
        lines.append("(chance: a random training text of the same task and language; lower WER/CER, higher BLEU wins)")
    return "\n".join(lines)


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
        reuse_existing=True,
    )
    encoder_path, llm_path, report = prepare_components(args, corpus, out)
    return corpus, encoder_path, llm_path, report


def train_and_evaluate(
    args: DemoArguments, corpus, encoder_path: str, llm_path: str, run_dir: Path, schedule: str, seed: int
) -> dict:
    """Assembles a PART model from the components, trains `schedule`, evaluates on the test split.

    Writes the model, `predictions_test.jsonl`, `loss_per_stage.png` and `results.json` into `run_dir`, and
    resumes an interrupted run there.
    """
    set_seed(seed)
    adapter = {"hidden_size": args.adapter_width, "num_attention_heads": 4, "intermediate_size": 4 * args.adapter_width}
    model, tokenizer = PartForSpeechToText.from_pretrained_components(
        audio_encoder=encoder_path, llm=llm_path, adapter_config=adapter, return_tokenizer=True
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
        length_grouping_batches=20,
    )
    trainer = PartTrainer(
        model=model,
        args=training_args,
        train_components=corpus_components(corpus["train"]),
        processor=processor,
        callbacks=[GradientSimilarityCallback(probes)],
    )
    trainer.train(resume_from_checkpoint=any(run_dir.glob("stage-*")))

    test_samples = corpus["test"].to_list()
    metrics, predictions = trainer.evaluate_generation(test_samples, metric_key_prefix="test")
    with open(run_dir / "predictions_test.jsonl", "w", encoding="utf-8") as f:
        for sample, prediction in zip(test_samples, predictions):
            record = {k: sample[k] for k in ("id", "task", "source_language", "target_language")}
            f.write(json.dumps({**record, "reference": sample["text"], "prediction": prediction}, ensure_ascii=False) + "\n")
    summary = json.loads((run_dir / "training_summary.json").read_text())
    plot_losses(summary, run_dir / "loss_per_stage.png")
    results = {"schedule": schedule, "seed": seed, "metrics": metrics, "training_seconds": summary["total_seconds"]}
    (run_dir / "results.json").write_text(json.dumps(results, indent=2))
    return results


def run_demo(args: DemoArguments) -> dict:
    """The whole demo; prints the results table and where the files are."""
    started = time.time()
    corpus, encoder_path, llm_path, component_report = prepare(args)
    run_dir = Path(args.output_dir) / "part"
    results = train_and_evaluate(args, corpus, encoder_path, llm_path, run_dir, args.schedule, args.seed)
    write_model_card(
        run_dir,
        metrics=results["metrics"],
        dataset_name="PART demo corpus (synthetic espeak-ng speech)",
        synthetic_data=True,
        base_models={"encoder": args.audio_encoder, "llm": args.llm} if args.audio_encoder and args.llm else None,
        model_name="PART demo model",
    )
    chance = chance_metrics(corpus["train"], corpus["test"], seed=args.seed)
    results.update(
        chance_metrics=chance, arguments=asdict(args), components=component_report, total_seconds=time.time() - started
    )
    (run_dir / "results.json").write_text(json.dumps(results, indent=2))
    print("\n" + results_table(results["metrics"], chance=chance))
    print(f"\nDone in {results['total_seconds'] / 60:.1f} min. Files in {run_dir}/:")
    print("  the trained PART model (LoRA merged) + processor + model card (README.md) + training_summary.json")
    print("  results.json (test metrics), predictions_test.jsonl (every test prediction)")
    print("  loss_per_stage.png (training loss per stage)")
    print("  gradient_similarity_stages.png, stage-*/gradient_similarity.png (the paper's Fig. 3 analysis)")
    return results


def main(argv: Sequence[str] | None = None) -> dict:
    (args,) = HfArgumentParser(DemoArguments).parse_args_into_dataclasses(args=argv)
    logging.set_verbosity_warning()
    return run_demo(args)


if __name__ == "__main__":
    main()
