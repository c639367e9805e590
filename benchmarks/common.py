"""Shared pieces of the benchmark suite: the PART model and its peer at identical dimensions, their inputs,
memory probes (RSS high-water marks) and interleaved timing on `torch.utils.benchmark`.

The peer is `transformers.FunAsrNanoForConditionalGeneration`: the same SenseVoice-style encoder config
(`fun_asr_nano_encoder`), an adaptor of the same width and depth (2 layers), the same qwen2 LLM and vocabulary.
Both read the same front-end output (`PartFeatureExtractor`, SenseVoice LFR 560-dim features), the same tokenizer,
prompt template and targets. The only input difference is the number of audio placeholders: the peer's adaptor keeps
one LLM position per LFR frame (16.7/s), PART's strided conv1d halves it (8.3/s).
"""

from __future__ import annotations

import ctypes
import gc
import io
import json
import os
import platform
import resource
import sys
import time
from dataclasses import dataclass

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

SAMPLE_RATE = 16_000


@dataclass(frozen=True)
class Dims:
    """Model and batch dimensions shared by PART and the peer."""

    encoder_width: int = 256
    encoder_layers: int = 4
    encoder_heads: int = 4
    llm_width: int = 512
    llm_layers: int = 4
    llm_heads: int = 8
    llm_kv_heads: int = 2
    adapter_layers: int = 2
    vocab_size: int = 151_936
    batch_size: int = 8
    seconds: float = 6.0
    target_tokens: int = 24  # target text tokens per clip; eos is appended, so 25 loss positions


# ------------------------------------------------------------------------------------------ output, threads
_START = time.time()


def log(message: str) -> None:
    """Progress line on stderr (stdout of workers carries their JSON result)."""
    print(f"[bench {time.time() - _START:6.0f}s] {message}", file=sys.stderr, flush=True)


def emit_result(result: dict) -> None:
    """A worker's result: one JSON line, last on stdout."""
    sys.stdout.write("\n" + json.dumps(result) + "\n")
    sys.stdout.flush()


def set_threads(num_threads: int | None = None) -> int:
    import torch

    threads = num_threads or int(os.environ.get("BENCH_THREADS", 0)) or os.cpu_count() or 1
    torch.set_num_threads(threads)
    return threads


# --------------------------------------------------------------------------------------------------- memory
def rss_bytes(field: str = "VmRSS") -> int:
    """A field of /proc/self/status in bytes: `VmRSS` (resident now) or `VmHWM` (its high-water mark)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field + ":"))


def hwm_bytes() -> int:
    """The resident set's high-water mark since the process started or since `reset_peak()`."""
    return rss_bytes("VmHWM")


_PEAK_BEFORE_RESETS = 0  # the process's high-water mark as it stood before the last `reset_peak()`


def reset_peak() -> bool:
    """Resets VmHWM to the current RSS (Linux `clear_refs` 5). Returns False where that is not allowed.

    On Linux the reset lowers `ru_maxrss` too (both read the same per-process mark), so the mark reached so far is
    kept first, for `process_peak_bytes`."""
    global _PEAK_BEFORE_RESETS
    _PEAK_BEFORE_RESETS = process_peak_bytes()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def process_peak_bytes() -> int:
    """The process's RSS high-water mark over its whole life, also after `reset_peak()` calls."""
    lifetime = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return max(_PEAK_BEFORE_RESETS, lifetime, hwm_bytes())


