"""Worker: peak memory of one training step (forward + backward) of one variant, in a fresh process.

Reports the process peak RSS (`ru_maxrss`: interpreter, libraries, model, batch and the step), the RSS after the
imports and after building the model and batch, and the step's own high-water mark above the RSS right before it
(allocator caches released first; the second step is reported, the first one too).
Usage: python benchmarks/bench_memory.py --variant part|peer|part_full_logits [--dims JSON] [--llm-frozen]
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import (  # noqa: E402
    Dims,
    batches,
    build_part,
    build_peer,
    build_processors,
    build_tokenizer,
    emit_result,
    log,
    measure_peak,
    part_config,
    process_peak_bytes,
    release_memory,
    rss_bytes,
    set_llm_trainable,
    set_threads,
    train_step,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--variant", choices=("part", "peer", "part_full_logits"), required=True)
    parser.add_argument("--dims", default="{}")
    parser.add_argument("--llm-frozen", action="store_true")
    args = parser.parse_args()

    set_threads()
    import transformers  # noqa: F401 - the RSS after imports includes the libraries the step needs

    import modeling_part  # noqa: F401
    import trainers  # noqa: F401

    release_memory()
    rss_imports = rss_bytes()
    dims = Dims(**json.loads(args.dims))
    tokenizer = build_tokenizer()
    log(f"memory: {args.variant} in a fresh process")
    peer = args.variant == "peer"
    model = (build_peer if peer else build_part)(dims, tokenizer).train()
    set_llm_trainable(model, not args.llm_frozen)
    # PART's config for both: the processors make PART's prompts, and the peer's with one placeholder per frame
    processors = build_processors(part_config(dims, tokenizer) if peer else model.config, tokenizer)
    batch = batches(dims, *processors, tokenizer)[1 if peer else 0]
    release_memory()
    rss_built = rss_bytes()
    steps = [measure_peak(lambda: train_step(model, batch, full_logits=args.variant == "part_full_logits"), model)
             for _ in range(2)]
    emit_result({
        "variant": args.variant,
        "llm_frozen": args.llm_frozen,
        "rss_after_imports": rss_imports,
        "rss_after_build": rss_built,
        "first_step": {k: v for k, v in steps[0].items() if k != "out"},
        "step": {k: v for k, v in steps[1].items() if k != "out"},
        "process_peak": process_peak_bytes(),
        "loss": steps[1]["out"],
    })


if __name__ == "__main__":
    main()
