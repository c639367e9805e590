"""Configuration of the PART speech-to-text model: audio encoder -> adapter -> causal LLM.

`PartConfig` composes three sub-configs in the transformers v5 style (`audio_config`, `adapter_config`,
`text_config`) and derives the audio token rate (LLM positions per second of audio) from the front end,
the encoder's own subsampling and the adapter's stride.
"""

from __future__ import annotations

import math

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig
from transformers.configuration_utils import PreTrainedConfig, SubConfigSpec

# Feature frames per second and the encoder's own time subsampling, per supported encoder type.
# SenseVoice-style encoders read low-frame-rate features (10 ms fbank frames stacked 7, stride 6);
# Whisper reads 10 ms log-mel frames and halves the rate with its second convolution.
KNOWN_AUDIO_ENCODERS: dict[str, dict[str, float]] = {
    "fun_asr_nano_encoder": {"feature_frame_rate": 100.0 / 6.0, "encoder_stride": 1},
    "whisper": {"feature_frame_rate": 100.0, "encoder_stride": 2},
}

DEFAULT_MAX_AUDIO_TOKEN_RATE = 12.5


def audio_token_lengths(feature_lengths, encoder_stride: int, kernel_size: int, stride: int):
    """Number of LLM audio positions for clips of `feature_lengths` feature frames.

    Applies the encoder's subsampling (ceil division by `encoder_stride`) and then the adapter's conv1d
    (`kernel_size`, `stride`, padding `(kernel_size - 1) // 2`). Works on Python ints and integer tensors alike,
    so the processor and the model compute placeholder counts identically.
    """
    padding = (kernel_size - 1) // 2
    encoder_lengths = (feature_lengths + encoder_stride - 1) // encoder_stride
    return (encoder_lengths + 2 * padding - kernel_size) // stride + 1


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

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        self._check_fields()

    def _check_fields(self) -> None:
        if self.hidden_size % self.num_attention_heads != 0:
            raise ValueError(
                f"adapter_config.hidden_size ({self.hidden_size}) must be divisible by "
                f"adapter_config.num_attention_heads ({self.num_attention_heads}); pick a head count that divides it."
            )
        if self.downsample_stride is not None and self.downsample_stride < 1:
            raise ValueError(f"adapter_config.downsample_stride must be >= 1, got {self.downsample_stride}.")
        if self.downsample_kernel_size is not None and self.downsample_kernel_size < 1:
            raise ValueError(f"adapter_config.downsample_kernel_size must be >= 1, got {self.downsample_kernel_size}.")

    @property
    def kernel_size(self) -> int:
        stride = self.downsample_stride or 1
        return self.downsample_kernel_size or 2 * stride - 1


@strict
class PartConfig(PreTrainedConfig):
    r"""
    Configuration of [`PartForSpeechToText`].

    Args:
        audio_config (`dict` or `PreTrainedConfig`, *optional*): the speech encoder. Defaults to the SenseVoice-style
            encoder transformers ships as `fun_asr_nano_encoder` (50 SAN-M layers, no timestamp layers). A
            `WhisperConfig` selects the Whisper encoder. Other encoders need `feature_frame_rate` and `encoder_stride`.
        adapter_config (`dict` or [`PartAdapterConfig`], *optional*): the adapter.
        text_config (`dict` or `PreTrainedConfig`, *optional*): the causal LLM; defaults to `qwen2`.
        audio_token_id (`int`, *optional*): id of the audio placeholder token in the tokenizer.
        feature_frame_rate (`float`, *optional*): feature frames per second of audio (derived for known encoders).
        encoder_stride (`int`, *optional*): the encoder's own time subsampling (derived for known encoders).
        max_audio_token_rate (`float`, defaults to 12.5): upper bound used to choose the adapter stride when
            `adapter_config.downsample_stride` is `None`.
        audio_token_rate (`float`, *optional*): LLM positions per second of audio. Derived and recorded; passing a
            value that disagrees with the derivation is an error.
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
        known = KNOWN_AUDIO_ENCODERS.get(self.audio_config.model_type, {})
        if self.feature_frame_rate is None:
            self.feature_frame_rate = known.get("feature_frame_rate")
        if self.encoder_stride is None:
            self.encoder_stride = known.get("encoder_stride")
        if self.feature_frame_rate is None or self.encoder_stride is None:
            raise ValueError(
                f"audio_config.model_type={self.audio_config.model_type!r} is not one of the encoders PART knows "
                f"({', '.join(KNOWN_AUDIO_ENCODERS)}): pass feature_frame_rate= (feature frames per second) and "
                "encoder_stride= (the encoder's own time subsampling) to PartConfig."
            )
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
        self._check_combinations()

    def _check_combinations(self) -> None:
        """Checks combinations of sub-configs; each error is a ValueError naming the field and the fix."""
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
        audio_width = getattr(self.audio_config, "hidden_size", None) or getattr(self.audio_config, "d_model", None)
        if audio_width is None:
            raise ValueError(
                f"audio_config ({self.audio_config.model_type}) has neither hidden_size nor d_model; PART needs the "
                "encoder's output width to build the adapter."
            )

    @property
    def audio_hidden_size(self) -> int:
        return getattr(self.audio_config, "hidden_size", None) or self.audio_config.d_model

    def audio_token_lengths(self, feature_lengths):
        """LLM audio positions for clips of `feature_lengths` feature frames (int or integer tensor)."""
        return audio_token_lengths(
            feature_lengths,
            self.encoder_stride,
            self.adapter_config.kernel_size,
            self.adapter_config.downsample_stride,
        )


__all__ = ["PartAdapterConfig", "PartConfig", "audio_token_lengths", "KNOWN_AUDIO_ENCODERS"]