def release_memory() -> None:
    """Frees Python garbage and hands freed heap pages back to the OS, so RSS reflects live memory."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


def measure_peak(fn, model=None) -> dict:
    """Runs `fn()` once; returns the RSS before it, its high-water mark and their difference (bytes), the cost of
    `fn`. Allocator caches are released first, so freed memory is not silently reused; with `model`, its gradients
    are dropped first (as `optimizer.zero_grad(set_to_none=True)` leaves them). The high-water mark is reset with
    Linux `clear_refs` 5; where that is not allowed (`reset_ok` False), the process peak is read instead."""
    if model is not None:
        model.zero_grad(set_to_none=True)
    release_memory()
    before = rss_bytes()
    reset_ok = reset_peak()
    out = fn()
    peak = hwm_bytes() if reset_ok else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"before": before, "peak": peak, "delta": peak - before, "reset_ok": reset_ok, "out": out}


# --------------------------------------------------------------------------------------------------- timing
def interleave(functions: dict, rounds: int, label: str = "", blocked: tuple = (), min_run_time: float = 0.2,
               ) -> dict[str, list[float]]:
    """Seconds per call of each function, one value per round. Every function is called once to warm up, then the
    rounds run them side by side, alternating the order (A B, B A, ...), so that a ratio of two functions' values
    in the same round compares them under the same machine load.

    The functions named in `blocked` (millisecond calls: front end, collator) are timed in each round by
    `torch.utils.benchmark.Timer.blocked_autorange(min_run_time)`: blocks of calls, the round's value being their
    median per call. The others (training steps, generations: seconds) are timed once per round as they are: the
    Timer first runs an untimed call to size its blocks (`timeit(n)` at least 2), which would double their time."""
    import torch
    from torch.utils.benchmark import Timer

    threads = torch.get_num_threads()
    timers = {name: Timer("fn()", globals={"fn": functions[name]}, num_threads=threads) for name in blocked}
    names = list(functions)
    for fn in functions.values():
        fn()
    times = {name: [] for name in names}
    for index in range(rounds):
        for name in names if index % 2 == 0 else names[::-1]:
            if name in timers:
                times[name].append(timers[name].blocked_autorange(min_run_time=min_run_time).median)
            else:
                start = time.perf_counter()
                functions[name]()
                times[name].append(time.perf_counter() - start)
        if label:
            log(f"  {label} round {index + 1}/{rounds}: " + ", ".join(f"{n} {times[n][-1]:.3g}s" for n in names))
    return times


# ---------------------------------------------------------------------------------------------------- audio
def make_audio(seconds: float, seed: int = 0):
    """A speech-like signal (harmonics with a moving pitch, amplitude modulation, a little noise)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    t = np.arange(int(round(seconds * SAMPLE_RATE))) / SAMPLE_RATE
    pitch = 120 + 40 * np.sin(2 * np.pi * 0.7 * t + seed)
    phase = 2 * np.pi * np.cumsum(pitch) / SAMPLE_RATE
    signal = sum(np.sin(k * phase) / k for k in range(1, 6)) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t))
    return (0.1 * signal + 0.01 * rng.standard_normal(t.size)).astype(np.float32)


def clips(dims: Dims, seed: int = 0):
    return [make_audio(dims.seconds, seed=seed + i) for i in range(dims.batch_size)]


