"""Hub-shaped component checkpoints, built in-process with tiny dimensions (no download): Qwen2.5 (tied, padded
vocabulary; untied 7B style), Qwen3, Whisper-large-v3 and Fun-ASR-Nano, each with the `config.json` conventions of
the real repository and, for the LLMs, a Qwen tokenizer with the real special tokens, ids and chat templates.

What is kept from the real checkpoints: architectures and model types; tied vs. untied embeddings; a padded
vocabulary (embedding rows a multiple of 128 and more than the tokenizer's tokens, padding rows zero); bos/eos
conventions (base: `<|endoftext|>`; instruct and Qwen3: `<|im_end|>`); Qwen's special tokens in Qwen's order after
the BPE vocabulary; the weights' dtype (bfloat16 LLMs, float16 Whisper); Qwen3's explicit `head_dim` (heads x
head_dim != hidden size) and q/k norms; Whisper's 128 mel bins, 1500 source positions (the 30 s window the front
end pads to) and 51,866-token decoder vocabulary, saved as a full `WhisperForConditionalGeneration`; Fun-ASR-Nano as
transformers saves `FunAsrNanoForConditionalGeneration` (80 mel bins x LFR 7 = 560 inputs, timestamp layers).
What is shrunk: widths, depths, and the BPE vocabulary (a few hundred merges instead of 151,643).

`build_hub_checkpoints()` builds them once into a folder keyed by this file's content and the library versions
(in the system temp directory, or `$PART_HUB_FIXTURES_DIR`), so later test sessions reuse them.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

LLMS = ("qwen2.5-0.5b-instruct", "qwen2.5-1.5b", "qwen2.5-7b", "qwen3-0.6b")
ENCODERS = ("whisper-large-v3", "fun-asr-nano")

# Qwen2.5's added tokens, in id order after the BPE vocabulary (151643...151664 in the real tokenizer);
# the flag is the `special` attribute of the real tokenizer.json. Qwen3 appends four more.
QWEN25_ADDED_TOKENS = [
    ("<|endoftext|>", True), ("<|im_start|>", True), ("<|im_end|>", True), ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True), ("<|box_start|>", True), ("<|box_end|>", True), ("<|quad_start|>", True),
    ("<|quad_end|>", True), ("<|vision_start|>", True), ("<|vision_end|>", True), ("<|vision_pad|>", True),
    ("<|image_pad|>", True), ("<|video_pad|>", True), ("<tool_call>", False), ("</tool_call>", False),
    ("<|fim_prefix|>", False), ("<|fim_middle|>", False), ("<|fim_suffix|>", False), ("<|fim_pad|>", False),
    ("<|repo_name|>", False), ("<|file_sep|>", False),
]
QWEN3_ADDED_TOKENS = QWEN25_ADDED_TOKENS + [
    ("<tool_response>", False), ("</tool_response>", False), ("<think>", False), ("</think>", False),
]
QWEN_ADDITIONAL_SPECIAL_TOKENS = [token for token, special in QWEN25_ADDED_TOKENS[1:14]]
BPE_VOCAB_SIZE = 340  # regular tokens (the real tokenizers have 151,643)
VOCAB_ROW_MULTIPLE = 128

_QWEN25_TEMPLATE = (
    "{%- if tools %}\n    {{- '<|im_start|>system\\n' }}\n    {%- if messages[0]['role'] == 'system' %}\n"
    "        {{- messages[0]['content'] }}\n    {%- else %}\n        {{- 'SYSTEM_PROMPT' }}\n    {%- endif %}\n"
    "    {{- \"\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\n"
    "You are provided with function signatures within <tools></tools> XML tags:\\n<tools>\" }}\n"
    "    {%- for tool in tools %}\n        {{- \"\\n\" }}\n        {{- tool | tojson }}\n    {%- endfor %}\n"
    "    {{- \"\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments "
    "within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\\"name\\\": <function-name>, \\\"arguments\\\": "
    "<args-json-object>}\\n</tool_call><|im_end|>\\n\" }}\n{%- else %}\n"
    "    {%- if messages[0]['role'] == 'system' %}\n"
    "        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}\n    {%- else %}\n"
    "        {{- '<|im_start|>system\\nSYSTEM_PROMPT<|im_end|>\\n' }}\n    {%- endif %}\n{%- endif %}\n"
    "{%- for message in messages %}\n"
    "    {%- if (message.role == \"user\") or (message.role == \"system\" and not loop.first) or "
    "(message.role == \"assistant\" and not message.tool_calls) %}\n"
    "        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}\n"
    "    {%- elif message.role == \"assistant\" %}\n        {{- '<|im_start|>' + message.role }}\n"
    "        {%- if message.content %}\n            {{- '\\n' + message.content }}\n        {%- endif %}\n"
    "        {%- for tool_call in message.tool_calls %}\n            {%- if tool_call.function is defined %}\n"
    "                {%- set tool_call = tool_call.function %}\n            {%- endif %}\n"
    "            {{- '\\n<tool_call>\\n{\"name\": \"' }}\n            {{- tool_call.name }}\n"
    "            {{- '\", \"arguments\": ' }}\n            {{- tool_call.arguments | tojson }}\n"
    "            {{- '}\\n</tool_call>' }}\n        {%- endfor %}\n        {{- '<|im_end|>\\n' }}\n"
    "    {%- elif message.role == \"tool\" %}\n"
    "        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != \"tool\") %}\n"
    "            {{- '<|im_start|>user' }}\n        {%- endif %}\n        {{- '\\n<tool_response>\\n' }}\n"
    "        {{- message.content }}\n        {{- '\\n</tool_response>' }}\n"
    "        {%- if loop.last or (messages[loop.index0 + 1].role != \"tool\") %}\n"
    "            {{- '<|im_end|>\\n' }}\n        {%- endif %}\n    {%- endif %}\n{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n    {{- '<|im_start|>assistant\\n' }}\n{%- endif %}\n"
)
# Qwen3's template without the tool branches: no default system prompt; `enable_thinking=False` adds an empty
# think block to the generation prompt; earlier assistant turns lose their reasoning.
_QWEN3_TEMPLATE = (
    "{%- if messages[0].role == 'system' %}\n"
    "    {{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}\n{%- endif %}\n"
    "{%- for message in messages %}\n"
    "    {%- if (message.role == \"user\") or (message.role == \"system\" and not loop.first) %}\n"
    "        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}\n"
    "    {%- elif message.role == \"assistant\" %}\n        {%- set content = message.content %}\n"
    "        {%- if '</think>' in content %}\n"
    "            {%- set content = content.split('</think>')[-1].lstrip('\\n') %}\n        {%- endif %}\n"
    "        {{- '<|im_start|>' + message.role + '\\n' + content + '<|im_end|>\\n' }}\n    {%- endif %}\n"
    "{%- endfor %}\n{%- if add_generation_prompt %}\n    {{- '<|im_start|>assistant\\n' }}\n"
    "    {%- if enable_thinking is defined and enable_thinking is false %}\n"
    "        {{- '<think>\\n\\n</think>\\n\\n' }}\n    {%- endif %}\n{%- endif %}"
)
CHAT_TEMPLATES = {
    "qwen2.5-base": _QWEN25_TEMPLATE.replace("SYSTEM_PROMPT", "You are a helpful assistant."),
    "qwen2.5-instruct": _QWEN25_TEMPLATE.replace(
        "SYSTEM_PROMPT", "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
    ),
    "qwen3": _QWEN3_TEMPLATE,
}


# The BPE's training text (kept here, so the cached fixtures depend on this file alone).
TRAINING_TEXT = [
    "the quick brown fox jumps over the lazy dog",
    "der schnelle braune Fuchs springt über den faulen Hund",
    "le renard brun rapide saute par-dessus le chien paresseux",
    "一二三四五六七八九十 百 千 万",
    "Transcribe the English speech into English text. Transcribe the German speech into German text.",
    "Translate the German speech into English text. Translate the German text into English text: zwei drei",
    "English German French Spanish Italian Russian Chinese Japanese Korean Cantonese Portuguese Dutch",
    "one two three four eins zwei drei vier",
    "system user assistant You are a helpful assistant. You are Qwen, created by Alibaba Cloud.",
]


# ----------------------------------------------------------------------------------------------- tokenizers
def write_qwen_tokenizer(folder: Path, flavour: str) -> int:
    """Writes a Qwen tokenizer (`tokenizer.json`, `vocab.json`, `merges.txt`, `tokenizer_config.json` in the hub's
    layout) with a small byte-level BPE trained here. `flavour`: `qwen2.5-base`, `qwen2.5-instruct` or `qwen3`.
    Returns the number of tokens."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=BPE_VOCAB_SIZE, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tokenizer.train_from_iterator(TRAINING_TEXT, trainer=trainer)
    added = QWEN3_ADDED_TOKENS if flavour == "qwen3" else QWEN25_ADDED_TOKENS
    for content, special in added:  # one at a time: ids follow the list order, as in Qwen's tokenizer
        tokenizer.add_tokens([AddedToken(content, special=special, normalized=False)])
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(folder / "tokenizer.json"))

    state = json.loads(tokenizer.to_str())
    (folder / "vocab.json").write_text(json.dumps(state["model"]["vocab"], ensure_ascii=False))
    merges = [" ".join(m) if isinstance(m, list) else m for m in state["model"]["merges"]]
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    ids = {content: tokenizer.token_to_id(content) for content, _ in added}
    eos = "<|endoftext|>" if flavour == "qwen2.5-base" else "<|im_end|>"
    config = {
        "add_bos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": {
            str(ids[content]): {"content": content, "lstrip": False, "normalized": False, "rstrip": False,
                                "single_word": False, "special": special}
            for content, special in added
        },
        "additional_special_tokens": QWEN_ADDITIONAL_SPECIAL_TOKENS,
        "bos_token": None,
        "chat_template": CHAT_TEMPLATES["qwen3" if flavour == "qwen3" else flavour],
        "clean_up_tokenization_spaces": False,
        "eos_token": eos,
        "errors": "replace",
        "model_max_length": 131072,
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False))
    return tokenizer.get_vocab_size(with_added_tokens=True)


