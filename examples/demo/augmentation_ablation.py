"""What each augmentation of the demo encoder buys on voices it never heard: the CTC encoder of `make components`
trained with no augmentation, with each augmentation alone (speed perturbation, additive noise, SpecAugment), and
with all three, for the same number of steps; each is scored by greedy CTC CER on the dev split (held-out texts,
training voices) and on the test split (held-out texts, held-out voices). The gap between the two is what the
unheard voices cost.

    python examples/demo/augmentation_ablation.py --output_dir outputs/augmentation   # make augmentation

Each variant's result is kept in `output_dir/<variant>/result.json`, so an interrupted run resumes.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from examples.demo.corpus import build_corpus  # noqa: E402
from examples.demo.pretrain import ComponentArguments, EncoderSettings, evaluate_encoder, pretrain_encoder  # noqa: E402

NO_AUGMENTATION = EncoderSettings(speed_factors=(1.0,), noise_snr_db=None, spec_augment=False)
VARIANTS: dict[str, EncoderSettings] = {
    "none": NO_AUGMENTATION,
    "speed": replace(NO_AUGMENTATION, speed_factors=EncoderSettings.speed_factors),
    "noise": replace(NO_AUGMENTATION, noise_snr_db=EncoderSettings.noise_snr_db),
    "specaugment": replace(NO_AUGMENTATION, spec_augment=True),
    "all": EncoderSettings(),
}
"""Encoder settings per variant; "all" is what `make components` uses."""


@dataclass
class AblationArguments:
    output_dir: str = field(default="outputs/augmentation", metadata={"help": "Where results and plot go."})
    corpus_dir: str = field(default=ComponentArguments.corpus_dir, metadata={"help": "The components' corpus."})
    train_items_per_language: int = field(default=ComponentArguments.train_items_per_language)
    steps: int = field(default=1000, metadata={"help": "CTC steps of every variant."})
    variants: list[str] = field(default_factory=lambda: list(VARIANTS), metadata={"help": "Variants to run."})
    seed: int = field(default=0)


def plot(results: dict[str, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = list(results)
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(7, 3.6))
    ax.bar(x - 0.2, [results[n]["dev"]["avg_cer"] for n in names], 0.4, label="dev: training voices")
    ax.bar(x + 0.2, [results[n]["test"]["avg_cer"] for n in names], 0.4, label="test: held-out voices")
    ax.set_xticks(x, names)
    ax.set_ylabel("greedy CTC CER % (lower is better)")
    ax.set_title("Demo encoder: what each augmentation buys")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> dict:
    from transformers import HfArgumentParser

    (args,) = HfArgumentParser(AblationArguments).parse_args_into_dataclasses(args=argv)
    unknown = sorted(set(args.variants) - set(VARIANTS))
    if unknown:
        raise ValueError(f"Unknown variants {unknown}; choose from {', '.join(VARIANTS)}.")
    defaults = ComponentArguments()
    corpus = build_corpus(
        args.corpus_dir, languages=defaults.languages, train_items_per_language=args.train_items_per_language,
        dev_items=defaults.dev_items, test_items=defaults.test_items, seed=defaults.corpus_seed, reuse_existing=True,
    )  # fmt: skip
    asr = {split: corpus[split].filter(lambda task: task == "asr", input_columns="task") for split in corpus}
    out = Path(args.output_dir)
    results = {}
    for name in args.variants:
        folder = out / name
        done = folder / "result.json"
        if not done.exists():
            settings = replace(VARIANTS[name], steps=args.steps)
            report = pretrain_encoder(asr["train"], folder, settings, args.seed)
            report.update(dev=evaluate_encoder(folder, asr["dev"]), test=evaluate_encoder(folder, asr["test"]))
            done.write_text(json.dumps(report, indent=2))
        results[name] = json.loads(done.read_text())
    lines = [f"CTC encoder of the demo, {args.steps} steps per variant, greedy CTC CER % on 320 utterances per split.",
             "", "| augmentation | dev (training voices) | test (held-out voices) | gap |", "|---|---|---|---|"]  # fmt: skip
    for name, result in results.items():
        dev, test = result["dev"]["avg_cer"], result["test"]["avg_cer"]
        lines.append(f"| {name} | {dev:.1f} | {test:.1f} | {test - dev:+.1f} |")
    (out / "results.md").write_text("\n".join(lines) + "\n")
    plot(results, out / "augmentation.png")
    print("\n".join(lines))
    return results


if __name__ == "__main__":
    main()