def wav_bytes(audio) -> bytes:
    """16 kHz 16-bit PCM WAV bytes, as the demo corpus stores audio (`Audio(decode=False)`)."""
    import soundfile as sf

    buffer = io.BytesIO()
    sf.write(buffer, audio, SAMPLE_RATE, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


# --------------------------------------------------------------------------------------------------- models
def build_tokenizer():
    """The suite's BPE tokenizer, trained in-process and cached in `$BENCH_CACHE` so each worker does not train it
    again."""
    from transformers import PreTrainedTokenizerFast

    from modeling_part.tiny import build_tokenizer as train_tokenizer

    path = os.path.join(os.environ["BENCH_CACHE"], "tokenizer") if os.environ.get("BENCH_CACHE") else None
    if path and os.path.isfile(os.path.join(path, "tokenizer.json")):
        return PreTrainedTokenizerFast.from_pretrained(path)
    tokenizer = train_tokenizer(vocab_size=512)
    if path:
        tokenizer.save_pretrained(path)
    return tokenizer


def _configs(dims: Dims) -> tuple[dict, dict, dict]:
    """The encoder, adapter and LLM configs both models are built from. The peer's adaptor fixes its width to the LLM
    width and its feed-forward to width // 4 (its config validation demands both); PART's adapter gets exactly those
    numbers, the peer's relu included."""
    audio = {"model_type": "fun_asr_nano_encoder", "num_mel_bins": 80, "hidden_size": dims.encoder_width,
             "num_attention_heads": dims.encoder_heads, "intermediate_size": 4 * dims.encoder_width,
             "num_hidden_layers": dims.encoder_layers, "num_timestamp_prediction_layers": 0, "hidden_dropout": 0.0,
             "attention_dropout": 0.0}
    adapter = {"hidden_size": dims.llm_width, "num_attention_heads": dims.llm_heads,
               "intermediate_size": dims.llm_width // 4, "num_hidden_layers": dims.adapter_layers}
    text = {"model_type": "qwen2", "vocab_size": dims.vocab_size, "hidden_size": dims.llm_width,
            "intermediate_size": 4 * dims.llm_width, "num_hidden_layers": dims.llm_layers,
            "num_attention_heads": dims.llm_heads, "num_key_value_heads": dims.llm_kv_heads,
            "max_position_embeddings": 4096, "tie_word_embeddings": True}
    return audio, adapter, text


def part_config(dims: Dims, tokenizer):
    from modeling_part import PartConfig

    audio, adapter, text = _configs(dims)
    return PartConfig(audio_config=audio, adapter_config={**adapter, "hidden_act": "relu"}, text_config=text,
                      audio_token_id=tokenizer.convert_tokens_to_ids("<|AUDIO|>"))


def _generation_ids(model, tokenizer):
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def build_part(dims: Dims, tokenizer, seed: int = 0):
    import torch

    from modeling_part import PartForSpeechToText

    torch.manual_seed(seed)
    return _generation_ids(PartForSpeechToText(part_config(dims, tokenizer)), tokenizer)


def build_peer(dims: Dims, tokenizer, part_model=None, seed: int = 0):
    """The peer at the same dimensions. With `part_model` (timing runs), the peer *shares* PART's encoder, LLM body
    and (tied) LM head modules: the same classes from the same configs, now also the same tensors in memory, so
    the timings compare the models' structure (adaptor, sequence lengths, loss path) and not where the allocator
    happened to put two copies of a 300 MB embedding (an identical-content copy of the head measured up to 12%
    faster or slower in a memory-bound decode step here). Only the adaptors differ."""
    import torch
    from transformers import FunAsrNanoConfig, FunAsrNanoForConditionalGeneration

    torch.manual_seed(seed)
    audio, adapter, text = _configs(dims)
    config = FunAsrNanoConfig(audio_config=audio, text_config=text,
                              adaptor_config={**adapter, "projector_hidden_size": dims.llm_width},
                              audio_token_id=tokenizer.convert_tokens_to_ids("<|AUDIO|>"))
    model = FunAsrNanoForConditionalGeneration(config)
    if part_model is not None:
        shared = ((part_model.audio_tower, model.model, "audio_tower"),
                  (part_model.language_model.model, model.model, "language_model"),
                  (part_model.language_model.lm_head, model, "lm_head"))
        for ours, owner, name in shared:
            theirs = getattr(owner, name)
            if type(ours) is not type(theirs):
                raise TypeError(f"cannot share {type(ours).__name__} with the peer's {type(theirs).__name__}")
            setattr(owner, name, ours)
        if model.lm_head.weight is not model.model.language_model.embed_tokens.weight:
            raise RuntimeError("the shared LM head is not tied to the shared input embedding")
    return _generation_ids(model, tokenizer)


def set_llm_trainable(model, trainable: bool) -> None:
    """Everything trainable, except the LLM and its (tied) LM head when `trainable` is False: PART's stage 1-2
    trainable set. PART's LLM is `language_model`, the peer's `model.language_model` + `lm_head`."""
    llm = model.language_model if hasattr(model, "adapter") else model.model.language_model
    model.requires_grad_(True)
    llm.requires_grad_(trainable)
    model.get_output_embeddings().requires_grad_(trainable)


def parameter_count(model) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def attention_implementations(model) -> list[str]:
    configs = (getattr(module, "config", None) for module in model.modules())
    return sorted({f"{c.model_type}:{c._attn_implementation}" for c in configs
                   if getattr(c, "_attn_implementation", None)})


# --------------------------------------------------------------------------------------------------- inputs
def build_processors(model_config, tokenizer):
    """PART's processor and the peer's: the same feature extractor, tokenizer and prompt template; the peer's
    placeholder count is one per LFR frame (its adaptor does not downsample)."""
    from modeling_part import PartFeatureExtractor, PartProcessor

    part = PartProcessor.for_model(model_config, tokenizer, PartFeatureExtractor(front_end="sensevoice"))
    peer = PartProcessor(PartFeatureExtractor(front_end="sensevoice"), tokenizer, encoder_stride=1,
                         adapter_kernel_size=1, adapter_stride=1)
    return part, peer


def target_text(tokenizer, num_tokens: int) -> str:
    """A target sentence of exactly `num_tokens` tokens."""
    words = "the quick brown fox jumps over the lazy dog".split()
    ids: list[int] = []
    for count in range(1, 10 * num_tokens):
        candidate = tokenizer(" ".join(words[i % len(words)] for i in range(count)), add_special_tokens=False)
        if len(candidate["input_ids"]) > num_tokens:
            break
        ids = candidate["input_ids"]
    while len(ids) < num_tokens:  # top up with single-token pieces
        ids = ids + ids[: num_tokens - len(ids)]
    return tokenizer.decode(ids[:num_tokens])


def batches(dims: Dims, part_processor, peer_processor, tokenizer=None, audio=None) -> tuple[dict, dict]:
    """(PART batch, peer batch) for the same clips: training batches (prompt, target and labels) with `tokenizer`,
    generation prompts without. The peer reads the feature mask as `input_features_mask`."""
    audio = audio if audio is not None else clips(dims)
    common = dict(sampling_rate=SAMPLE_RATE)
    if tokenizer is not None:
        common["target_text"] = [target_text(tokenizer, dims.target_tokens)] * len(audio)
        common["output_labels"] = True
    part = dict(part_processor.apply_transcription_request(audio, language="en", **common))
    peer = dict(peer_processor.apply_transcription_request(audio, language="en", **common))
    peer["input_features_mask"] = peer.pop("feature_attention_mask")
    return part, peer


def train_step(model, batch, full_logits: bool = False) -> float:
    """Forward + backward (gradients from scratch, as after `zero_grad(set_to_none=True)`). `full_logits` (PART only)
    is the ablation of PART's target-only LM head: the head over every position, then transformers' causal-LM loss."""
    model.zero_grad(set_to_none=True)
    if full_logits:
        embeds = model.get_input_embeddings()(batch["input_ids"])
        audio = model.get_audio_features(batch["input_features"], batch["feature_attention_mask"])
        embeds = model._merge_audio_embeddings(
            batch["input_ids"], embeds, audio.pooler_output, audio.audio_token_lengths
        )
        logits = model.language_model(inputs_embeds=embeds, attention_mask=batch["attention_mask"]).logits
        loss = model.language_model.loss_function(logits, batch["labels"], vocab_size=logits.shape[-1])
    else:
        loss = model(**batch).loss
    loss.backward()
    return loss.detach().item()


# -------------------------------------------------------------------------------------------------- machine
def machine_info() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    def installed(name):
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    with open("/proc/cpuinfo") as f:
        cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "unknown")
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(memory / 2**30, 1),
            "python": platform.python_version(), "platform": platform.platform(),
            **{name: installed(name) for name in ("torch", "transformers", "deepspeed", "asrfront")}}
