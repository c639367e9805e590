"""`make real-dimensions`: PART at the paper's PART-2B shape, built from configs alone (random weights, no download),
measured on CPU (or, with `--device cuda`, on one GPU).

The shape: a SenseVoice-large-sized SAN-M encoder (transformers' `fun_asr_nano_encoder`), PART's default adapter and a
Qwen2.5-1.5B-shaped LLM (`qwen2`); every number in `SHAPES["full"]` names its source in `SOURCES`. Reported:
parameters per group, trainable parameters in each stage of the `part` preset, then, each phase in a fresh process so
that every peak is its own: training steps of stage 1 and of stage 3 (two each; the first one allocates), stage 3 again
with activation checkpointing, and greedy generation. Memory is the process's resident set (high-water marks per step
and over the process's life); times are wall and CPU seconds. On a GPU the model, its inputs and the optimizer live on
the device, and memory is the device's: PyTorch's allocated high-water marks per step and per phase.

A step uses AdamW (fused, the Trainer's default) where weights, gradients and AdamW's state fill at most 80% of
`--memory-budget-gib` (default: 90% of the memory available at the start). Otherwise it applies SGD during the
backward pass (no gradients held together, no state) and the report adds the exact gradient and state sizes to the
measured peak as a projection. A phase whose resident set passes the budget is stopped, and reported as such.

Usage: python benchmarks/real_dimensions.py [--dtype float32|bfloat16] [--threads N] [--stages 1,3,3+checkpointing]
       [--scale full|small|tiny] [--device cpu|cuda] [--memory-budget-gib G] [--output benchmarks/real_dimensions.json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import (  # noqa: E402
    ROOT,
    SAMPLE_RATE,
    hwm_bytes,
    log,
    machine_info,
    make_audio,
    process_peak_bytes,
    release_memory,
    reset_peak,
    rss_bytes,
    set_threads,
    target_text,
)

GIB = 2**30
RUN_LEARNING_RATE = 1e-3  # PartTrainingArguments' default --learning_rate; the preset's stages scale it
DEFAULT_OUTPUT = os.path.join(ROOT, "benchmarks", "real_dimensions.json")
STAGE_ALIASES = {"1": "1_adapter", "2a": "2a_encoder_top", "2b": "2b_encoder_full", "3": "3_cross_language"}

# ------------------------------------------------------------------------------------------------------ shapes
# `full` is PART-2B. `small` and `tiny` keep the structure (vocabulary, layer kinds, stages; an encoder deeper than
# the 8 layers of stage 2a) at widths that build in seconds: for development and for the test of this script.
SHAPES = {
    "full": {
        "audio": {
            "num_mel_bins": 80,
            "num_stacked_frames": 7,
            "hidden_size": 1024,
            "num_attention_heads": 8,
            "intermediate_size": 4096,
            "num_hidden_layers": 50,
            "num_timestamp_prediction_layers": 0,
            "fsmn_kernel_size": 11,
            "hidden_act": "relu",
            "hidden_dropout": 0.1,
            "attention_dropout": 0.1,
        },
        "text": {
            "vocab_size": 151936,
            "hidden_size": 1536,
            "intermediate_size": 8960,
            "num_hidden_layers": 28,
            "num_attention_heads": 12,
            "num_key_value_heads": 2,
            "max_position_embeddings": 32768,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0},
            "rms_norm_eps": 1e-6,
            "hidden_act": "silu",
            "tie_word_embeddings": True,
        },
        "adapter": {},  # PartAdapterConfig defaults
    },
    "small": {
        "audio": {"hidden_size": 256, "num_attention_heads": 2, "intermediate_size": 1024, "num_hidden_layers": 10},
        "text": {"hidden_size": 384, "intermediate_size": 2240, "num_hidden_layers": 4, "num_attention_heads": 6},
        "adapter": {"hidden_size": 256, "num_attention_heads": 2, "intermediate_size": 1024},
    },
    "tiny": {
        "audio": {"hidden_size": 32, "num_attention_heads": 2, "intermediate_size": 64, "num_hidden_layers": 9},
        "text": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                 "num_key_value_heads": 1},
        "adapter": {"hidden_size": 32, "num_attention_heads": 2, "intermediate_size": 64},
    },
}

SOURCES = {
    "audio.num_mel_bins, num_stacked_frames": "SenseVoice front end: 80-dim fbank, low-frame-rate stacking of 7 "
    "(PAPER.md; FunAsrNanoEncoderConfig defaults)",
    "audio.hidden_size=1024, intermediate_size=4096, num_hidden_layers=50": "sized to SenseVoice-Large's published "
    "encoder size (636M in MinMo, arXiv 2501.06282, Table 1; '~700M' in PAPER.md): SenseVoice-Small's 50 SAN-M "
    "layers (SenseVoiceSmall config.yaml num_blocks=50, which PartConfig's default keeps) at twice its width (512), "
    "with its 4x feed-forward ratio (linear_units=2048), gives 629M. SenseVoice-Large's own widths are not published",
    "audio.num_attention_heads=8": "SenseVoice-Small's head width of 128 (512 / 4 heads) kept; the parameter count "
    "does not depend on it",
    "audio.num_timestamp_prediction_layers=0": "PartConfig's default (PART reads the transcription layers only)",
    "audio.fsmn_kernel_size, hidden_act, dropouts": "FunAsrNanoEncoderConfig defaults (SenseVoiceSmall: kernel_size "
    "11, relu, dropout 0.1)",
    "text.*": "Qwen/Qwen2.5-1.5B config.json: hidden 1536, intermediate 8960, 28 layers, 12 heads, 2 KV heads, vocab "
    "151936, tied embeddings, rope_theta 1e6, rms_norm_eps 1e-6, silu; max_position_embeddings 32768 as in "
    "Qwen2.5-1.5B-Instruct (no parameter depends on it). Gives 1,543,714,304 parameters, Qwen's published 1.54B",
    "adapter": "PartAdapterConfig defaults (2 Transformer layers of width 1024, 8 heads, feed-forward 4096; conv1d "
    "stride derived from max_audio_token_rate 12.5/s: stride 2, kernel 3, 8.3 audio tokens per second)",
    "lora": "the `part` preset's LoRA (trainers/stages.py DEFAULT_LORA: r 16, alpha 32, dropout 0.05) on "
    "PartForSpeechToText.add_lora's default targets (q, k, v, o, gate, up, down projections)",
}


def shape(scale: str) -> dict:
    """The sub-config fields at `scale`: `full`, or `full` with the reduced fields of `small` / `tiny`."""
    if scale not in SHAPES:
        raise ValueError(f"--scale {scale!r}; choose from {sorted(SHAPES)}.")
    full = SHAPES["full"]
    reduced = SHAPES[scale]
    return {part: {**full[part], **reduced[part]} for part in full}


def part_config(scale: str, audio_token_id: int):
    """The PartConfig at `scale` (its audio token is the id of `<|AUDIO|>` in the tokenizer that builds the inputs)."""
    from modeling_part import PartConfig

    fields = shape(scale)
    return PartConfig(
        audio_config={"model_type": "fun_asr_nano_encoder", **fields["audio"]},
        adapter_config=fields["adapter"],
        text_config={"model_type": "qwen2", **fields["text"]},
        audio_token_id=audio_token_id,
    )


def build_model(config, dtype, seed: int = 0, device: str = "cpu"):
    """Random-weight model, each parameter allocated once: built on the meta device, then given storage
    (`to_empty`) and initialised by the model's own `init_weights` (which also ties the embeddings). Building
    directly would run every layer's default init and then transformers' init: twice the time, same memory."""
    import torch

    from modeling_part import PartForSpeechToText

    with torch.device("meta"):
        model = PartForSpeechToText._from_config(config, dtype=dtype)
    model.to_empty(device=device)
    torch.manual_seed(seed)
    model.init_weights()
    llm = model.language_model
    if config.text_config.tie_word_embeddings and llm.lm_head.weight is not llm.get_input_embeddings().weight:
        raise RuntimeError("the LM head is not tied to the input embedding after init_weights()")
    return model


# ------------------------------------------------------------------------------------------------------ inputs
def build_tokenizer():
    from modeling_part.tiny import build_tokenizer as _build

    return _build(vocab_size=512)


def build_processor(config, tokenizer):
    from modeling_part import PartProcessor

    return PartProcessor.for_model(config, tokenizer)


def batches(processor, tokenizer, clip_seconds: list[float], target_tokens: int) -> tuple[dict, dict]:
    """(training batch, inference batch) from the real front end and prompt template: speech-like clips, task
    `asr` in English, a target of exactly `target_tokens` tokens (eos is appended)."""
    audio = [make_audio(seconds, seed=index) for index, seconds in enumerate(clip_seconds)]
    targets = [target_text(tokenizer, target_tokens)] * len(audio)
    train = processor.apply_transcription_request(
        audio, language="en", sampling_rate=SAMPLE_RATE, target_text=targets, output_labels=True
    )
    infer = processor.apply_transcription_request(audio, language="en", sampling_rate=SAMPLE_RATE)
    return dict(train), dict(infer)


def describe_inputs(config, train: dict, infer: dict) -> dict:
    feature_lengths = train["feature_attention_mask"].sum(-1)
    return {
        "feature_frames": feature_lengths.tolist(),
        "feature_dim": int(train["input_features"].shape[-1]),
        "audio_tokens": config.audio_token_lengths(feature_lengths).tolist(),
        "train_sequence_length": int(train["input_ids"].shape[1]),
        "target_positions": int((train["labels"][:, 1:] != config.ignore_index).sum()),
        "inference_prompt_length": int(infer["input_ids"].shape[1]),
    }


# ---------------------------------------------------------------------------------------------------- counting
def parameter_counts(scale: str) -> dict:
    """Parameters per group and trainable parameters per stage of the `part` preset, on the meta device (no memory),
    with the preset's LoRA attached as `PartTrainer` does before the first stage."""
    import torch

    from modeling_part import PartForSpeechToText
    from trainers.freeze import parameter_groups, set_trainable
    from trainers.stages import preset

    schedule = preset("part")
    with torch.device("meta"):
        model = PartForSpeechToText(part_config(scale, audio_token_id=0))
        model.add_lora(schedule.lora)
    groups = parameter_groups(model)
    counts = {name: sum(p.numel() for p in group.values()) for name, group in groups.items()}
    total = sum(p.numel() for p in model.parameters())
    stages = {}
    for stage in schedule.stages:
        trainable = set_trainable(model, stage.trainable, encoder_last_k=stage.encoder_last_k)["trainable"]
        stages[stage.name] = {"trainable_groups": stage.trainable, "trainable": trainable,
                              "share": trainable / total, "learning_rate": stage.peak_learning_rate(RUN_LEARNING_RATE)[0]}
    return {"groups": counts, "total": total, "stages": stages, "lora": schedule.lora}


