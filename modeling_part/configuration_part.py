"""Configuration of the PART speech-to-text model: audio encoder -> adapter -> causal LLM.

`PartConfig` composes `audio_config`, `adapter_config` and `text_config` (the transformers v5 style) and derives the
audio token rate (LLM positions per second of audio) from the front end, the encoder's subsampling and the adapter.
"""

from __future__ import annotations

import importlib
import math
from types import SimpleNamespace

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, AutoModel
from transformers.configuration_utils import PreTrainedConfig, SubConfigSpec

# Everything that differs between the encoder families PART knows, in one table (other encoders take the defaults):
# feature_frame_rate: feature frames per second of audio its front end reads (SenseVoice: 10 ms fbank frames stacked
#   7, stride 6; Whisper: 10 ms log-mel frames); other encoders pass `feature_frame_rate=` to PartConfig.
# encoder_class: the module PART builds ("module:Class"; None: the AutoModel class of the config).
# mask_argument: the keyword of forward's frame mask (None: the encoder takes none). time_axis: of input_features.
# output_lengths: for an encoder class without `_get_feat_extract_output_lengths` (SenseVoice keeps its frame rate).
ENCODER_FAMILIES: dict[str, dict] = {
    "fun_asr_nano_encoder": {
        "feature_frame_rate": 100.0 / 6.0,
        "mask_argument": "input_features_mask",
        "output_lengths": lambda encoder, input_lengths: input_lengths,
    },
    "whisper": {
        "feature_frame_rate": 100.0,
        "encoder_class": "transformers.models.whisper.modeling_whisper:WhisperEncoder",
        "mask_argument": None,
        "time_axis": -1,
    },
}
_FAMILY_DEFAULTS = {
    "feature_frame_rate": None,
    "encoder_class": None,
    "mask_argument": "attention_mask",
    "time_axis": 1,
    "output_lengths": None,
}


def encoder_family(audio_config: PreTrainedConfig) -> dict:
    """The `ENCODER_FAMILIES` entry of `audio_config`'s encoder, completed with the defaults."""
    return {**_FAMILY_DEFAULTS, **ENCODER_FAMILIES.get(audio_config.model_type, {})}


DEFAULT_MAX_AUDIO_TOKEN_RATE = 12.5
# Feature frames at which the encoder's time subsampling (`PartConfig.encoder_stride`) is read off its length function.
_STRIDE_PROBE_FRAMES = 6000


def audio_encoder_class(audio_config: PreTrainedConfig) -> type:
    """The module class PART builds for `audio_config` (`ENCODER_FAMILIES`, else the `AutoModel` class)."""
    name = encoder_family(audio_config)["encoder_class"]
    if name is not None:
        module, _, class_name = name.partition(":")
        return getattr(importlib.import_module(module), class_name)
    try:
        return AutoModel._model_mapping[type(audio_config)]
    except KeyError as error:
        raise ValueError(
            f"audio_config ({type(audio_config).__name__}) has no model class registered with AutoModel; register the "
            "encoder with AutoModel.register(config_class, model_class)."
        ) from error


def encoder_output_lengths(audio_config: PreTrainedConfig, feature_lengths, encoder=None):
    """Encoder output frames for `feature_lengths` feature frames (int or integer tensor), from the encoder's own
    `_get_feat_extract_output_lengths` (of `encoder`, else of the class PART builds for `audio_config`)."""
    encoder_class = type(encoder) if encoder is not None else audio_encoder_class(audio_config)
    function = getattr(encoder_class, "_get_feat_extract_output_lengths", None)
    function = function or encoder_family(audio_config)["output_lengths"]
    if function is None:
        raise ValueError(
            f"The audio encoder {encoder_class.__name__} (model_type={audio_config.model_type!r}) does not say how "
            "many frames it outputs: implement `_get_feat_extract_output_lengths(self, input_lengths)` on it, as "
            "Whisper's encoder does (output frames for `input_lengths` feature frames, from `self.config` alone, for "
            "ints and integer tensors). PART counts the audio placeholders (processor) and audio positions (model) "
            "with it."
        )
    return function(encoder if encoder is not None else SimpleNamespace(config=audio_config), feature_lengths)


def adapter_output_lengths(encoder_lengths, kernel_size: int, stride: int):
    """Audio positions the adapter's conv1d (padding `(kernel_size - 1) // 2`) makes of `encoder_lengths`."""
    padding = (kernel_size - 1) // 2
    return (encoder_lengths + 2 * padding - kernel_size) // stride + 1


