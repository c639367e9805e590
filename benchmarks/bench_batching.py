"""Worker: token-budget batches vs fixed-size batches on a long-tailed mixture (`make bench`'s `batching` section).

The corpus: durations from a lognormal matched to FLEURS-like read speech (median 9.5 s, sigma 0.55, kept within
1-30 s), tasks 40% asr / 40% s2tt / 20% mt, targets of 2.5 words per second of speech (an "mt" sample's source and
target come from a duration drawn the same way). Batches come from `trainers.data.MixtureDataset` as PartTrainer
draws them; LLM positions are counted by `processor_positions` (prompt + audio placeholders + target + EOS) and
encoder frames by the feature extractor, both from PART's processor at the suite's dimensions.

Measured:
  padding   the share of padded encoder frames and LLM positions (together and each) over `--padding-samples`
            samples, for fixed batches of `--batch-size` (drawn in order, and length-grouped over 50 batches) and
            for token-budget batches of `--max-tokens` LLM positions.
  throughput audio seconds trained per second (forward, backward and AdamW step of PART at the suite's dimensions)
            at equal peak memory: the token budget's peak step memory is the largest over the batches it trains on;
            the fixed batch size is the largest whose worst case (every clip 30 s, the longest the corpus holds)
            stays within it. Token-budget and fixed steps interleave (`--rounds` rounds of `--steps` steps each), fixed
            batches length-grouped and in draw order.
  packing   a what-if for padding-free packing of the LLM input: forward and backward of the LLM alone on inputs of
            the LLM lengths of real batches (token budget, fixed in draw order), padded (attention mask) against
            packed into one row (`position_ids` restarting per sample, no mask: transformers then builds the
            block-diagonal mask for sdpa/eager). Steps interleave over `--packing-batches` batches per kind.

The model: the suite's dimensions with an 8,000-token vocabulary, so that the LLM body (where padding costs) and not
the LM head over the targets dominates a step, as in a real PART LLM (Qwen2.5-1.5B: about 3 GFLOP per position in
the body, 0.5 GFLOP per target in the 152k head); the suite's 152k vocabulary on a 4-layer, 512-wide LLM inverts
that. On a CPU a step's time follows its real (unpadded) work, whatever the batch size: the gain measured here is
padding and per-step costs (optimizer step, launch overhead); on an accelerator, small fixed batches also leave it
underused.

Usage: python benchmarks/bench_batching.py [--dims JSON] [--max-tokens 1500] [--rounds 3] [--steps 2]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import zlib
from itertools import islice
from statistics import median

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import (  # noqa: E402
    Dims,
    SAMPLE_RATE,
    build_part,
    build_processors,
    build_tokenizer,
    emit_result,
    log,
    make_audio,
    measure_peak,
    part_config,
    set_threads,
)

WORDS = "the quick brown fox jumps over the lazy dog".split()
MEDIAN_SECONDS, SIGMA, SHORTEST, LONGEST = 9.5, 0.55, 1.0, 30.0
TASK_SHARES = {"asr": 0.4, "s2tt": 0.4, "mt": 0.2}
WORDS_PER_SECOND = 2.5
SECTION_VOCAB = 8000  # the LLM body, not the LM head, dominates the step, as in a real PART LLM (see the docstring)


def durations(count: int, seed: int):
    import numpy as np

    rng = np.random.default_rng(seed)
    return np.clip(rng.lognormal(np.log(MEDIAN_SECONDS), SIGMA, count), SHORTEST, LONGEST).round(2).tolist()


def sentence(seconds: float, offset: int) -> str:
    return " ".join(WORDS[(offset + i) % len(WORDS)] for i in range(max(1, round(WORDS_PER_SECOND * seconds))))


def components(size: int, seed: int = 0):
    """One component per task (sizes in TASK_SHARES), samples with `duration` and texts; audio is made on demand."""
    from datasets import Dataset

    from trainers.data import MixtureComponent

    result = []
    for index, (task, share) in enumerate(TASK_SHARES.items()):
        count = round(size * share)
        seconds = durations(count, seed + index)
        rows = {"id": [f"{task}-{i}" for i in range(count)], "text": [sentence(s, i) for i, s in enumerate(seconds)]}
        if task == "mt":
            rows["source_text"] = [sentence(s, i + 3) for i, s in enumerate(seconds)]
        else:
            rows["duration"] = seconds
            rows["audio"] = [f"synthetic:{seed + index}:{i}" for i in range(count)]  # made by `materialise`
        source, target = ("en", "en") if task == "asr" else ("de", "en")
        result.append(MixtureComponent(task, Dataset.from_dict(rows), task, source, target))
    return result


def padding_shares(batches, positions, frames) -> dict:
    """Padded share of LLM positions and of encoder frames (speech samples only) over `batches`."""
    llm_real = llm_padded = enc_real = enc_padded = 0
    for batch in batches:
        lengths = [positions(s) for s in batch]
        llm_real, llm_padded = llm_real + sum(lengths), llm_padded + len(batch) * max(lengths)
        speech = [frames(s) for s in batch if s["task"] != "mt"]
        if speech:
            enc_real, enc_padded = enc_real + sum(speech), enc_padded + len(speech) * max(speech)
    return {"llm": 1 - llm_real / llm_padded, "encoder": 1 - enc_real / enc_padded,
            "together": 1 - (llm_real + enc_real) / (llm_padded + enc_padded),
            "batches": len(batches), "mean_batch_size": sum(map(len, batches)) / len(batches),
            "audio_seconds": sum(s.get("duration", 0.0) for b in batches for s in b)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dims", default="{}")
    parser.add_argument("--max-tokens", type=int, default=1500, help="token budget: padded LLM positions per batch")
    parser.add_argument("--batch-size", type=int, default=16, help="fixed batch size of the padding comparison")
    parser.add_argument("--padding-samples", type=int, default=4000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=2, help="steps per variant and round")
    parser.add_argument("--memory-batches", type=int, default=4, help="token-budget batches whose peak is measured")
    parser.add_argument("--packing-batches", type=int, default=6, help="batches per kind of the packing what-if")
    args = parser.parse_args()
    set_threads()
    import torch

    from trainers.collator import PartDataCollator
    from trainers.data import LengthGrouping, MixtureDataset, TokenBudget, processor_positions

    dims = Dims(**{"vocab_size": SECTION_VOCAB, **json.loads(args.dims)})
    tokenizer = build_tokenizer()
    processor = build_processors(part_config(dims, tokenizer), tokenizer)[0]
    positions = processor_positions(processor)
    frames = lambda s: processor.feature_extractor.num_frames(int(s["duration"] * SAMPLE_RATE))  # noqa: E731
    corpus = components(4000)
    budget = TokenBudget(max_tokens=args.max_tokens, buffer_size=1000, positions_fn=positions)

    def stream(kind: str, batch_size: int = args.batch_size):
        """Batches (lists of samples) of one kind, as the mixture yields them."""
        if kind == "budget":
            return iter(MixtureDataset(corpus, seed=0, token_budget=budget))
        grouping = LengthGrouping(batch_size, buffer_batches=50) if kind == "grouped" else None
        samples = iter(MixtureDataset(corpus, seed=0, length_grouping=grouping))
        return iter(lambda: list(islice(samples, batch_size)), None)

    log("batching: padding shares")
    padding = {}
    for kind in ("fixed", "grouped", "budget"):
        batches, count = [], 0
        for batch in stream(kind):
            batches.append(batch)
            count += len(batch)
            if count >= args.padding_samples:
                break
        padding[kind] = padding_shares(batches, positions, frames)
        log(f"  {kind}: {padding[kind]['together']:.3f} padded (LLM {padding[kind]['llm']:.3f}, encoder "
            f"{padding[kind]['encoder']:.3f}), {padding[kind]['mean_batch_size']:.1f} samples/batch")

    # -- throughput at equal peak memory ------------------------------------------------------------------------
    collator = PartDataCollator(processor)
    audio_cache: dict[str, object] = {}

    def materialise(batch):
        """Samples with synthetic audio of their duration (made once per sample)."""
        out = []
        for sample in batch:
            if sample["task"] != "mt" and sample["id"] not in audio_cache:
                seed = zlib.crc32(sample["id"].encode()) % 1000
                audio_cache[sample["id"]] = make_audio(sample["duration"], seed=seed)
            audio = {"array": audio_cache.get(sample["id"]), "sampling_rate": SAMPLE_RATE}
            out.append({**sample, "audio": audio} if sample["task"] != "mt" else sample)
        return collator(out)

    model = build_part(dims, tokenizer).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)

    def forward_backward(inputs):
        model.zero_grad(set_to_none=True)
        model(**inputs).loss.backward()

    def step(inputs):
        forward_backward(inputs)
        optimizer.step()

    count = args.rounds * args.steps
    budget_batches = list(islice(stream("budget"), count))
    step(materialise(budget_batches[0]))  # optimizer state exists before memory is measured, for both variants
    measured = budget_batches[: args.memory_batches]
    log(f"batching: peak step memory of {len(measured)} token-budget batches")
    budget_peak = max(measure_peak(lambda b=b: forward_backward(materialise(b)), model)["delta"] for b in measured)
    worst = {"task": "s2tt", "source_language": "de", "target_language": "en", "duration": LONGEST,
             "text": sentence(LONGEST, 0), "audio": "synthetic:worst", "id": "worst"}
    fixed_peaks: dict[int, int] = {}

    def fits(size: int) -> bool:
        if size not in fixed_peaks:
            fixed_peaks[size] = measure_peak(lambda: forward_backward(materialise([worst] * size)), model)["delta"]
            log(f"  fixed batch of {size} x {LONGEST:.0f} s: {fixed_peaks[size] / 2**20:.0f} MiB "
                f"(token budget: {budget_peak / 2**20:.0f} MiB)")
        return fixed_peaks[size] <= budget_peak

    # the largest fixed batch whose worst case fits the token budget's peak, searched from the position count
    fixed_size = max(1, args.max_tokens // positions(worst))
    while fits(fixed_size + 1):
        fixed_size += 1
    while fixed_size > 1 and not fits(fixed_size):
        fixed_size -= 1

    variants = {"budget": budget_batches}
    for kind in ("grouped", "fixed"):
        variants[kind] = list(islice(stream(kind, fixed_size), count))
    inputs = {kind: [materialise(b) for b in batches] for kind, batches in variants.items()}
    times = {kind: [] for kind in variants}
    seconds = {kind: [] for kind in variants}
    log(f"batching: {args.rounds} rounds x {args.steps} steps, token budget vs fixed batches of {fixed_size}")
    for round_index in range(args.rounds):
        order = list(variants) if round_index % 2 == 0 else list(reversed(variants))
        for kind in order:
            chunk = slice(round_index * args.steps, (round_index + 1) * args.steps)
            started = time.perf_counter()
            for batch in inputs[kind][chunk]:
                step(batch)
            times[kind].append(time.perf_counter() - started)
            seconds[kind].append(sum(s.get("duration", 0.0) for b in variants[kind][chunk] for s in b))
    rates = {kind: [a / t for a, t in zip(seconds[kind], times[kind])] for kind in variants}
    log("  audio seconds per second: " + ", ".join(f"{k} {sum(v) / len(v):.1f}" for k, v in rates.items()))
    packing = packing_what_if(model.language_model, {kind: list(islice(stream(kind), args.packing_batches))
                                                     for kind in ("budget", "fixed")}, positions)
    emit_result({
        "distribution": {"lognormal_median_s": MEDIAN_SECONDS, "sigma": SIGMA, "range_s": [SHORTEST, LONGEST],
                         "tasks": TASK_SHARES, "words_per_second": WORDS_PER_SECOND},
        "max_tokens": args.max_tokens, "padding_batch_size": args.batch_size, "padding": padding,
        "dims": {"vocab_size": dims.vocab_size, "llm_width": dims.llm_width, "llm_layers": dims.llm_layers},
        "budget_peak": budget_peak, "fixed_batch_size": fixed_size, "fixed_fits": fits(fixed_size),
        "fixed_peaks": fixed_peaks,
        "rates": rates, "times": times, "audio_seconds": seconds,
        "mean_batch_size": {k: sum(map(len, v)) / len(v) for k, v in variants.items()},
        "packing": packing,
    })


def packing_what_if(llm, batches: dict, positions) -> dict:
    """Seconds of LLM forward + backward per batch, padded and packed, on the LLM lengths of `batches` (per kind),
    the two in alternating order batch by batch."""
    import torch

    def inputs(lengths: list[int], packed: bool) -> dict:
        width = llm.config.hidden_size
        if packed:
            position_ids = torch.cat([torch.arange(n) for n in lengths])[None]
            return {"inputs_embeds": torch.randn(1, sum(lengths), width), "position_ids": position_ids}
        mask = torch.tensor([[1] * n + [0] * (max(lengths) - n) for n in lengths])
        return {"inputs_embeds": torch.randn(len(lengths), max(lengths), width), "attention_mask": mask}

    decoder = llm.get_decoder()

    def step(batch_inputs: dict) -> float:
        llm.zero_grad(set_to_none=True)
        started = time.perf_counter()
        decoder(**batch_inputs, use_cache=False).last_hidden_state.square().mean().backward()
        return time.perf_counter() - started

    # the packed computation is the padded one: the same hidden states at every real position
    lengths = [positions(sample) for sample in next(iter(batches.values()))[0]]
    padded_inputs, packed_inputs = inputs(lengths, False), inputs(lengths, True)
    packed_inputs["inputs_embeds"] = torch.cat([e[:n] for e, n in zip(padded_inputs["inputs_embeds"], lengths)])[None]
    with torch.no_grad():
        padded_out = decoder(**padded_inputs, use_cache=False).last_hidden_state
        packed_out = decoder(**packed_inputs, use_cache=False).last_hidden_state[0]
    expected = torch.cat([h[:n] for h, n in zip(padded_out, lengths)])
    if not torch.allclose(packed_out, expected, atol=1e-4):
        raise RuntimeError("packed LLM outputs differ from padded ones: transformers did not mask the packed rows")
    step(packed_inputs)  # warm-up

    result = {}
    for kind, kind_batches in batches.items():
        log(f"batching: packing what-if, {len(kind_batches)} {kind} batches")
        padded, packed = [], []
        for index, batch in enumerate(kind_batches):
            lengths = [positions(sample) for sample in batch]
            pair = (("padded", False), ("packed", True)) if index % 2 == 0 else (("packed", True), ("padded", False))
            for name, is_packed in pair:
                seconds = step(inputs(lengths, is_packed))
                (packed if is_packed else padded).append(seconds)
        result[kind] = {"padded": padded, "packed": packed}
        log(f"  {kind}: packed / padded LLM step time {median(a / b for a, b in zip(packed, padded)):.2f}x")
    return result


if __name__ == "__main__":
    main()
