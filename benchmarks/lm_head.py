"""One PART training step at a Qwen-sized vocabulary (151,936), with the target-only LM head vs full logits.

Each variant runs in a fresh process (peak RSS is per process); prints step time (median of repeats) and peak
memory, and their ratios. Usage: python benchmarks/lm_head.py [--repeats 3] [--json out.json]

The full suite (`make bench`, benchmarks/run_benchmarks.py) includes this ablation (`part_full_logits`) next to the
comparison with transformers' FunAsrNanoForConditionalGeneration; this script is the standalone version.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import VOCAB, full_logits_loss  # noqa: E402,F401 - full_logits_loss: kept importable from here


def build(vocab: int = VOCAB):
    import numpy as np
    import torch

    from modeling_part.tiny import build_processor, build_tokenizer, tiny_part_config
    from modeling_part import PartForSpeechToText

    torch.manual_seed(0)
    tokenizer = build_tokenizer()
    config = tiny_part_config(
        vocab_size=vocab, audio_token_id=tokenizer.convert_tokens_to_ids("<|AUDIO|>"), width=256, llm_width=512,
        encoder_layers=4, llm_layers=4, heads=4,
    )
    model = PartForSpeechToText(config).train()
    processor = build_processor(config, tokenizer)
    rng = np.random.default_rng(0)
    audio = [(0.1 * rng.standard_normal(16000 * 6)).astype(np.float32) for _ in range(8)]
    targets = [" ".join(["word"] * 24)] * 8
    batch = processor(audio=audio, sampling_rate=16000, task="asr", source_language="en", text=targets)
    return model, batch


def run_variant(variant: str, repeats: int) -> dict:
    import torch

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    model, batch = build()
    times = []
    for _ in range(repeats + 1):  # the first step warms up
        model.zero_grad(set_to_none=True)
        start = time.perf_counter()
        loss = model(**batch).loss if variant == "target_only" else full_logits_loss(model, batch)
        loss.backward()
        times.append(time.perf_counter() - start)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"variant": variant, "step_seconds": statistics.median(times[1:]), "min": min(times[1:]),
            "max": max(times[1:]), "peak_rss_mib": peak_mib, "loss": float(loss)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", default=None)
    parser.add_argument("--variant", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args.variant, args.repeats)))
        return
    results = {}
    for variant in ("full_logits", "target_only"):
        out = subprocess.run([sys.executable, __file__, "--variant", variant, "--repeats", str(args.repeats)],
                             capture_output=True, text=True, check=True,
                             env=dict(os.environ, OMP_WAIT_POLICY=os.environ.get("OMP_WAIT_POLICY", "PASSIVE")))
        results[variant] = json.loads(out.stdout.strip().splitlines()[-1])
    full, ours = results["full_logits"], results["target_only"]
    print(f"vocabulary {VOCAB:,}, batch 8 x 6 s audio, 24 target tokens each")
    for r in (full, ours):
        print(f"  {r['variant']:12s} step {r['step_seconds']:.3f} s (min {r['min']:.3f}, max {r['max']:.3f})"
              f"  peak RSS {r['peak_rss_mib']:.0f} MiB  loss {r['loss']:.4f}")
    print(f"  target-only / full: step time {ours['step_seconds'] / full['step_seconds']:.2f}x, "
          f"peak memory {ours['peak_rss_mib'] / full['peak_rss_mib']:.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
