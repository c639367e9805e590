"""Small PART models built in-process with no download, for the quick start, tests and benchmarks: a BPE tokenizer
trained on given text, a PartConfig of any width and depth for either encoder, a random model with its processor."""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from .configuration_part import PartConfig
from .modeling_part import AUDIO_BOS_TOKEN, AUDIO_EOS_TOKEN, AUDIO_TOKEN, PartForSpeechToText
from .processing_part import DEFAULT_PROMPT_TEMPLATES, LANGUAGE_NAMES, PartProcessor

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", AUDIO_TOKEN, AUDIO_BOS_TOKEN, AUDIO_EOS_TOKEN]
_DEFAULT_TEXT = [
    "the quick brown fox jumps over the lazy dog",
    "der schnelle braune Fuchs springt über den faulen Hund",
    "le renard brun rapide saute par-dessus le chien paresseux",
    "el rápido zorro marrón salta sobre el perro perezoso",
    "一二三四五六七八九十 百 千 万",
    *DEFAULT_PROMPT_TEMPLATES.values(),
    " ".join(LANGUAGE_NAMES.values()),
]


def build_tokenizer(
    texts: Iterable[str] = (), vocab_size: int = 512, model_max_length: int = 2048, split_han_characters: bool = False
):
    """Trains a byte-level BPE tokenizer (with the PART audio tokens and `<|endoftext|>` as eos/pad).

    With `split_han_characters`, every Han character is a pre-token of its own, so that no token spans two of them.
    Without it, a small corpus of unspaced Chinese lets BPE merge whole sentences into single tokens (real LLMs'
    tokenizers learn mostly one- and two-character Chinese tokens from their large corpora)."""
    tokenizer = Tokenizer(models.BPE())
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.pre_tokenizer = (
        pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(r"\p{Han}"), behavior="isolated"), byte_level])
        if split_han_characters
        else byte_level
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator([*_DEFAULT_TEXT, *texts], trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=SPECIAL_TOKENS[1:],
        model_max_length=model_max_length,
    )


def tiny_part_config(
    vocab_size: int,
    audio_token_id: int,
    encoder: str = "sensevoice",
    width: int = 32,
    encoder_layers: int = 2,
    llm_layers: int = 2,
    llm_width: int | None = None,
    heads: int = 2,
    num_mel_bins: int = 80,
    **config_kwargs,
) -> PartConfig:
    """A PartConfig with small dimensions; `encoder` is `"sensevoice"` or `"whisper"`."""
    llm_width = llm_width or width
    if encoder == "sensevoice":
        audio_config = {
            "model_type": "fun_asr_nano_encoder",
            "num_mel_bins": num_mel_bins,
            "hidden_size": width,
            "num_attention_heads": heads,
            "intermediate_size": 4 * width,
            "num_hidden_layers": encoder_layers,
            "num_timestamp_prediction_layers": 0,
            "hidden_dropout": 0.0,
            "attention_dropout": 0.0,
        }
    elif encoder == "whisper":
        audio_config = {
            "model_type": "whisper",
            "num_mel_bins": num_mel_bins,
            "d_model": width,
            "encoder_attention_heads": heads,
            "encoder_ffn_dim": 4 * width,
            "encoder_layers": encoder_layers,
            "decoder_layers": 1,
            "decoder_attention_heads": heads,
            "decoder_ffn_dim": 4 * width,
        }
    else:
        raise ValueError(f"encoder={encoder!r}; choose 'sensevoice' or 'whisper'.")
    text_config = {
        "model_type": "qwen2",
        "vocab_size": vocab_size,
        "hidden_size": llm_width,
        "intermediate_size": 4 * llm_width,
        "num_hidden_layers": llm_layers,
        "num_attention_heads": heads,
        "num_key_value_heads": 1,
        "max_position_embeddings": 4096,
        "tie_word_embeddings": True,
    }
    adapter_config = {"hidden_size": width, "num_attention_heads": heads, "intermediate_size": 4 * width}
    adapter_config.update(config_kwargs.pop("adapter_config", {}))
    return PartConfig(
        audio_config=audio_config,
        adapter_config=adapter_config,
        text_config=text_config,
        audio_token_id=audio_token_id,
        **config_kwargs,
    )


def build_tiny_part(
    encoder: str = "sensevoice", texts: Iterable[str] = (), vocab_size: int = 512, **config_kwargs
) -> tuple[PartForSpeechToText, PartProcessor]:
    """A randomly initialised small PART model and its processor (a fresh BPE tokenizer trained on `texts`)."""
    tokenizer = build_tokenizer(texts, vocab_size=vocab_size)
    config = tiny_part_config(
        vocab_size=len(tokenizer), audio_token_id=tokenizer.convert_tokens_to_ids(AUDIO_TOKEN), encoder=encoder,
        **config_kwargs,
    )
    model = PartForSpeechToText(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, PartProcessor.for_model(config, tokenizer)


__all__ = ["build_tiny_part", "build_tokenizer", "tiny_part_config"]