# ---------------------------------------------------------------------------------------------------- LLMs
def _rows_for(num_tokens: int, extra_blocks: int = 0) -> int:
    """Embedding rows: the next multiple of 128 holding the tokens and our three audio tokens (Qwen2.5 has 271
    padding rows for 3 new tokens), plus `extra_blocks` further blocks (the 7B's larger padding)."""
    blocks = -(-(num_tokens + 3) // VOCAB_ROW_MULTIPLE) + extra_blocks
    return blocks * VOCAB_ROW_MULTIPLE


def qwen_llm_config(name: str, ids: dict[str, int], num_tokens: int) -> dict:
    """The hub `config.json` of `name` (widths and depths shrunk, every other field as published)."""
    endoftext, im_end = ids["<|endoftext|>"], ids["<|im_end|>"]
    common = {
        "architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0, "bos_token_id": endoftext,
        "eos_token_id": endoftext, "hidden_act": "silu", "initializer_range": 0.02, "model_type": "qwen2",
        "num_hidden_layers": 2, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "torch_dtype": "bfloat16",
        "transformers_version": "4.43.1", "use_cache": True, "use_sliding_window": False,
    }
    if name == "qwen2.5-0.5b-instruct":  # 896 wide, 14 heads / 2 kv heads, tied, 151,936 rows
        return {**common, "eos_token_id": im_end, "hidden_size": 56, "intermediate_size": 304,
                "max_position_embeddings": 32768, "max_window_layers": 21, "num_attention_heads": 7,
                "num_key_value_heads": 1, "sliding_window": 32768, "tie_word_embeddings": True,
                "vocab_size": _rows_for(num_tokens)}
    if name == "qwen2.5-1.5b":  # 1536 wide, 12 heads / 2 kv heads, tied
        return {**common, "hidden_size": 48, "intermediate_size": 280, "max_position_embeddings": 131072,
                "max_window_layers": 28, "num_attention_heads": 6, "num_key_value_heads": 1,
                "sliding_window": 131072, "tie_word_embeddings": True, "use_mrope": False,
                "vocab_size": _rows_for(num_tokens)}
    if name == "qwen2.5-7b":  # 3584 wide, 28 heads / 4 kv heads, untied lm_head, 152,064 rows
        return {**common, "hidden_size": 56, "intermediate_size": 296, "max_position_embeddings": 131072,
                "max_window_layers": 28, "num_attention_heads": 7, "num_key_value_heads": 1,
                "sliding_window": 131072, "tie_word_embeddings": False, "vocab_size": _rows_for(num_tokens, 1)}
    if name == "qwen3-0.6b":  # 1024 wide, 16 heads x head_dim 128 (= 2048 != 1024), 8 kv heads, tied
        return {
            "architectures": ["Qwen3ForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
            "bos_token_id": endoftext, "eos_token_id": im_end, "head_dim": 16, "hidden_act": "silu",
            "hidden_size": 32, "initializer_range": 0.02, "intermediate_size": 96, "max_position_embeddings": 40960,
            "max_window_layers": 28, "model_type": "qwen3", "num_attention_heads": 4, "num_hidden_layers": 2,
            "num_key_value_heads": 2, "rms_norm_eps": 1e-06, "rope_scaling": None, "rope_theta": 1000000,
            "sliding_window": None, "tie_word_embeddings": True, "torch_dtype": "bfloat16",
            "transformers_version": "4.51.0", "use_cache": True, "use_sliding_window": False,
            "vocab_size": _rows_for(num_tokens),
        }
    raise ValueError(f"Unknown LLM fixture {name!r}; choose from {LLMS}.")


def qwen_generation_config(name: str, ids: dict[str, int]) -> dict:
    endoftext, im_end = ids["<|endoftext|>"], ids["<|im_end|>"]
    if name in ("qwen2.5-1.5b", "qwen2.5-7b"):
        return {"bos_token_id": endoftext, "do_sample": False, "eos_token_id": endoftext, "max_new_tokens": 2048,
                "transformers_version": "4.37.0"}
    sampling = {"qwen3-0.6b": {"temperature": 0.6, "top_k": 20, "top_p": 0.95}}.get(
        name, {"repetition_penalty": 1.1, "temperature": 0.7, "top_k": 20, "top_p": 0.8}
    )
    return {"bos_token_id": endoftext, "do_sample": True, "eos_token_id": [im_end, endoftext],
            "pad_token_id": endoftext, **sampling, "transformers_version": "4.51.0"}


def write_qwen_llm(folder: Path, name: str) -> None:
    """A Qwen causal LM checkpoint as on the hub: bfloat16 safetensors, hub `config.json`, `generation_config.json`
    and tokenizer; random weights, padding rows (beyond the tokenizer) zero."""
    from transformers import AutoConfig, AutoModelForCausalLM

    flavour = {"qwen2.5-0.5b-instruct": "qwen2.5-instruct", "qwen3-0.6b": "qwen3"}.get(name, "qwen2.5-base")
    num_tokens = write_qwen_tokenizer(folder, flavour)
    vocab = json.loads((folder / "tokenizer.json").read_text())
    ids = {t["content"]: t["id"] for t in vocab["added_tokens"]}
    config_dict = qwen_llm_config(name, ids, num_tokens)
    (folder / "config.json").write_text(json.dumps(config_dict, indent=2))
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder), dtype=torch.float32)
    with torch.no_grad():
        model.get_input_embeddings().weight[num_tokens:] = 0
        if not config_dict["tie_word_embeddings"]:
            model.get_output_embeddings().weight[num_tokens:] = 0
    model.to(torch.bfloat16).save_pretrained(folder)
    (folder / "config.json").write_text(json.dumps(config_dict, indent=2))  # the hub's, not today's format
    (folder / "generation_config.json").write_text(json.dumps(qwen_generation_config(name, ids), indent=2))


