"""Worker: PART vs the peer in one process, timed side by side (`common.interleave`); prints seconds per call for
every round, the run_benchmarks.py orchestrator turns them into ratios.

Sections (progress on stderr; the JSON result is the last stdout line):
  train      training step (forward + backward) of PART and the peer, interleaved with the PART data collator (8
             samples from WAV bytes) and the front end on the batch, so their rates compare with the step measured in
             the same rounds; with --ablation also PART with full logits;
             then the same with the LLM frozen (PART's stage 1-2 trainable set); in-process step memory for both
  generate   batched greedy decoding and beam search, fixed number of new tokens (eos suppressed by
             min_new_tokens), and prefill
  frontend   PartFeatureExtractor (asrfront, numpy) vs transformers' WhisperFeatureExtractor
  profile    torch.profiler top operators of one training step (and one generation), forward time per module

Usage: python benchmarks/bench_models.py --dims '{"encoder_layers": 4}' --train-repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import (  # noqa: E402
    SAMPLE_RATE,
    Dims,
    attention_implementations,
    batches,
    build_part,
    build_peer,
    build_processors,
    build_tokenizer,
    clips,
    emit_result,
    interleave,
    log,
    measure_peak,
    parameter_count,
    set_llm_trainable,
    set_threads,
    target_text,
    train_step,
    wav_bytes,
)


def _steps(state: dict, llm_trainable: bool) -> dict:
    """Training-step callables for PART and the peer (the trainable set is set on each call: the two models share
    their encoder and LLM modules)."""

    def step(name, **options):
        def run():
            set_llm_trainable(state[name], llm_trainable)
            return train_step(state[name], state[f"{name}_batch"], **options)
        return run

    return {"part": step("part"), "peer": step("peer")}


def _step_memory(state: dict, steps: dict) -> dict:
    measure_peak(steps["part"], state["part"])  # throwaway: the first measurement in a process reads high
    return {name: {k: v for k, v in measure_peak(fn, state[name]).items() if k != "out"} for name, fn in steps.items()}


def train_section(state: dict, args) -> dict:
    from trainers import PartDataCollator

    dims, part, audio = state["dims"], state["part"], state["audio"]
    text = target_text(state["tokenizer"], dims.target_tokens)
    samples = [{"task": "asr", "source_language": "en", "target_language": "en", "text": text,
                "audio": {"path": f"clip{i}.wav", "bytes": wav_bytes(clip)}} for i, clip in enumerate(audio)]
    collator = PartDataCollator(state["part_processor"])
    if collator(samples)["input_ids"].shape != state["part_batch"]["input_ids"].shape:
        raise RuntimeError("the collator's batch differs from the benchmark's PART batch")
    front_end = state["part_processor"].feature_extractor
    functions = {**_steps(state, True), "collator": lambda: collator(samples),
                 "front_end": lambda: front_end(audio, sampling_rate=SAMPLE_RATE)}
    if args.ablation:
        def full_logits():
            set_llm_trainable(part, True)
            return train_step(part, state["part_batch"], full_logits=True)

        functions.update(part_full_logits=full_logits)
    log(f"train step: {args.train_repeats} interleaved rounds of {', '.join(functions)} (batch {dims.batch_size} x "
        f"{dims.seconds:g} s, vocab {dims.vocab_size:,}, all parameters trainable)")
    result = {"times": interleave(functions, args.train_repeats, label="train", blocked=("collator", "front_end")),
              "step_memory": _step_memory(state, _steps(state, True))}
    if args.frozen_repeats > 0:
        log(f"train step, LLM frozen (PART stages 1-2 trainable set): {args.frozen_repeats} interleaved rounds")
        frozen = _steps(state, False)
        result["llm_frozen"] = {"times": interleave(frozen, args.frozen_repeats, label="train (LLM frozen)"),
                                "step_memory": _step_memory(state, frozen)}
        set_llm_trainable(part, True)
    part.zero_grad(set_to_none=True)
    state["peer"].zero_grad(set_to_none=True)
    return result


BEAMS = 3
"""Beams of the beam-search generation timings."""


def generate_section(state: dict, args) -> dict:
    import torch

    prompts = dict(zip(("part", "peer"), batches(state["dims"], state["part_processor"], state["peer_processor"],
                                                 audio=state["audio"])))
    n = args.new_tokens

    def generate(name, tokens, beams=1):
        def run():
            model, batch = state[name], prompts[name]
            with torch.no_grad():
                out = model.generate(**batch, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False,
                                     num_beams=beams)
            new = out.shape[1] - (0 if name == "part" else batch["input_ids"].shape[1])  # PART returns new tokens
            if new != tokens:
                raise RuntimeError(f"{name} generated {new} tokens, expected {tokens}")
        return run

    prompt_length = {name: int(batch["input_ids"].shape[1]) for name, batch in prompts.items()}
    state["part"].eval()
    state["peer"].eval()
    log(f"generation: {args.gen_repeats} interleaved rounds, batch {state['dims'].batch_size}, {n} new tokens each "
        f"(prompt lengths {prompt_length})")
    times = interleave({"part": generate("part", n), "peer": generate("peer", n), "part_prefill": generate("part", 1),
                        "peer_prefill": generate("peer", 1), "part_beam": generate("part", n, BEAMS),
                        "peer_beam": generate("peer", n, BEAMS)}, args.gen_repeats, label="generate")
    state["part"].train()
    state["peer"].train()
    return {"times": times, "new_tokens": n, "prompt_length": prompt_length, "beams": BEAMS}


def frontend_section(state: dict, args) -> dict:
    from transformers import WhisperFeatureExtractor

    from modeling_part import PartFeatureExtractor

    audio, whisper = state["audio"], WhisperFeatureExtractor()
    functions = {f"part_{backend}": lambda fe=PartFeatureExtractor(front_end="sensevoice", backend=backend):
                 fe(audio, sampling_rate=SAMPLE_RATE) for backend in ("asrfront", "numpy")}
    functions["whisper_longest"] = lambda: whisper(audio, sampling_rate=SAMPLE_RATE, return_tensors="np",
                                                   padding="longest")
    functions["whisper_30s"] = lambda: whisper(audio, sampling_rate=SAMPLE_RATE, return_tensors="np")
    log(f"front end: {args.fe_repeats} interleaved rounds over {len(audio)} clips")
    return {"times": interleave(functions, args.fe_repeats, blocked=tuple(functions)),
            "audio_seconds": len(audio) * state["dims"].seconds}


def _forward_breakdown(model, batch) -> dict:
    """Forward seconds per top-level module (pre/post hooks), the loss/remainder, and the backward."""
    if hasattr(model, "adapter"):
        modules = {"encoder": model.audio_tower, "adapter": model.adapter, "llm_body": model.language_model.model}
    else:
        modules = {"encoder": model.model.audio_tower, "adapter": model.model.multi_modal_projector,
                   "llm_body": model.model.language_model}
    modules["lm_head"] = model.get_output_embeddings()
    spent, starts, handles = dict.fromkeys(modules, 0.0), {}, []
    for name, module in modules.items():
        handles.append(module.register_forward_pre_hook(
            lambda m, i, n=name: starts.__setitem__(n, time.perf_counter())))
        handles.append(module.register_forward_hook(
            lambda m, i, o, n=name: spent.__setitem__(n, spent[n] + time.perf_counter() - starts[n])))
    model.zero_grad(set_to_none=True)
    start = time.perf_counter()
    loss = model(**batch).loss
    forward = time.perf_counter() - start
    loss.backward()
    backward = time.perf_counter() - start - forward
    for handle in handles:
        handle.remove()
    model.zero_grad(set_to_none=True)
    spent["embedding_merge_loss_other"] = forward - sum(spent.values())
    return {"forward_s": forward, "backward_s": backward, "forward_parts_s": spent}


def profile_section(state: dict, args) -> dict:
    from torch.profiler import ProfilerActivity, profile

    def top_operators(run, rows):
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            run()
        return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows, max_name_column_width=60)

    prompts = batches(state["dims"], state["part_processor"], state["peer_processor"], audio=state["audio"])
    result = {}
    for name, prompt in zip(("part", "peer"), prompts):
        model, batch = state[name], state[f"{name}_batch"]
        set_llm_trainable(model, True)
        result[name] = {"breakdown": _forward_breakdown(model, batch),
                        "train_step": top_operators(lambda: train_step(model, batch), args.profile_rows)}
        if "generate" in args.sections.split(","):
            model.eval()
            result[name]["generate"] = top_operators(lambda: model.generate(
                **prompt, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False,
                num_beams=1), 6)
            model.train()
        log(f"profile {name}: forward {result[name]['breakdown']['forward_s']:.2f} s, "
            f"backward {result[name]['breakdown']['backward_s']:.2f} s")
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
    parser.add_argument("--profile-rows", type=int, default=10)
    parser.add_argument("--ablation", action="store_true",
                        help="also time PART with the full-logits loss (its target-only LM head switched off)")
    args = parser.parse_args()

    threads = set_threads()
    dims = Dims(**json.loads(args.dims))
    tokenizer = build_tokenizer()
    log(f"building PART and the peer ({json.dumps(asdict(dims))})")
    part = build_part(dims, tokenizer).train()
    peer = build_peer(dims, tokenizer, part).train()
    part_processor, peer_processor = build_processors(part.config, tokenizer)
    audio = clips(dims)
    part_batch, peer_batch = batches(dims, part_processor, peer_processor, tokenizer, audio)
    state = dict(dims=dims, tokenizer=tokenizer, part=part, peer=peer, part_processor=part_processor,
                 peer_processor=peer_processor, audio=audio, part_batch=part_batch, peer_batch=peer_batch)
    audio_token = part.config.audio_token_id
    result = {
        "threads": threads,
        "dims": asdict(dims),
        "setup": {
            "parameters": {"part": parameter_count(part), "peer": parameter_count(peer)},
            "attention": {"part": attention_implementations(part), "peer": attention_implementations(peer)},
            "sequence_length": {"part": part_batch["input_ids"].shape[1], "peer": peer_batch["input_ids"].shape[1]},
            "audio_positions_per_clip": {"part": int((part_batch["input_ids"][0] == audio_token).sum()),
                                         "peer": int((peer_batch["input_ids"][0] == audio_token).sum())},
            "audio_token_rate": {"part": part.config.audio_token_rate, "peer": part.config.feature_frame_rate},
            "feature_frames_per_clip": int(part_batch["feature_attention_mask"][0].sum()),
            "loss_positions_per_clip": int((part_batch["labels"][0] != -100).sum()),
        },
    }
    sections = {"train": train_section, "generate": generate_section, "frontend": frontend_section,
                "profile": profile_section}
    for name in filter(None, args.sections.split(",")):
        result[name] = sections[name](state, args)
    emit_result(result)


if __name__ == "__main__":
    main()