# ------------------------------------------------------------------------------------------------------ phases
def _tensor_bytes(parameters) -> int:
    return sum(p.numel() * p.element_size() for p in parameters)


def _stage(name: str):
    from trainers.stages import preset

    schedule = preset("part")
    index = next((i for i, s in enumerate(schedule.stages) if s.name == name), None)
    if index is None:
        raise ValueError(f"no stage {name!r} in the part preset; choose from {[s.name for s in schedule.stages]}")
    lora_active = any("llm_lora" in s.trainable for s in schedule.stages[: index + 1])
    return schedule, schedule.stages[index], lora_active


PROGRESS: dict = {}
"""What the running phase has measured so far; the memory guard reports it if it stops the phase."""


def _prepare(options, phase: str):
    """Threads, imports, tokenizer, config, model with the preset's LoRA, processor and inputs; RSS along the way."""
    import torch

    threads = set_threads(options.threads)
    release_memory()
    result = {"phase": phase, "threads": threads, "rss_after_imports": rss_bytes()}
    tokenizer = build_tokenizer()
    config = part_config(options.scale, audio_token_id=tokenizer.convert_tokens_to_ids("<|AUDIO|>"))
    dtype = getattr(torch, options.dtype)
    log(f"{phase}: building the model ({options.scale}, {options.dtype}) ...")
    started = time.perf_counter()
    model = build_model(config, dtype, seed=options.seed, device=options.device)
    model.add_lora(_stage(STAGE_ALIASES["1"])[0].lora)  # the preset's LoRA, attached before stage 1 as PartTrainer does
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    result["build_seconds"] = time.perf_counter() - started
    processor = build_processor(config, tokenizer)
    train, infer = batches(processor, tokenizer, options.clip_seconds, options.target_tokens)
    result["inputs"] = describe_inputs(config, train, infer)
    train, infer = ({key: value.to(options.device) for key, value in inputs.items()} for inputs in (train, infer))
    release_memory()
    result["rss_after_build"] = rss_bytes()
    if _on_gpu(options):
        result["device_name"] = torch.cuda.get_device_name()
        result["device_bytes_after_build"] = torch.cuda.memory_allocated()
    result["parameter_bytes"] = _tensor_bytes(model.parameters())
    log(f"{phase}: built in {result['build_seconds']:.0f} s, RSS {result['rss_after_build'] / GIB:.2f} GiB")
    PROGRESS.clear()
    PROGRESS.update(result)
    return model, train, infer, result


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _on_gpu(options) -> bool:
    return options.device != "cpu"


