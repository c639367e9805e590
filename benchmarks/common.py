"""Shared pieces of the benchmark suite: the PART model and its peer at identical dimensions, their inputs,
memory probes (RSS high-water marks), interleaved timing and progress output.

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
import statistics
import sys
import time
from dataclasses import asdict, dataclass, replace

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

VOCAB = 151_936
SAMPLE_RATE = 16_000
TARGET_TOKENS = 24  # target text tokens per clip; eos is appended, so 25 loss positions


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
    vocab_size: int = VOCAB
    batch_size: int = 8
    seconds: float = 6.0
    target_tokens: int = TARGET_TOKENS

    def to_dict(self) -> dict:
        return asdict(self)

    def with_(self, **changes) -> "Dims":
        return replace(self, **changes)


# --------------------------------------------------------------------------------------------------- output
_START = time.time()


def log(message: str) -> None:
    """Progress line on stderr (stdout of workers carries their JSON result)."""
    print(f"[bench {time.time() - _START:6.0f}s] {message}", file=sys.stderr, flush=True)


def emit_result(result: dict) -> None:
    """A worker's result: one JSON line, last on stdout."""
    sys.stdout.write("\n" + json.dumps(result) + "\n")
    sys.stdout.flush()


# -------------------------------------------------------------------------------------------------- threads
def set_threads(num_threads: int | None = None) -> int:
    import torch

    num_threads = num_threads or int(os.environ.get("BENCH_THREADS", 0)) or (os.cpu_count() or 1)
    torch.set_num_threads(num_threads)
    return num_threads


# --------------------------------------------------------------------------------------------------- memory
def rss_bytes() -> int:
    return _status_field("VmRSS")


def hwm_bytes() -> int:
    """High-water mark of the resident set since the process started or since `reset_peak()`."""
    return _status_field("VmHWM")