def audio_token_lengths(feature_lengths, encoder_stride: int, kernel_size: int, stride: int):
    """Audio positions for an encoder that subsamples time by `encoder_stride` (ceil division), for processors saved
    without `audio_config`; `PartConfig.audio_token_lengths` uses the encoder's own length function."""
    encoder_lengths = (feature_lengths + encoder_stride - 1) // encoder_stride
    return adapter_output_lengths(encoder_lengths, kernel_size, stride)


@strict
class PartAdapterConfig(PreTrainedConfig):
    r"""
    The adapter between the audio encoder and the LLM: one strided conv1d (time downsampling, encoder width ->
    `hidden_size`), `num_hidden_layers` Transformer layers, then a projection to the LLM width.

    Args:
        hidden_size (`int`, defaults to 1024): width of the adapter's Transformer layers.
        num_hidden_layers (`int`, defaults to 2): Transformer layers (the paper uses two).
        num_attention_heads (`int`, defaults to 8): attention heads per layer.
        intermediate_size (`int`, defaults to 4096): feed-forward width.
        downsample_stride (`int`, *optional*): conv1d stride. `None` picks the smallest stride that keeps the
            audio token rate at or below `PartConfig.max_audio_token_rate`.
        downsample_kernel_size (`int`, *optional*): conv1d kernel; `None` means `2 * stride - 1`, so a clip of
            `L` encoder frames gives exactly `ceil(L / stride)` audio tokens.
        hidden_act (`str`, defaults to `"gelu"`), dropout (`float`, defaults to 0.0), layer_norm_eps (`float`).
        initializer_range (`float`, defaults to 0.02): std of the normal init of linear and convolution weights.
    """

    model_type = "part_adapter"

    hidden_size: int = 1024
    num_hidden_layers: int = 2
    num_attention_heads: int = 8
    intermediate_size: int = 4096
    downsample_stride: int | None = None
    downsample_kernel_size: int | None = None
    hidden_act: str = "gelu"
    dropout: float = 0.0
    layer_norm_eps: float = 1e-5
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.hidden_size % self.num_attention_heads != 0:
            raise ValueError(
                f"adapter_config.hidden_size ({self.hidden_size}) must be divisible by "
                f"adapter_config.num_attention_heads ({self.num_attention_heads}); pick a head count that divides it."
            )
        for field in ("downsample_stride", "downsample_kernel_size"):
            if (value := getattr(self, field)) is not None and value < 1:
                raise ValueError(f"adapter_config.{field} must be >= 1, got {value}.")

    @property
    def kernel_size(self) -> int:
        stride = self.downsample_stride or 1
        return self.downsample_kernel_size or 2 * stride - 1