def _memory_keys(gpu: bool) -> tuple[str, str, str]:
    """Result keys of the memory after the build, a step's peak and the phase's peak: the device's or the RSS."""
    return ("device_bytes_after_build", "peak_device", "process_peak_device") if gpu else (
        "rss_after_build", "peak_rss", "process_peak")


def _measured(fn, gpu: bool = False) -> tuple:
    """Runs `fn()`; returns (its value, {"seconds": wall time, "cpu_seconds": this process's CPU time (less
    sensitive than wall time to other processes on a shared machine), "peak_rss": RSS high-water mark while it ran,
    None where the mark cannot be reset}). With `gpu`, the device is synchronised around `fn` and "peak_device" is
    PyTorch's allocated high-water mark on it while `fn` ran."""
    import torch

    release_memory()
    can_reset = reset_peak()
    if gpu:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    started, cpu_started = time.perf_counter(), _cpu_seconds()
    value = fn()
    if gpu:
        torch.cuda.synchronize()
    seconds, cpu_seconds = time.perf_counter() - started, _cpu_seconds() - cpu_started
    measured = {"seconds": seconds, "cpu_seconds": cpu_seconds, "peak_rss": hwm_bytes() if can_reset else None}
    if gpu:
        measured["peak_device"] = torch.cuda.max_memory_allocated()
    return value, measured