# ------------------------------------------------------------------------------------------------ encoders
def whisper_large_v3_config() -> dict:
    """openai/whisper-large-v3's config.json with 2 + 1 layers of width 32 instead of 32 + 32 of width 1280."""
    return {
        "_name_or_path": "openai/whisper-large-v3", "activation_dropout": 0.0, "activation_function": "gelu",
        "apply_spec_augment": False, "architectures": ["WhisperForConditionalGeneration"], "attention_dropout": 0.0,
        "begin_suppress_tokens": [220, 50257], "bos_token_id": 50257, "classifier_proj_size": 256, "d_model": 32,
        "decoder_attention_heads": 2, "decoder_ffn_dim": 128, "decoder_layerdrop": 0.0, "decoder_layers": 1,
        "decoder_start_token_id": 50258, "dropout": 0.0, "encoder_attention_heads": 2, "encoder_ffn_dim": 128,
        "encoder_layerdrop": 0.0, "encoder_layers": 2, "eos_token_id": 50257, "init_std": 0.02,
        "is_encoder_decoder": True, "mask_feature_length": 10, "mask_feature_min_masks": 0, "mask_feature_prob": 0.0,
        "mask_time_length": 10, "mask_time_min_masks": 2, "mask_time_prob": 0.05, "max_length": 448,
        "max_source_positions": 1500, "max_target_positions": 448, "median_filter_width": 7, "model_type": "whisper",
        "num_hidden_layers": 2, "num_mel_bins": 128, "pad_token_id": 50256, "scale_embedding": False,
        "torch_dtype": "float16", "transformers_version": "4.36.0.dev0", "use_cache": True,
        "use_weighted_layer_sum": False, "vocab_size": 51866,
    }


