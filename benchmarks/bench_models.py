"""Worker: PART vs the peer in one process, measured side by side (interleaved rounds).

Sections (each prints progress on stderr; the JSON result is the last stdout line):
  train      training step (forward + backward) of PART and the peer, interleaved with one call of the PART data
             collator (8 samples from WAV bytes) and one call of the front end per round, so the collator's and the
             front end's rates are ratios against the step measured in the same rounds; then the same with the LLM
             frozen (PART's stage 1-2 trainable set) and in-process step memory for both settings
  generate   batched greedy decoding, fixed number of new tokens (eos suppressed by min_new_tokens), plus prefill
  frontend   PartFeatureExtractor (asrfront, numpy) vs transformers' WhisperFeatureExtractor
  profile    torch.profiler top operators of one training step (PART and peer), forward time per module

Usage: python benchmarks/bench_models.py --dims '{"encoder_layers": 4}' --train-repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import (  # noqa: E402
    SAMPLE_RATE,
    Dims,
    attention_implementations,
    build_part,
    build_peer,
    build_processors,
    build_tokenizer,
    clips,
    emit_result,
    full_logits_train_step,
    generation_batches,
    interleave,
    log,
    measure_peak,
    paired_ratios,
    parameter_count,
    set_threads,
    summary,
    target_text,
    train_step,
    training_batches,
    wav_bytes,
)


def _set_llm_trainable(model, trainable: bool) -> None:
    """PART: `language_model`; peer: `model.language_model` + the (tied) `lm_head`. Everything else trainable."""
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    llm = model.language_model if hasattr(model, "adapter") else model.model.language_model
    for parameter in llm.parameters():
        parameter.requires_grad_(trainable)
    head = model.get_output_embeddings()
    for parameter in head.parameters():
        parameter.requires_grad_(trainable)


def train_section(state: dict, args) -> dict:
    from trainers import PartDataCollator

    part, peer, a, b = state["part"], state["peer"], state["part_batch"], state["peer_batch"]
    dims: Dims = state["dims"]
    tokenizer, audio = state["tokenizer"], state["audio"]
    text = target_text(tokenizer, dims.target_tokens)
    samples = [
        {"task": "asr", "source_language": "en", "target_language": "en", "text": text,
         "audio": {"path": f"clip{i}.wav", "bytes": wav_bytes(clip)}}
        for i, clip in enumerate(audio)
    ]
    collator = PartDataCollator(state["part_processor"])
    collated = collator(samples)
    if collated["input_ids"].shape != a["input_ids"].shape:
        raise RuntimeError(f"collator batch {tuple(collated['input_ids'].shape)} != {tuple(a['input_ids'].shape)}")
    front_end = state["part_processor"].feature_extractor

    def part_full():
        _set_llm_trainable(part, True)
        return train_step(part, a)

    def peer_full():
        _set_llm_trainable(peer, True)
        return train_step(peer, b)

    functions = {"part": part_full, "peer": peer_full, "collator": lambda: collator(samples),
                 "front_end": lambda: front_end(audio, sampling_rate=SAMPLE_RATE)}
    if args.ablation:
        def part_full_logits():
            _set_llm_trainable(part, True)
            return full_logits_train_step(part, a)

        functions["part_full_logits"] = part_full_logits

        def part_sparse_embedding_grad():
            # what-if for the model: the input-embedding lookup with a sparse gradient (nn.Embedding.sparse), so
            # the tied embedding/LM head does not get a second dense vocab x width gradient; same gradients
            _set_llm_trainable(part, True)
            embedding = part.get_input_embeddings()
            embedding.sparse = True
            try:
                return train_step(part, a)
            finally:
                embedding.sparse = False

        functions["part_sparse_embedding_grad"] = part_sparse_embedding_grad
    log(f"train step: {args.train_repeats} interleaved rounds of {', '.join(functions)} "
        f"(batch {dims.batch_size} x {dims.seconds:g} s, vocab {dims.vocab_size:,}, all parameters trainable)")
    times = interleave(functions, repeats=args.train_repeats, warmup=1, label="train")
    result = {
        "part_step_s": summary(times["part"]),
        "peer_step_s": summary(times["peer"]),
        # PART throughput / peer throughput = peer time / PART time, per round
        "throughput_ratio": paired_ratios(times["peer"], times["part"]),
        "collator_s": summary(times["collator"]),
        "front_end_s": summary(times["front_end"]),
        "front_end_share_of_step": paired_ratios(times["front_end"], times["part"]),
        # samples/s the collator delivers / samples/s the step consumes
        "loader_to_step_ratio": paired_ratios(times["part"], times["collator"]),
        "part_samples_per_s": dims.batch_size / summary(times["part"])["median"],
        "peer_samples_per_s": dims.batch_size / summary(times["peer"])["median"],
        "collator_samples_per_s": dims.batch_size / summary(times["collator"])["median"],
    }
    if args.ablation:
        result["part_full_logits_step_s"] = summary(times["part_full_logits"])
        # PART with the full-logits loss / the peer: the gain of fewer audio positions alone
        result["ablation_full_logits_throughput_ratio"] = paired_ratios(times["peer"], times["part_full_logits"])
        # PART / PART with full logits: the gain of the target-only LM head alone
        result["ablation_target_only_head_ratio"] = paired_ratios(times["part_full_logits"], times["part"])
        result["what_if_sparse_embedding_grad_step_s"] = summary(times["part_sparse_embedding_grad"])
        result["what_if_sparse_embedding_grad_speedup"] = paired_ratios(times["part"],
                                                                        times["part_sparse_embedding_grad"])
        result["what_if_sparse_embedding_grad_throughput_ratio"] = paired_ratios(
            times["peer"], times["part_sparse_embedding_grad"])
    log(f"train step: PART {result['part_step_s']['median']:.2f} s, peer {result['peer_step_s']['median']:.2f} s, "
        f"throughput ratio {result['throughput_ratio']['median']:.2f}x")

    memory = {}
    measure_peak(part_full, part)  # throwaway: the first measurement in a process reads high (see bench_scaling)
    for name, fn in (("part", part_full), ("peer", peer_full)):
        measured = measure_peak(fn, part if name == "part" else peer)
        memory[name] = {k: measured[k] for k in ("before", "peak", "delta", "reset_ok")}
    result["in_process_step_memory"] = memory

    if args.frozen_repeats > 0:
        def part_frozen():
            _set_llm_trainable(part, False)
            return train_step(part, a)

        def peer_frozen():
            _set_llm_trainable(peer, False)
            return train_step(peer, b)

        log(f"train step, LLM frozen (PART stages 1-2 trainable set): {args.frozen_repeats} interleaved rounds")
        frozen = interleave({"part": part_frozen, "peer": peer_frozen}, repeats=args.frozen_repeats, warmup=1,
                            label="train (LLM frozen)")
        frozen_memory = {}
        for name, fn in (("part", part_frozen), ("peer", peer_frozen)):
            measured = measure_peak(fn, part if name == "part" else peer)
            frozen_memory[name] = {k: measured[k] for k in ("before", "peak", "delta", "reset_ok")}
        result["llm_frozen"] = {
            "part_step_s": summary(frozen["part"]),
            "peer_step_s": summary(frozen["peer"]),
            "throughput_ratio": paired_ratios(frozen["peer"], frozen["part"]),
            "in_process_step_memory": frozen_memory,
            "step_memory_delta_ratio": frozen_memory["part"]["delta"] / frozen_memory["peer"]["delta"],
        }
        for model in (part, peer):
            _set_llm_trainable(model, True)
    part.zero_grad(set_to_none=True)
    peer.zero_grad(set_to_none=True)
    return result


def generate_section(state: dict, args) -> dict:
    import torch

    part, peer = state["part"].eval(), state["peer"].eval()
    dims: Dims = state["dims"]
    ga, gb = generation_batches(dims, state["part_processor"], state["peer_processor"], state["audio"])
    n = args.new_tokens
    settings = dict(do_sample=False, num_beams=1)

    def run(model, batch, tokens):
        with torch.no_grad():
            out = model.generate(**batch, max_new_tokens=tokens, min_new_tokens=tokens, **settings)
        return out

    out_part = run(part, ga, n)
    out_peer = run(peer, gb, n)
    new_part = out_part.shape[1]  # PART returns only the new tokens
    new_peer = out_peer.shape[1] - gb["input_ids"].shape[1]
    if new_part != n or new_peer != n:
        raise RuntimeError(f"generated {new_part} (PART) and {new_peer} (peer) tokens, expected {n} each")
    log(f"generation: {args.gen_repeats} interleaved rounds, batch {dims.batch_size}, {n} new tokens each "
        f"(prompt lengths PART {ga['input_ids'].shape[1]}, peer {gb['input_ids'].shape[1]})")
    times = interleave(
        {"part": lambda: run(part, ga, n), "peer": lambda: run(peer, gb, n),
         "part_prefill": lambda: run(part, ga, 1), "peer_prefill": lambda: run(peer, gb, 1)},
        repeats=args.gen_repeats, warmup=0, label="generate",
    )
    tokens = dims.batch_size * n
    audio_seconds = dims.batch_size * dims.seconds
    part_median, peer_median = summary(times["part"])["median"], summary(times["peer"])["median"]
    # per decode step: (median full generation - median prefill) / (n - 1); medians, as single-round differences
    # of two noisy timings can even be negative on a busy machine
    decode = {name: (summary(times[name])["median"] - summary(times[name + "_prefill"])["median"]) / (n - 1)
              for name in ("part", "peer")}
    result = {
        "new_tokens_per_clip": n,
        "prompt_length": {"part": int(ga["input_ids"].shape[1]), "peer": int(gb["input_ids"].shape[1])},
        "part_s": summary(times["part"]),
        "peer_s": summary(times["peer"]),
        "part_tokens_per_s": tokens / part_median,
        "peer_tokens_per_s": tokens / peer_median,
        "part_rtf": part_median / audio_seconds,
        "peer_rtf": peer_median / audio_seconds,
        "throughput_ratio": paired_ratios(times["peer"], times["part"]),
        "prefill_ratio": paired_ratios(times["peer_prefill"], times["part_prefill"]),
        "decode_step_s": decode,
        "decode_step_ratio": decode["peer"] / decode["part"] if decode["part"] > 0 else None,
        "part_prefill_s": summary(times["part_prefill"]),
        "peer_prefill_s": summary(times["peer_prefill"]),
    }
    log(f"generation: PART {result['part_tokens_per_s']:.0f} tok/s, peer {result['peer_tokens_per_s']:.0f} tok/s, "
        f"ratio {result['throughput_ratio']['median']:.2f}x")
    state["part"].train()
    state["peer"].train()
    return result


def frontend_section(state: dict, args) -> dict:
    from transformers import WhisperFeatureExtractor

    from modeling_part import PartFeatureExtractor

    audio = state["audio"]
    dims: Dims = state["dims"]
    extractors = {"part_asrfront": PartFeatureExtractor(front_end="sensevoice", backend="asrfront"),
                  "part_numpy": PartFeatureExtractor(front_end="sensevoice", backend="numpy")}
    whisper = WhisperFeatureExtractor()
    calls = args.fe_calls  # calls per timing: a single call is a few ms, too short to time on a busy machine

    def repeated(call):
        def run():
            for _ in range(calls):
                call()
        return run

    functions = {name: repeated(lambda fe=fe: fe(audio, sampling_rate=SAMPLE_RATE)) for name, fe in extractors.items()}
    functions["whisper_hf_longest"] = repeated(lambda: whisper(audio, sampling_rate=SAMPLE_RATE, return_tensors="np",
                                                               padding="longest"))
    functions["whisper_hf_30s"] = repeated(lambda: whisper(audio, sampling_rate=SAMPLE_RATE, return_tensors="np"))
    log(f"front end: {args.fe_repeats} interleaved rounds of {calls} calls each over {dims.batch_size} x "
        f"{dims.seconds:g} s")
    times = interleave(functions, repeats=args.fe_repeats, warmup=1)
    seconds = calls * dims.batch_size * dims.seconds
    result = {name: {"s": summary(t), "audio_seconds_per_s": seconds / summary(t)["median"]}
              for name, t in times.items()}
    for name in ("part_asrfront", "part_numpy"):
        result[f"{name}_vs_whisper"] = paired_ratios(times["whisper_hf_longest"], times[name])
        result[f"{name}_vs_whisper_30s"] = paired_ratios(times["whisper_hf_30s"], times[name])
    return result


def _forward_breakdown(model, batch) -> dict:
    """Forward seconds per top-level module (pre/post hooks), the loss/remainder, and the backward."""
    if hasattr(model, "adapter"):
        modules = {"encoder": model.audio_tower, "adapter": model.adapter,
                   "llm_body": model.language_model.model, "lm_head": model.language_model.lm_head}
    else:
        modules = {"encoder": model.model.audio_tower, "adapter": model.model.multi_modal_projector,
                   "llm_body": model.model.language_model, "lm_head": model.lm_head}
    spent = {name: 0.0 for name in modules}
    starts = {}
    handles = []
    for name, module in modules.items():
        handles.append(module.register_forward_pre_hook(lambda m, i, name=name: starts.__setitem__(name, time.perf_counter())))
        handles.append(module.register_forward_hook(
            lambda m, i, o, name=name: spent.__setitem__(name, spent[name] + time.perf_counter() - starts[name])))
    try:
        model.zero_grad(set_to_none=True)
        start = time.perf_counter()
        loss = model(**batch).loss
        forward = time.perf_counter() - start
        start = time.perf_counter()
        loss.backward()
        backward = time.perf_counter() - start
    finally:
        for handle in handles:
            handle.remove()
    model.zero_grad(set_to_none=True)
    spent["embedding_merge_loss_other"] = forward - sum(spent.values())
    return {"forward_s": forward, "backward_s": backward, "forward_parts_s": spent}


def profile_section(state: dict, args) -> dict:
    from torch.profiler import ProfilerActivity, profile

    result = {}
    for name in ("part", "peer"):
        model = state[name]
        batch = state[f"{name}_batch"]
        _set_llm_trainable(model, True)
        breakdown = _forward_breakdown(model, batch)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            train_step(model, batch)
        averages = prof.key_averages()
        total = sum(e.self_cpu_time_total for e in averages)
        top = sorted(averages, key=lambda e: e.self_cpu_time_total, reverse=True)[: args.profile_rows]
        result[name] = {
            "breakdown": breakdown,
            "total_self_cpu_s": total / 1e6,
            "top_ops": [{"op": e.key, "self_cpu_s": e.self_cpu_time_total / 1e6,
                         "share": e.self_cpu_time_total / total if total else 0.0, "calls": e.count} for e in top],
        }
        log(f"profile {name}: forward {breakdown['forward_s']:.2f} s, backward {breakdown['backward_s']:.2f} s")
    if "generate" in args.sections.split(","):
        ga, gb = generation_batches(state["dims"], state["part_processor"], state["peer_processor"], state["audio"])
        for name, batch in (("part", ga), ("peer", gb)):
            model = state[name].eval()
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                model.generate(**batch, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                               do_sample=False, num_beams=1)
            model.train()
            averages = prof.key_averages()
            total = sum(e.self_cpu_time_total for e in averages)
            top = sorted(averages, key=lambda e: e.self_cpu_time_total, reverse=True)[: args.profile_rows]
            result[name]["generate_total_self_cpu_s"] = total / 1e6
            result[name]["generate_top_ops"] = [
                {"op": e.key, "self_cpu_s": e.self_cpu_time_total / 1e6,
                 "share": e.self_cpu_time_total / total if total else 0.0, "calls": e.count} for e in top]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dims", default="{}", help="JSON of Dims fields to override")
    parser.add_argument("--sections", default="train,generate,frontend,profile")
    parser.add_argument("--train-repeats", type=int, default=5)
    parser.add_argument("--frozen-repeats", type=int, default=3)
    parser.add_argument("--gen-repeats", type=int, default=3)
    parser.add_argument("--fe-repeats", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, default=24)
    parser.add_argument("--fe-calls", type=int, default=5, help="front-end calls per timed repetition")
    parser.add_argument("--profile-rows", type=int, default=10)
    parser.add_argument("--ablation", action="store_true",
                        help="also time PART with the full-logits loss (its target-only LM head switched off)")
    args = parser.parse_args()

    threads = set_threads()
    dims = Dims(**json.loads(args.dims))
    tokenizer = build_tokenizer()
    log(f"building PART and the peer ({json.dumps(dims.to_dict())})")
    part = build_part(dims, tokenizer).train()
    peer = build_peer(dims, tokenizer, part).train()
    part_processor, peer_processor = build_processors(part.config, tokenizer)
    audio = clips(dims)
    part_batch, peer_batch = training_batches(dims, part_processor, peer_processor, tokenizer, audio)
    state = dict(dims=dims, tokenizer=tokenizer, part=part, peer=peer, part_processor=part_processor,
                 peer_processor=peer_processor, audio=audio, part_batch=part_batch, peer_batch=peer_batch)
    result = {
        "threads": threads,
        "dims": dims.to_dict(),
        "setup": {
            "part_parameters": parameter_count(part),
            "peer_parameters": parameter_count(peer),
            "attention": {"part": attention_implementations(part), "peer": attention_implementations(peer)},
            "sequence_length": {"part": int(part_batch["input_ids"].shape[1]),
                                "peer": int(peer_batch["input_ids"].shape[1])},
            "audio_positions_per_clip": {
                "part": int((part_batch["input_ids"][0] == part.config.audio_token_id).sum()),
                "peer": int((peer_batch["input_ids"][0] == peer.config.audio_token_id).sum()),
            },
            "feature_frames_per_clip": int(part_batch["feature_attention_mask"][0].sum()),
            "loss_positions_per_clip": int((part_batch["labels"][0] != -100).sum()),
            "audio_token_rate": {"part": part.config.audio_token_rate,
                                 "peer": part.config.feature_frame_rate},
        },
    }
    sections = {"train": train_section, "generate": generate_section, "frontend": frontend_section,
                "profile": profile_section}
    for name in args.sections.split(","):
        if name:
            result[name] = sections[name](state, args)
    emit_result(result)


if __name__ == "__main__":
    main()