OPTIMIZERS = ("auto", "adamw", "sgd", "sgd_in_backward")
ACTIVATION_HEADROOM = 0.8  # `auto` picks AdamW when weights + gradients + its state fill at most 80% of the budget


def choose_optimizer(requested: str, rss_built: int, gradient_bytes: int, adamw_state_bytes: int, budget: float) -> str:
    """`auto`: AdamW where weights (as built), gradients and AdamW's state leave 20% of the budget for activations;
    otherwise SGD applied during the backward pass (each gradient freed once used), the step whose peak is closest
    to weights + activations, so the report can add the exact gradient and state sizes to a measurement."""
    if requested != "auto":
        return requested
    fits = rss_built + gradient_bytes + adamw_state_bytes <= ACTIVATION_HEADROOM * budget
    return "adamw" if fits else "sgd_in_backward"


def _sgd_in_backward(parameters, lr: float) -> list:
    """Plain SGD applied to each parameter as soon as its gradient is complete, which is then dropped
    (`register_post_accumulate_grad_hook`): no two full gradients are ever held at once."""
    import torch

    def update(parameter):
        with torch.no_grad():
            parameter.add_(parameter.grad, alpha=-lr)
        parameter.grad = None

    return [p.register_post_accumulate_grad_hook(update) for p in parameters]


def run_stage(options, phase: str) -> dict:
    """Training steps of one stage, `options.steps` times: the stage's trainable set and LoRA switch as `PartTrainer`
    applies them, then forward, backward, gradient clipping (1.0, the Trainer's default) and the optimizer step.
    AdamW is the Trainer's default (`adamw_torch_fused`); SGD variants measure what does not fit (see --optimizer)."""
    import torch

    from trainers.freeze import frozen_modules_to_eval, set_trainable

    stage_name, _, variant = phase.partition("+")
    _, stage, lora_active = _stage(stage_name)
    model, train, _, result = _prepare(options, phase)
    counts = set_trainable(model, stage.trainable, encoder_last_k=stage.encoder_last_k)
    model.set_lora_enabled(lora_active)
    frozen_modules_to_eval(model.train())  # as PartTrainer runs a step
    if variant == "checkpointing":  # the Trainer's --gradient_checkpointing: layer inputs kept, the rest recomputed
        model.activation_checkpointing_enable()
    trainable = [p for p in model.parameters() if p.requires_grad]
    gradient_bytes = _tensor_bytes(trainable)
    adamw_state_bytes = 2 * gradient_bytes + 4 * len(trainable)  # exp_avg, exp_avg_sq, a float32 step per tensor
    gpu = _on_gpu(options)
    budget = (0.9 * torch.cuda.get_device_properties(options.device).total_memory if gpu
              else options.memory_budget_gib * GIB)
    built = result[_memory_keys(gpu)[0]]
    optimizer_name = choose_optimizer(options.optimizer, built, gradient_bytes, adamw_state_bytes, budget)
    optimizer = None
    if optimizer_name == "adamw":
        optimizer = torch.optim.AdamW(trainable, lr=stage.peak_learning_rate(RUN_LEARNING_RATE)[0], weight_decay=0.0, fused=True)
    elif optimizer_name == "sgd":
        optimizer = torch.optim.SGD(trainable, lr=stage.peak_learning_rate(RUN_LEARNING_RATE)[0])
    else:
        _sgd_in_backward(trainable, stage.peak_learning_rate(RUN_LEARNING_RATE)[0])
        log(f"{phase}: weights + gradients + AdamW state "
            f"({(result['rss_after_build'] + gradient_bytes + adamw_state_bytes) / GIB:.1f} GiB) leave too little of "
            f"the {options.memory_budget_gib:.1f} GiB budget: SGD applied in the backward pass; the gradient and "
            "AdamW state sizes are added to the measured peak as a projection")
    result.update({
        "stage": stage_name,
        "activation_checkpointing": variant == "checkpointing",
        "trainable_groups": stage.trainable,
        "lora_enabled": lora_active,
        "trainable": counts["trainable"],
        "trainable_dtypes": sorted({str(p.dtype).replace("torch.", "") for p in trainable}),
        "optimizer": optimizer_name,
        "gradient_bytes": gradient_bytes,
        "adamw_state_bytes": adamw_state_bytes,
        "memory_budget_bytes": int(budget),
    })

    def step():
        model.zero_grad(set_to_none=True)
        loss = model(**train).loss
        loss.backward()
        if optimizer is not None:
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            optimizer.step()
        return loss.detach().float().item()

    PROGRESS.update(result)
    steps = PROGRESS.setdefault("steps", [])
    for index in range(options.steps):
        log(f"{phase}: step {index + 1}/{options.steps} ({counts['trainable'] / 1e6:.1f} M trainable, "
            f"{optimizer_name}) ...")
        PROGRESS["running"] = f"step {index + 1}"
        loss, measured = _measured(step, gpu)
        steps.append({**measured, "loss": loss})
        peak = f", RSS high-water {measured['peak_rss'] / GIB:.2f} GiB" if measured["peak_rss"] else ""
        log(f"{phase}: step {index + 1}: {measured['seconds']:.1f} s ({measured['cpu_seconds']:.0f} CPU s), "
            f"loss {loss:.3f}{peak}")
    PROGRESS.pop("running", None)
    state = optimizer.state.values() if optimizer is not None else []
    optimizer_state_bytes = sum(t.numel() * t.element_size() for s in state for t in s.values() if torch.is_tensor(t))
    result.update({"steps": steps, "optimizer_state_bytes": optimizer_state_bytes,
                   "process_peak": process_peak_bytes()})
    if gpu:
        result["process_peak_device"] = max([built, *(s["peak_device"] for s in steps)])
    # What AdamW would hold on top of the measured peak: its state (exact), and with SGD in backward all gradients
    # at once too (exact sizes; an upper bound, since activations are partly freed by the time gradients complete).
    peak = result["process_peak_device" if gpu else "process_peak"]
    if optimizer_name == "sgd":
        result["projected_adamw_process_peak"] = peak + adamw_state_bytes
    elif optimizer_name == "sgd_in_backward":
        result["projected_adamw_process_peak"] = peak + gradient_bytes + adamw_state_bytes
    return result