def write_whisper_large_v3(folder: Path) -> None:
    """A full `WhisperForConditionalGeneration` checkpoint (float16, hub config and preprocessor config)."""
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    config_dict = whisper_large_v3_config()
    WhisperForConditionalGeneration(WhisperConfig(**config_dict)).to(torch.float16).save_pretrained(folder)
    (folder / "config.json").write_text(json.dumps(config_dict, indent=2))
    preprocessor = {
        "chunk_length": 30, "feature_extractor_type": "WhisperFeatureExtractor", "feature_size": 128,
        "hop_length": 160, "n_fft": 400, "n_samples": 480000, "nb_max_frames": 3000, "padding_side": "right",
        "padding_value": 0.0, "processor_class": "WhisperProcessor", "return_attention_mask": False,
        "sampling_rate": 16000,
    }
    (folder / "preprocessor_config.json").write_text(json.dumps(preprocessor, indent=2))


def write_fun_asr_nano(folder: Path, qwen3_tokenizer: Path) -> None:
    """`FunAsrNanoForConditionalGeneration` saved by transformers (its defaults are Fun-ASR-Nano-2512's), shrunk:
    SAN-M encoder 3 + 1 timestamp layers of width 32 (70 = 50 + 20 of width 512), 560 inputs, Qwen3 LLM."""
    from transformers import FunAsrNanoConfig, FunAsrNanoForConditionalGeneration

    state = json.loads((qwen3_tokenizer / "tokenizer.json").read_text())
    added = {t["content"]: t["id"] for t in state["added_tokens"]}
    config = FunAsrNanoConfig(
        audio_config={"model_type": "fun_asr_nano_encoder", "num_mel_bins": 80, "num_stacked_frames": 7,
                      "hidden_size": 32, "num_attention_heads": 2, "intermediate_size": 128, "num_hidden_layers": 4,
                      "num_timestamp_prediction_layers": 1},
        adaptor_config={"hidden_size": 32, "intermediate_size": 8, "num_attention_heads": 2,
                        "projector_hidden_size": 64},
        text_config={"model_type": "qwen3", "hidden_size": 32, "intermediate_size": 96, "num_hidden_layers": 1,
                     "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
                     "vocab_size": _rows_for(len(state["model"]["vocab"]) + len(added)), "tie_word_embeddings": True,
                     "max_position_embeddings": 40960},
        audio_token_id=added["<|object_ref_start|>"],  # 151646 in the real checkpoint
        architectures=["FunAsrNanoForConditionalGeneration"],
    )
    FunAsrNanoForConditionalGeneration(config).save_pretrained(folder)


