"""Worker: peak memory of one training step (forward + backward) of one variant, in a fresh process.

Reports the process peak RSS (`ru_maxrss`: interpreter, libraries, model, batch and the step) and the step's own
high-water mark above the RSS right before it (allocator caches released first; the second step is reported,
the first one too). Usage: python benchmarks/bench_memory.py --variant part|peer [--dims JSON] [--llm-frozen]
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import (  # noqa: E402
    Dims,
    build_part,
    build_peer,
    build_processors,
    build_tokenizer,
    emit_result,
    full_logits_train_step,
    log,
    measure_peak,
    parameter_count,
    part_config,
    process_peak_bytes,
    release_memory,
    rss_bytes,
    set_threads,
    train_step,
    training_batches,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--variant", choices=("part", "peer", "part_full_logits"), required=True)
    parser.add_argument("--dims", default="{}")
    parser.add_argument("--llm-frozen", action="store_true")
    parser.add_argument("--sparse-embedding-grad", action="store_true",
                        help="what-if: the input-embedding lookup makes a sparse gradient (nn.Embedding.sparse), so "
                             "the tied embedding/LM head does not get a second dense vocab x width gradient")
    args = parser.parse_args()

    threads = set_threads()
    import torch  # noqa: F401 - imported by set_threads; the RSS below includes it
    import transformers  # noqa: F401

    import modeling_part  # noqa: F401
    import trainers  # noqa: F401

    release_memory()
    rss_imports = rss_bytes()
    dims = Dims(**json.loads(args.dims))
    tokenizer = build_tokenizer()
    log(f"memory: {args.variant} in a fresh process")
    if args.variant in ("part", "part_full_logits"):
        model = build_part(dims, tokenizer)
        processor_config = model.config
    else:
        model = build_peer(dims, tokenizer)
        processor_config = part_config(dims, tokenizer)  # the config only: PART's processor makes PART's prompts
    model.train()
    if args.sparse_embedding_grad:
        model.get_input_embeddings().sparse = True
    if args.llm_frozen:
        llm = model.model.language_model if args.variant == "peer" else model.language_model
        for parameter in [*llm.parameters(), *model.get_output_embeddings().parameters()]:
            parameter.requires_grad_(False)
    part_processor, peer_processor = build_processors(processor_config, tokenizer)
    part_batch, peer_batch = training_batches(dims, part_processor, peer_processor, tokenizer)
    batch = peer_batch if args.variant == "peer" else part_batch
    del part_batch, peer_batch
    step = full_logits_train_step if args.variant == "part_full_logits" else train_step
    release_memory()
    rss_built = rss_bytes()
    first = measure_peak(lambda: step(model, batch), model)
    second = measure_peak(lambda: step(model, batch), model)
    parameters = parameter_count(model)
    emit_result({
        "variant": args.variant,
        "llm_frozen": args.llm_frozen,
        "sparse_embedding_grad": args.sparse_embedding_grad,
        "threads": threads,
        "parameters": parameters,
        "parameter_bytes": 4 * parameters,
        "rss_after_imports": rss_imports,
        "rss_after_build": rss_built,
        "first_step": {k: first[k] for k in ("before", "peak", "delta", "reset_ok")},
        "step": {k: second[k] for k in ("before", "peak", "delta", "reset_ok")},
        "process_peak": process_peak_bytes(),
        "loss": second["out"],
    })


if __name__ == "__main__":
    main()