def run_generate(options) -> dict:
    """Greedy generation with KV cache on the inference prompts (left-padded), every sample held to exactly
    `new_tokens` tokens: a warm-up, then two timed runs (the faster kept). A logits processor stamps each step, so the
    first token (encoder + adapter + prefill) and the decoding steps (median) are timed inside one run."""
    import statistics

    import torch
    from transformers import LogitsProcessor, LogitsProcessorList

    class StepClock(LogitsProcessor):
        def __init__(self):
            self.stamps = []

        def __call__(self, input_ids, scores):
            self.stamps.append(time.perf_counter())
            return scores

    model, _, infer, result = _prepare(options, "generate")
    model.set_lora_enabled(True)  # the trained model's LoRA (generation cost of a merged model differs negligibly)
    model.eval()
    new_tokens = options.new_tokens
    batch = infer["input_ids"].shape[0]

    def generate(count, clock=None):
        started = time.perf_counter()
        with torch.inference_mode():
            output = model.generate(**infer, max_new_tokens=count, min_new_tokens=count, do_sample=False,
                                    num_beams=1, logits_processor=LogitsProcessorList([clock] if clock else []))
        if clock is not None:
            clock.stamps.insert(0, started)
        return output

    log(f"generate: warm-up, then {new_tokens} new tokens for {batch} clips, twice (the faster kept) ...")
    PROGRESS["running"] = "generation"
    generate(2)
    runs = []
    for _ in range(2):
        clock = StepClock()
        output, measured = _measured(lambda: generate(new_tokens, clock), _on_gpu(options))
        steps = [b - a for a, b in zip(clock.stamps, clock.stamps[1:])]
        runs.append({**measured, "first_token_seconds": steps[0], "decode_step_seconds": steps[1:]})
    best = min(runs, key=lambda run: run["seconds"])
    decode_steps = [step for run in runs for step in run["decode_step_seconds"]]
    decode_seconds = statistics.median(decode_steps) if decode_steps else None
    peaks = [run["peak_rss"] for run in runs if run["peak_rss"] is not None]
    result.update({
        "batch": batch,
        "new_tokens": int(output.shape[1]),
        "runs": runs,
        "first_token_seconds": best["first_token_seconds"],
        "seconds": best["seconds"],
        "cpu_seconds": best["cpu_seconds"],
        "tokens_per_second": batch * output.shape[1] / best["seconds"],
        "decode_seconds_per_step": decode_seconds,
        "decode_tokens_per_second": batch / decode_seconds if decode_seconds else None,
        "peak_rss": max(peaks) if peaks else None,
        "process_peak": process_peak_bytes(),
    })
    if _on_gpu(options):
        result["peak_device"] = max(run["peak_device"] for run in runs)
        result["process_peak_device"] = max(result["peak_device"], result["device_bytes_after_build"])
    log(f"generate: {output.shape[1]} tokens in {best['seconds']:.1f} s ({result['tokens_per_second']:.2f} tokens/s "
        f"over the batch), first token {best['first_token_seconds']:.1f} s")
    return result