# ---------------------------------------------------------------------------------------------------- cache
def _cache_key() -> str:
    import tokenizers
    import transformers

    source = Path(__file__).read_bytes() + transformers.__version__.encode() + tokenizers.__version__.encode()
    return hashlib.sha256(source).hexdigest()[:16]


def build_hub_checkpoints(root: str | os.PathLike | None = None) -> dict[str, Path]:
    """Builds (or reuses) every fixture; returns `{name: folder}` for the names in `LLMS` and `ENCODERS`."""
    root = Path(root or os.environ.get("PART_HUB_FIXTURES_DIR") or tempfile.gettempdir())
    folder = root / f"part-hub-fixtures-{_cache_key()}"
    if not (folder / "complete").is_file():
        staging = Path(tempfile.mkdtemp(prefix=folder.name + ".", dir=root))
        torch_state = torch.random.get_rng_state()
        try:
            torch.manual_seed(1234)
            for name in LLMS:
                write_qwen_llm(staging / name, name)
            write_whisper_large_v3(staging / "whisper-large-v3")
            write_fun_asr_nano(staging / "fun-asr-nano", staging / "qwen3-0.6b")
            (staging / "complete").write_text("ok")
            try:
                os.rename(staging, folder)
            except OSError:  # another session finished first: use its copy
                shutil.rmtree(staging, ignore_errors=True)
        finally:
            torch.random.set_rng_state(torch_state)
            if staging.exists() and staging != folder:
                shutil.rmtree(staging, ignore_errors=True)
    return {name: folder / name for name in (*LLMS, *ENCODERS)}