@strict
class PartConfig(PreTrainedConfig):
    r"""
    Configuration of [`PartForSpeechToText`].

    Args:
        audio_config (`dict` or `PreTrainedConfig`, *optional*): the speech encoder; defaults to transformers'
            SenseVoice-style `fun_asr_nano_encoder` (50 layers). An encoder outside `ENCODER_FAMILIES` (Whisper,
            SenseVoice) needs `_get_feat_extract_output_lengths` and `feature_frame_rate`.
        adapter_config (`dict` or [`PartAdapterConfig`], *optional*): the adapter.
        text_config (`dict` or `PreTrainedConfig`, *optional*): the causal LLM; defaults to `qwen2`.
        audio_token_id (`int`, *optional*): id of the audio placeholder token in the tokenizer.
        feature_frame_rate (`float`, *optional*): feature frames per second of audio (derived for known encoders).
        encoder_stride (`int`, *optional*): the encoder's time subsampling. Derived; a value that disagrees is an error.
        max_audio_token_rate (`float`, defaults to 12.5): upper bound used to choose the adapter stride when
            `adapter_config.downsample_stride` is `None`.
        audio_token_rate (`float`, *optional*): LLM positions per second of audio. Derived; a value that disagrees
            is an error.
        lora_config (`dict`, *optional*): the LLM's LoRA settings (a `peft.LoraConfig` as dict) when the checkpoint
            carries unmerged LoRA weights. `None` for plain (merged) checkpoints.
        max_new_tokens_per_second (`float`, defaults to 15.0), min_new_tokens_budget (`int`, defaults to 16): when
            `generate()` gets no length limit, a speech input may produce at most
            `min_new_tokens_budget + max_new_tokens_per_second * seconds` new tokens.
        ignore_index (`int`, defaults to -100): label value excluded from the loss.
    """

    model_type = "part"
    sub_configs_defaults = {
        "audio_config": SubConfigSpec(
            config_class=AutoConfig,
            model_type="fun_asr_nano_encoder",
            init_kwargs={"num_hidden_layers": 50, "num_timestamp_prediction_layers": 0},
        ),
        "adapter_config": SubConfigSpec(config_class=PartAdapterConfig),
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="qwen2"),
    }

    audio_config: dict | PreTrainedConfig | None = None
    adapter_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    audio_token_id: int | None = None
    feature_frame_rate: float | None = None
    encoder_stride: int | None = None
    max_audio_token_rate: float = DEFAULT_MAX_AUDIO_TOKEN_RATE
    audio_token_rate: float | None = None
    lora_config: dict | None = None
    max_new_tokens_per_second: float = 15.0
    min_new_tokens_budget: int = 16
    ignore_index: int = -100

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.max_audio_token_rate <= 0:
            raise ValueError(f"max_audio_token_rate must be positive, got {self.max_audio_token_rate}.")
        if self.feature_frame_rate is None:
            self.feature_frame_rate = encoder_family(self.audio_config)["feature_frame_rate"]
        if self.feature_frame_rate is None:
            raise ValueError(
                f"audio_config.model_type={self.audio_config.model_type!r} is not one of the encoders PART knows "
                f"({', '.join(ENCODER_FAMILIES)}): pass feature_frame_rate= (feature frames per second of audio "
                "that the encoder reads) to PartConfig."
            )
        probe = _STRIDE_PROBE_FRAMES
        encoder_stride = max(1, round(probe / int(encoder_output_lengths(self.audio_config, probe))))
        if self.encoder_stride is not None and self.encoder_stride != encoder_stride:
            raise ValueError(
                f"encoder_stride={self.encoder_stride} disagrees with the encoder's own subsampling ({encoder_stride}, "
                f"from {audio_encoder_class(self.audio_config).__name__}'s output lengths); drop encoder_stride (it is "
                "derived)."
            )
        self.encoder_stride = encoder_stride
        encoder_rate = self.feature_frame_rate / self.encoder_stride
        if self.adapter_config.downsample_stride is None:
            self.adapter_config.downsample_stride = max(1, math.ceil(encoder_rate / self.max_audio_token_rate - 1e-9))
        derived_rate = encoder_rate / self.adapter_config.downsample_stride
        if self.audio_token_rate is not None and not math.isclose(self.audio_token_rate, derived_rate, rel_tol=1e-6):
            raise ValueError(
                f"audio_token_rate={self.audio_token_rate} disagrees with the rate derived from the front end and "
                f"the adapter stride ({derived_rate:.4g}/s); drop audio_token_rate (it is derived) or change "
                "adapter_config.downsample_stride."
            )
        self.audio_token_rate = derived_rate
        if getattr(self.text_config, "is_encoder_decoder", False):
            raise ValueError(
                f"text_config must be a decoder-only causal LM config, got model_type={self.text_config.model_type!r} "
                "(encoder-decoder); use e.g. a qwen2, llama or gemma config."
            )
        if self.audio_token_id is not None and not 0 <= self.audio_token_id < self.text_config.vocab_size:
            raise ValueError(
                f"audio_token_id={self.audio_token_id} is outside the LLM vocabulary "
                f"(text_config.vocab_size={self.text_config.vocab_size}); add the audio token to the tokenizer and "
                "resize the embeddings (PartForSpeechToText.from_pretrained_components does both)."
            )
        if self.audio_hidden_size is None:
            raise ValueError(
                f"audio_config ({self.audio_config.model_type}) has neither hidden_size nor d_model; PART needs the "
                "encoder's output width to build the adapter."
            )

    @property
    def audio_hidden_size(self) -> int | None:
        return getattr(self.audio_config, "hidden_size", None) or getattr(self.audio_config, "d_model", None)

    @property
    def tie_word_embeddings(self) -> bool:
        """Whether the LLM's head shares the input embeddings: the causal LM's own setting (`text_config`)."""
        return bool(getattr(self.text_config, "tie_word_embeddings", False))

    @tie_word_embeddings.setter
    def tie_word_embeddings(self, value: bool) -> None:
        self.text_config.tie_word_embeddings = value

    def audio_token_lengths(self, feature_lengths, encoder=None):
        """LLM audio positions for clips of `feature_lengths` feature frames (int or integer tensor): the encoder's
        output lengths (`encoder_output_lengths`; `encoder` is the module when there is one), then the adapter's."""
        encoder_lengths = encoder_output_lengths(self.audio_config, feature_lengths, encoder)
        return adapter_output_lengths(
            encoder_lengths, self.adapter_config.kernel_size, self.adapter_config.downsample_stride
        )


__all__ = [
    "ENCODER_FAMILIES",
    "PartAdapterConfig",
    "PartConfig",
    "adapter_output_lengths",
    "audio_encoder_class",
    "audio_token_lengths",
    "encoder_family",
    "encoder_output_lengths",
]