def start_memory_guard(limit_bytes: float, interval: float = 0.02) -> None:
    """Ends this (phase) process, exit status 3, as soon as its RSS passes `limit_bytes`: a phase that outgrows the
    budget must not push a shared machine into the OOM killer. Its result line says so."""

    def watch():
        while True:
            rss = rss_bytes()
            if rss > limit_bytes:
                error = (f"stopped by the memory guard: RSS {rss / GIB:.2f} GiB passed the budget of "
                         f"{limit_bytes / GIB:.2f} GiB")
                sys.stdout.write("\n" + json.dumps({**PROGRESS, "error": error, "guard_rss": rss}) + "\n")
                sys.stdout.flush()
                os._exit(3)
            time.sleep(interval)

    threading.Thread(target=watch, daemon=True, name="memory-guard").start()


def run_phase(options, phase: str) -> dict:
    return run_generate(options) if phase == "generate" else run_stage(options, phase)


# -------------------------------------------------------------------------------------------------- orchestration
def _available_bytes() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def _child_command(options, phase: str) -> list[str]:
    command = [sys.executable, os.path.abspath(__file__), "--phase", phase, "--scale", options.scale,
               "--dtype", options.dtype, "--threads", str(options.threads), "--steps", str(options.steps),
               "--new-tokens", str(options.new_tokens), "--target-tokens", str(options.target_tokens),
               "--clip-seconds", ",".join(str(s) for s in options.clip_seconds), "--optimizer", options.optimizer,
               "--memory-budget-gib", str(options.memory_budget_gib), "--seed", str(options.seed),
               "--device", options.device]
    return command


def run_child(options, phase: str) -> dict:
    """One phase in a fresh process; its progress (stderr) reaches the terminal, its result is its last stdout line."""
    started = time.time()
    completed = subprocess.run(_child_command(options, phase), stdout=subprocess.PIPE, stderr=None, text=True,
                               cwd=ROOT)
    lines = [line for line in completed.stdout.splitlines() if line.startswith("{")]
    result = json.loads(lines[-1]) if lines else {}
    if completed.returncode != 0 and "error" not in result:
        result["error"] = f"exit status {completed.returncode}" + (
            " (killed: out of memory?)" if completed.returncode in (-9, 137) else "")
    result.update({"phase": phase, "wall_seconds": time.time() - started})
    return result


def measure(options) -> dict:
    """Counts (in this process, on the meta device) and every phase (fresh processes unless `--in-process`)."""
    log(f"PART at {options.scale} dimensions, {options.dtype}, {options.threads} threads; counting parameters ...")
    report = {
        "command": " ".join(["python", os.path.relpath(os.path.abspath(__file__), ROOT), *options.argv]),
        "scale": options.scale,
        "dtype": options.dtype,
        "device": options.device,
        "threads": options.threads,
        "shape": shape(options.scale),
        "sources": SOURCES if options.scale == "full" else {},
        "batch": {"clip_seconds": options.clip_seconds, "target_tokens": options.target_tokens},
        "steps_per_stage": options.steps,
        "memory_budget_bytes": int(options.memory_budget_gib * GIB),
        "isolated_phases": not options.in_process,
        "parameters": parameter_counts(options.scale),
        "phases": {},
    }
    report["parameter_bytes_per_element"] = 2 if options.dtype == "bfloat16" else 4
    phases = [*options.stages, *(["generate"] if options.new_tokens > 0 else [])]
    for phase in phases:
        if options.wait_for_quiet > 0:  # before every phase: timings on a shared machine depend on its load
            from run_benchmarks import wait_for_quiet

            report.setdefault("load_while_waiting", {})[phase] = wait_for_quiet(options.wait_for_quiet,
                                                                                options.quiet_load)
        log(f"phase {phase} ({'this process' if options.in_process else 'fresh process'})")
        load_before = os.getloadavg()[0]
        report["phases"][phase] = run_phase(options, phase) if options.in_process else run_child(options, phase)
        # other processes' load makes CPU timings slower: the 1-minute load average around each phase
        report["phases"][phase]["load_average"] = [load_before, os.getloadavg()[0]]
    report["machine"] = machine_info()
    device_name = next((p["device_name"] for p in report["phases"].values() if "device_name" in p), None)
    if device_name:
        report["machine"]["device"] = device_name
    return report


# ----------------------------------------------------------------------------------------------------- report
def _seconds(value) -> str:
    return "-" if value is None else f"{value:.1f}s"


def _gib(value) -> str:
    return "-" if value is None else f"{value / GIB:.2f} GiB"