def _status_field(name: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(name + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{name} not in /proc/self/status")


def reset_peak() -> bool:
    """Resets VmHWM to the current RSS (Linux `clear_refs` 5). Returns False where that is not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def release_memory() -> None:
    """Frees Python garbage and hands freed heap pages back to the OS, so RSS reflects live memory."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


def process_peak_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def measure_peak(fn, model=None) -> dict:
    """Runs `fn()` once and returns the RSS before it and its high-water mark (bytes); the memory cost of `fn`
    is `peak - before` (allocator caches are released first, so freed memory is not silently reused). With
    `model`, its gradients are dropped first (as `optimizer.zero_grad(set_to_none=True)` leaves them)."""
    if model is not None:
        model.zero_grad(set_to_none=True)
    release_memory()
    before = rss_bytes()
    can_reset = reset_peak()
    out = fn()
    peak = hwm_bytes() if can_reset else process_peak_bytes()
    return {"before": before, "peak": peak, "delta": peak - before, "reset_ok": can_reset, "out": out}


# --------------------------------------------------------------------------------------------------- timing
def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def interleave(functions: dict, repeats: int, warmup: int = 1, label: str = "") -> dict[str, list[float]]:
    """Times each function `repeats` times, interleaved A B C A B C ..., after `warmup` untimed rounds.
    The order inside a round alternates (A B, B A, ...) so neither always runs right after the other."""
    names = list(functions)
    for _ in range(warmup):
        for name in names:
            functions[name]()
    times = {name: [] for name in names}
    for repeat in range(repeats):
        order = names if repeat % 2 == 0 else names[::-1]
        for name in order:
            times[name].append(timed(functions[name]))
        if label:
            summary = ", ".join(f"{n} {times[n][-1]:.2f}s" for n in names)
            log(f"  {label} round {repeat + 1}/{repeats}: {summary}")
    return times


def summary(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values),
            "values": values}


def paired_ratios(numerator: list[float], denominator: list[float]) -> dict:
    """Ratios of the i-th measurements (taken side by side): median, min, max."""
    return summary([a / b for a, b in zip(numerator, denominator, strict=True)])


# ---------------------------------------------------------------------------------------------------- audio
def make_audio(seconds: float, seed: int = 0) -> "np.ndarray":
    """A speech-like signal (harmonics with a moving pitch, amplitude modulation, a little noise)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    t = np.arange(int(round(seconds * SAMPLE_RATE))) / SAMPLE_RATE
    pitch = 120 + 40 * np.sin(2 * np.pi * 0.7 * t + seed)
    phase = 2 * np.pi * np.cumsum(pitch) / SAMPLE_RATE
    signal = sum(np.sin(k * phase) / k for k in range(1, 6)) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t))
    return (0.1 * signal + 0.01 * rng.standard_normal(t.size)).astype(np.float32)


def wav_bytes(audio) -> bytes:
    """16 kHz 16-bit PCM WAV bytes, as the demo corpus stores audio (`Audio(decode=False)`)."""
    import soundfile as sf

    buffer = io.BytesIO()
    sf.write(buffer, audio, SAMPLE_RATE, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


# --------------------------------------------------------------------------------------------------- models
def build_tokenizer(cache_dir: str | None = None):
    """The suite's BPE tokenizer (trained in-process; cached in `cache_dir`, default `$BENCH_CACHE`, so each worker
    process does not train it again)."""
    from transformers import PreTrainedTokenizerFast

    from modeling_part.tiny import build_tokenizer as _build

    cache_dir = cache_dir or os.environ.get("BENCH_CACHE")
    path = os.path.join(cache_dir, "tokenizer") if cache_dir else None
    if path and os.path.isfile(os.path.join(path, "tokenizer.json")):
        return PreTrainedTokenizerFast.from_pretrained(path)
    tokenizer = _build(vocab_size=512)
    if path:
        tokenizer.save_pretrained(path)
    return tokenizer


def _text_config(dims: Dims) -> dict:
    return {
        "model_type": "qwen2",
        "vocab_size": dims.vocab_size,
        "hidden_size": dims.llm_width,
        "intermediate_size": 4 * dims.llm_width,
        "num_hidden_layers": dims.llm_layers,
        "num_attention_heads": dims.llm_heads,
        "num_key_value_heads": dims.llm_kv_heads,
        "max_position_embeddings": 4096,
        "tie_word_embeddings": True,
    }


def _audio_config(dims: Dims) -> dict:
    return {
        "model_type": "fun_asr_nano_encoder",
        "num_mel_bins": 80,
        "hidden_size": dims.encoder_width,
        "num_attention_heads": dims.encoder_heads,
        "intermediate_size": 4 * dims.encoder_width,
        "num_hidden_layers": dims.encoder_layers,
        "num_timestamp_prediction_layers": 0,
        "hidden_dropout": 0.0,
        "attention_dropout": 0.0,
    }


def _adapter_config(dims: Dims) -> dict:
    # The peer's adaptor fixes its width to the LLM width and its feed-forward to width // 4 (its config
    # validation demands both); PART's adapter gets exactly those numbers, the peer's relu included.
    return {
        "hidden_size": dims.llm_width,
        "num_attention_heads": dims.llm_heads,
        "intermediate_size": dims.llm_width // 4,
        "num_hidden_layers": dims.adapter_layers,
        "hidden_act": "relu",
    }


def part_config(dims: Dims, tokenizer):
    from modeling_part import PartConfig

    return PartConfig(
        audio_config=_audio_config(dims),
        adapter_config=_adapter_config(dims),
        text_config=_text_config(dims),
        audio_token_id=tokenizer.convert_tokens_to_ids("<|AUDIO|>"),
    )


def build_part(dims: Dims, tokenizer, seed: int = 0):
    import torch

    from modeling_part import PartForSpeechToText

    torch.manual_seed(seed)
    model = PartForSpeechToText(part_config(dims, tokenizer))
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def build_peer(dims: Dims, tokenizer, part_model=None, seed: int = 0):
    """The peer at the same dimensions. With `part_model` (timing runs), the peer *shares* PART's encoder, LLM body
    and (tied) LM head modules: the same classes from the same configs, now also the same tensors in memory, so
    the timings compare the models' structure (adaptor, sequence lengths, loss path) and not where the allocator
    happened to put two copies of a 300 MB embedding (an identical-content copy of the head measured up to 12%
    faster or slower in a memory-bound decode step here). Only the adaptors differ."""
    import torch
    from transformers import FunAsrNanoConfig, FunAsrNanoForConditionalGeneration

    torch.manual_seed(seed)
    adapter = _adapter_config(dims)
    config = FunAsrNanoConfig(
        audio_config=_audio_config(dims),
        text_config=_text_config(dims),
        adaptor_config={
            "hidden_size": adapter["hidden_size"],
            "num_attention_heads": adapter["num_attention_heads"],
            "intermediate_size": adapter["intermediate_size"],
            "num_hidden_layers": adapter["num_hidden_layers"],
            "projector_hidden_size": dims.llm_width,
        },
        audio_token_id=tokenizer.convert_tokens_to_ids("<|AUDIO|>"),
    )
    model = FunAsrNanoForConditionalGeneration(config)
    if part_model is not None:
        for ours, theirs in ((part_model.audio_tower, model.model.audio_tower),
                             (part_model.language_model.model, model.model.language_model),
                             (part_model.language_model.lm_head, model.lm_head)):
            if type(ours) is not type(theirs):
                raise TypeError(f"cannot share {type(ours).__name__} with the peer's {type(theirs).__name__}")
        model.model.audio_tower = part_model.audio_tower
        model.model.language_model = part_model.language_model.model
        model.lm_head = part_model.language_model.lm_head
        if model.lm_head.weight is not model.model.language_model.embed_tokens.weight:
            raise RuntimeError("the shared LM head is not tied to the shared input embedding")
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def parameter_count(model) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def attention_implementations(model) -> list[str]:
    found = set()
    for module in model.modules():
        config = getattr(module, "config", None)
        implementation = getattr(config, "_attn_implementation", None)
        if implementation:
            found.add(f"{config.model_type}:{implementation}")
    return sorted(found)


# --------------------------------------------------------------------------------------------------- inputs
def build_processors(model_config, tokenizer):
    """PART's processor and the peer's: the same feature extractor, tokenizer and prompt template; the peer's
    placeholder count is one per LFR frame (its adaptor does not downsample)."""
    from modeling_part import PartFeatureExtractor, PartProcessor

    part = PartProcessor.from_model_config(model_config, PartFeatureExtractor(front_end="sensevoice"), tokenizer)
    peer = PartProcessor(
        PartFeatureExtractor(front_end="sensevoice"), tokenizer, encoder_stride=1, adapter_kernel_size=1,
        adapter_stride=1,
    )
    return part, peer


def target_text(tokenizer, num_tokens: int = TARGET_TOKENS) -> str:
    """A target sentence of exactly `num_tokens` tokens."""
    words = "the quick brown fox jumps over the lazy dog".split()
    text, count, index = "", 0, 0
    while count < num_tokens:
        candidate = (text + " " + words[index % len(words)]).strip()
        index += 1
        candidate_count = len(tokenizer(candidate, add_special_tokens=False)["input_ids"])
        if candidate_count > num_tokens:
            break
        text, count = candidate, candidate_count
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    while len(ids) < num_tokens:  # top up with single-token pieces
        ids = ids + ids[: num_tokens - len(ids)]
    return tokenizer.decode(ids[:num_tokens])


def clips(dims: Dims, seed: int = 0):
    return [make_audio(dims.seconds, seed=seed + i) for i in range(dims.batch_size)]


def training_batches(dims: Dims, part_processor, peer_processor, tokenizer, audio=None):
    """(PART batch, peer batch) for the same clips and targets; the peer reads `input_features_mask`."""
    audio = audio if audio is not None else clips(dims)
    text = [target_text(tokenizer, dims.target_tokens)] * len(audio)
    common = dict(sampling_rate=SAMPLE_RATE, task="asr", source_language="en", text=text)
    part = dict(part_processor(audio=audio, **common))
    peer = dict(peer_processor(audio=audio, **common))
    peer["input_features_mask"] = peer.pop("feature_attention_mask")
    return part, peer


def generation_batches(dims: Dims, part_processor, peer_processor, audio=None):
    audio = audio if audio is not None else clips(dims)
    common = dict(sampling_rate=SAMPLE_RATE, task="asr", source_language="en")
    part = dict(part_processor(audio=audio, **common))
    peer = dict(peer_processor(audio=audio, **common))
    peer["input_features_mask"] = peer.pop("feature_attention_mask")
    return part, peer


def train_step(model, batch) -> float:
    """Forward + backward (gradients from scratch, as after `zero_grad(set_to_none=True)`)."""
    model.zero_grad(set_to_none=True)
    loss = model(**batch).loss
    loss.backward()
    return loss.detach().item()


def full_logits_loss(model, batch):
    """PART with the conventional loss path (the ablation of its target-only LM head): LM head over every
    position, then the causal-LM loss of transformers."""
    embeds = model.get_input_embeddings()(batch["input_ids"])
    audio, lengths = model.get_audio_embeddings(batch["input_features"], batch["feature_attention_mask"])
    embeds = model._merge_audio_embeddings(batch["input_ids"], embeds, audio, lengths)
    logits = model.language_model(inputs_embeds=embeds, attention_mask=batch["attention_mask"]).logits
    return model.language_model.loss_function(logits, batch["labels"], vocab_size=logits.shape[-1])


def full_logits_train_step(model, batch) -> float:
    model.zero_grad(set_to_none=True)
    loss = full_logits_loss(model, batch)
    loss.backward()
    return loss.detach().item()


# -------------------------------------------------------------------------------------------------- machine
def machine_info() -> dict:
    import torch
    import transformers

    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    memory = 0
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal"):
                    memory = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    try:
        import deepspeed

        deepspeed_version = deepspeed.__version__
    except Exception:  # noqa: BLE001 - optional
        deepspeed_version = None
    try:
        import asrfront

        asrfront_version = getattr(asrfront, "__version__", "installed")
    except ImportError:
        asrfront_version = None
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(memory / 2**30, 1),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "deepspeed": deepspeed_version,
        "asrfront": asrfront_version,
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
    }


def load_average() -> tuple[float, float, float]:
    return os.getloadavg()