def format_report(report: dict) -> str:
    counts = report["parameters"]
    gpu = report.get("device", "cpu") != "cpu"  # then memory columns are the device's (PyTorch's allocated bytes)
    built_key, peak_key, process_key = _memory_keys(gpu)
    batch = report["batch"]
    lines = [
        f"PART at {report['scale']} dimensions (random weights), {report['dtype']}, "
        + (f"on {report['machine']['device']}" if gpu else
           f"{report['threads']} threads on {report['machine']['cores']} cores") + "; batch of "
        f"{len(batch['clip_seconds'])} clips ({' + '.join(f'{s:g}' for s in batch['clip_seconds'])} s), "
        f"{batch['target_tokens']} target tokens + eos each",
        "",
        f"{'parameter group':<20}{'parameters':>16}",
    ]
    for name, count in counts["groups"].items():
        lines.append(f"{name:<20}{count:>16,}")
    lines += [f"{'total':<20}{counts['total']:>16,}", "",
              f"{'stage (part preset)':<20}{'trainable':>16}{'share':>8}  groups"]
    for name, stage in counts["stages"].items():
        lines.append(f"{name:<20}{stage['trainable']:>16,}{100 * stage['share']:>7.1f}%  "
                     f"{' + '.join(stage['trainable_groups'])}")
    width = max([18, *(len(name) + 2 for name in report["phases"])])
    built_label = "GPU built" if gpu else "RSS built"
    header = (f"{'phase':<{width}}{'optimizer':<17}{'build':>7}{built_label:>11}{'step 1':>17}{'step 2':>17}"
              f"{'step peak':>11}{'proc. peak':>11}{'load':>6}")
    lines += ["", header]
    notes = []
    for name, phase in report["phases"].items():
        load = max(phase.get("load_average") or [float("nan")])
        built = _gib(phase.get(built_key))
        stopped = "error" in phase
        if stopped:
            where = f" during {phase['running']}" if phase.get("running") else ""
            notes.append(f"{name}: {phase['error']}{where}")
            if phase.get("guard_rss") and phase.get("optimizer") in ("sgd", "sgd_in_backward"):
                least = phase["guard_rss"] + phase["adamw_state_bytes"] + (
                    phase["gradient_bytes"] if phase["optimizer"] == "sgd_in_backward" else 0)
                notes.append(f"{name}: did not fit the budget even with {phase['optimizer']}; with AdamW it needs "
                             f"more than {_gib(least)} (the RSS it reached + "
                             + ("gradients " + _gib(phase["gradient_bytes"]) + " + "
                                if phase["optimizer"] == "sgd_in_backward" else "")
                             + f"AdamW state {_gib(phase['adamw_state_bytes'])})")
        if name == "generate":
            steps, optimizer, step_peak = [], "-", phase.get(peak_key)
        else:
            steps, optimizer = phase.get("steps", []), phase.get("optimizer", "-")
            step_peak = max((s[peak_key] for s in steps if s.get(peak_key)), default=None)
        cells = [f"{_seconds(s['seconds'])} ({s['cpu_seconds']:.0f} cpu)" for s in steps[:2]]
        if len(cells) < 2:
            cells.append("stopped" if stopped else "-")
        cells += ["-"] * (2 - len(cells))
        process = "stopped" if stopped else _gib(phase.get(process_key))
        lines.append(f"{name:<{width}}{optimizer:<17}{_seconds(phase.get('build_seconds')):>7}{built:>11}"
                     + "".join(f"{cell:>17}" for cell in cells)
                     + f"{_gib(step_peak):>11}{process:>11}{load:>6.1f}")
        if "projected_adamw_process_peak" in phase:
            added = "its state" if phase["optimizer"] == "sgd" else "all gradients at once and its state"
            notes.append(f"{name}: stepped with {phase['optimizer']} (AdamW would pass the budget of "
                         f"{_gib(phase['memory_budget_bytes'])}); AdamW adds {added}: projected process peak "
                         f"{_gib(phase['projected_adamw_process_peak'])} (gradients {_gib(phase['gradient_bytes'])}, "
                         f"AdamW state {_gib(phase['adamw_state_bytes'])}: exact sizes)")
    generate = report["phases"].get("generate", {})
    if "tokens_per_second" in generate:
        decode = ("" if generate["decode_tokens_per_second"] is None else
                  f", then {generate['decode_seconds_per_step']:.2f} s per decoding step "
                  f"({generate['decode_tokens_per_second']:.2f} tokens/s, median of the steps)")
        lines += ["", f"generate (greedy, KV cache, batch {generate['batch']}, {generate['new_tokens']} new tokens "
                  f"each): {generate['seconds']:.2f} s = {generate['tokens_per_second']:.2f} tokens/s; first token "
                  f"(encoder + adapter + prefill of {generate['inputs']['inference_prompt_length']} positions) "
                  f"{generate['first_token_seconds']:.2f} s{decode}"]
    some = next((p for p in report["phases"].values() if "inputs" in p), None)
    if some:
        inputs = some["inputs"]
        lines.append(f"inputs: {inputs['feature_frames']} feature frames x {inputs['feature_dim']} -> "
                     f"{inputs['audio_tokens']} audio tokens; training sequence of {inputs['train_sequence_length']} "
                     f"positions, {inputs['target_positions']} in the loss")
    memory = "the device's allocated bytes (torch.cuda)" if gpu else "RSS"
    lines.append(f"build: random init on {report.get('device', 'cpu')}; steps: wall time (this process's CPU "
                 f"seconds), step 1 allocates (optimizer state, allocator); {built_label}, step peak, proc. peak: "
                 f"{memory} after the build, its high-water mark during the steps (generate: during generation) and "
                 "over the phase process's life; load: 1-minute load average")
    lines += [f"note: {note}" for note in notes]
    if not report["isolated_phases"]:
        lines.append("note: phases ran in one process (--in-process): peaks include earlier phases' allocations")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------------- main
def _phase_name(spec: str, parser) -> str:
    """`3` -> `3_cross_language`; `3+checkpointing` -> `3_cross_language+checkpointing`."""
    stage, plus, variant = spec.strip().partition("+")
    stage = STAGE_ALIASES.get(stage, stage)
    if stage not in STAGE_ALIASES.values() or (plus and variant != "checkpointing"):
        parser.error(f"--stages: {spec!r} is not a stage; use {', '.join(STAGE_ALIASES)} (or full names), optionally "
                     "with +checkpointing")
    return stage + plus + variant


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", default="full", choices=sorted(SHAPES),
                        help="full: PART-2B; small / tiny: the same structure, narrow (development, tests)")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                        help="dtype of every weight, LoRA included (so of gradients and AdamW state too)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--device", default="cpu", help="cpu, or a CUDA device (cuda, cuda:1): model, inputs and "
                        "optimizer there; memory columns then report the device's allocated bytes")
    parser.add_argument("--stages", default="1,3,3+checkpointing",
                        help="stages of the part preset to step: 1, 2a, 2b, 3 (or full names), comma-separated; a "
                        "+checkpointing suffix (e.g. 3+checkpointing) steps that stage with activation checkpointing")
    parser.add_argument("--steps", type=int, default=2, help="training steps per stage (the first one allocates)")
    parser.add_argument("--new-tokens", type=int, default=8, help="tokens to generate per clip (0: skip generation)")
    parser.add_argument("--clip-seconds", default="10,8", help="clip lengths of the batch, comma-separated")
    parser.add_argument("--target-tokens", type=int, default=30)
    parser.add_argument("--optimizer", default="auto", choices=OPTIMIZERS,
                        help="auto: AdamW (fused, the Trainer's default) where weights + gradients + its state fill at "
                        "most 80%% of the memory budget, else sgd_in_backward (SGD applied as each gradient completes)")
    parser.add_argument("--memory-budget-gib", type=float, default=None,
                        help="memory a phase may use (default: 90%% of MemAvailable at the start); a phase process "
                        "whose RSS passes it stops")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--wait-for-quiet", type=float, default=0.0,
                        help="before each phase, wait up to this many seconds for the 1-minute load average to drop "
                        "below --quiet-load")
    parser.add_argument("--quiet-load", type=float, default=1.5)
    parser.add_argument("--in-process", action="store_true", help="run every phase in this process (tests)")
    parser.add_argument("--output", default=None, help=f"JSON report (default {os.path.relpath(DEFAULT_OUTPUT, ROOT)} "
                        "for --scale full, else none)")
    parser.add_argument("--show", default=None, metavar="JSON", help="print the table of a written report and exit")
    parser.add_argument("--phase", default=None, help=argparse.SUPPRESS)  # internal: one phase, JSON on stdout
    options = parser.parse_args(argv)
    options.argv = list(sys.argv[1:] if argv is None else argv)
    options.clip_seconds = [float(s) for s in str(options.clip_seconds).split(",") if s]
    options.stages = [_phase_name(spec, parser) for spec in options.stages.split(",") if spec.strip()]
    if options.memory_budget_gib is None:
        options.memory_budget_gib = 0.9 * _available_bytes() / GIB
    if options.steps < 1:
        parser.error("--steps must be at least 1")
    if options.device != "cpu":
        import torch

        if not options.device.startswith("cuda") or not torch.cuda.is_available():
            parser.error(f"--device {options.device!r}: use cpu, or cuda[:N] on a machine where "
                         "torch.cuda.is_available()")
    return options


def main(argv=None) -> dict | None:
    options = parse_args(argv)
    if options.show:
        with open(options.show, encoding="utf-8") as f:
            print(format_report(json.load(f)))
        return None
    if options.phase:
        start_memory_guard(options.memory_budget_gib * GIB)
        result = run_phase(options, options.phase)
        sys.stdout.write("\n" + json.dumps(result) + "\n")
        sys.stdout.flush()
        return None
    report = measure(options)
    output = options.output or (DEFAULT_OUTPUT if options.scale == "full" else None)
    if output:
        with open(output, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=2)
            f.write("\n")
        log(f"wrote {output}")
    print(format_report(report), flush=True)
    return report


if __name__ == "__main__":
    main()
