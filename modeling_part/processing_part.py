"""PartProcessor: audio I/O, features, task prompts, tokenization and labels for PART.

One code path (`build_prompt_ids`) makes the prompt for training and for inference, so a model never sees a prompt
at test time that differs from the one it was trained on (a common cause of repetition loops in speech LLMs).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from transformers import AutoConfig, BatchFeature, ProcessorMixin

from .audio_utils import load_audio
from .configuration_part import adapter_output_lengths, audio_token_lengths, encoder_output_lengths
from .feature_extraction_part import WHISPER_N_SAMPLES, PartFeatureExtractor

TASKS = ("asr", "s2tt", "mt")
"""Speech recognition, speech-to-text translation, text-to-text translation."""
SPEECH_TASKS = ("asr", "s2tt")
LANGUAGE_NAMES = {
    "en": "English",
    "de": "German",
    "fr": "French",
    "es": "Spanish",
    "it": "Italian",
    "ru": "Russian",
    "zh": "Chinese",
    "ja": "Japanese",
    "ko": "Korean",
    "yue": "Cantonese",
    "pt": "Portuguese",
    "nl": "Dutch",
    "ar": "Arabic",
    "tr": "Turkish",
    "pl": "Polish",
    "hi": "Hindi",
    "vi": "Vietnamese",
    "th": "Thai",
    "id": "Indonesian",
    "sv": "Swedish",
}
DEFAULT_PROMPT_TEMPLATES = {
    "asr": "Transcribe the {source_language} speech into {source_language} text.",
    "s2tt": "Translate the {source_language} speech into {target_language} text.",
    "mt": "Translate the {source_language} text into {target_language} text: {source_text}",
}


class PartProcessor(ProcessorMixin):
    r"""
    Turns (audio, task, languages[, target text]) into PART model inputs.

    Args:
        feature_extractor ([`PartFeatureExtractor`]): the front end matching the model's encoder.
        tokenizer: the LLM's tokenizer, holding the audio tokens.
        prompt_templates (`dict`, *optional*): instruction per task, with the fields `{source_language}`,
            `{target_language}` (language names) and, for `mt`, `{source_text}`.
        language_names (`dict`, *optional*): ISO 639 code -> name used in prompts; the accepted languages.
        use_chat_template (`bool`, *optional*): wrap the instruction in the tokenizer's chat template (for instruct
            LLMs). Defaults to whether the tokenizer has one.
        encoder_stride, adapter_kernel_size, adapter_stride (`int`): how the model turns feature frames into audio
            positions (copied from `PartConfig`; see `PartProcessor.for_model`).
        audio_config (`dict`, *optional*): the model's `audio_config` (as `to_diff_dict()`): placeholder counts then
            come from the encoder's own `_get_feat_extract_output_lengths`, the function the model uses. Without it
            (processors saved before it was recorded) the encoder's output is `ceil(frames / encoder_stride)`.
        max_audio_seconds (`float`, defaults to 30.0): longer clips are rejected, never truncated (and a Whisper
            front end takes at most 30 s whatever this says; see `effective_max_audio_seconds`).
        audio_token, audio_bos_token, audio_eos_token (`str`): the audio placeholder and its delimiters.
    """


    def __init__(
        self,
        feature_extractor,
        tokenizer,
        prompt_templates: dict[str, str] | None = None,
        language_names: dict[str, str] | None = None,
        use_chat_template: bool | None = None,
        encoder_stride: int = 1,
        adapter_kernel_size: int = 3,
        adapter_stride: int = 2,
        max_audio_seconds: float = 30.0,
        audio_token: str = "<|AUDIO|>",
        audio_bos_token: str = "<|audio_bos|>",
        audio_eos_token: str = "<|audio_eos|>",
        chat_template: str | None = None,
        audio_config: dict | None = None,
    ):
        self.prompt_templates = {**DEFAULT_PROMPT_TEMPLATES, **(prompt_templates or {})}
        self.language_names = dict(language_names or LANGUAGE_NAMES)
        self.use_chat_template = (
            bool(getattr(tokenizer, "chat_template", None)) if use_chat_template is None else use_chat_template
        )
        self.encoder_stride = encoder_stride
        self.adapter_kernel_size = adapter_kernel_size
        self.adapter_stride = adapter_stride
        self.audio_config = audio_config
        self._encoder_config = None if audio_config is None else AutoConfig.for_model(**audio_config)
        self.max_audio_seconds = max_audio_seconds
        self.audio_token = audio_token
        self.audio_bos_token = audio_bos_token
        self.audio_eos_token = audio_eos_token
        missing = [t for t in (audio_token, audio_bos_token, audio_eos_token) if t not in tokenizer.get_vocab()]
        if missing:
            raise ValueError(
                f"The tokenizer lacks the audio tokens {missing}; build the model and tokenizer with "
                "PartForSpeechToText.from_pretrained_components(..., return_tokenizer=True), which adds them."
            )
        self.audio_token_id = tokenizer.convert_tokens_to_ids(audio_token)
        super().__init__(feature_extractor, tokenizer, chat_template=chat_template)

    @classmethod
    def for_model(cls, config, tokenizer, feature_extractor=None, **kwargs) -> PartProcessor:
        """The processor of a model: placeholder counts from `config` (a `PartConfig`) and, unless `feature_extractor`
        is given, the front end matching its encoder (Whisper log-mel, or SenseVoice fbank + LFR) with its mel bins.

        `tokenizer` is the LLM's tokenizer holding the audio tokens (see
        `PartForSpeechToText.from_pretrained_components(..., return_tokenizer=True)`); `kwargs` go to `PartProcessor`.
        """
        if feature_extractor is None:
            front_end = "whisper" if config.audio_config.model_type == "whisper" else "sensevoice"
            feature_extractor = PartFeatureExtractor(front_end=front_end, feature_size=config.audio_config.num_mel_bins)
        return cls(
            feature_extractor,
            tokenizer,
            encoder_stride=config.encoder_stride,
            adapter_kernel_size=config.adapter_config.kernel_size,
            adapter_stride=config.adapter_config.downsample_stride,
            audio_config=config.audio_config.to_diff_dict(),
            **kwargs,
        )

    # ------------------------------------------------------------------------------------------- placeholders
    def audio_placeholder_count(self, num_samples: int) -> int:
        """Audio positions the model produces for a 16 kHz clip of `num_samples`, computed with the model's functions:
        the encoder's `_get_feat_extract_output_lengths`, then the adapter's downsampling."""
        frames = self.feature_extractor.num_frames(num_samples)
        if self._encoder_config is None:
            return int(audio_token_lengths(frames, self.encoder_stride, self.adapter_kernel_size, self.adapter_stride))
        encoder_frames = encoder_output_lengths(self._encoder_config, frames)
        return int(adapter_output_lengths(encoder_frames, self.adapter_kernel_size, self.adapter_stride))

    # ------------------------------------------------------------------------------------------------ prompts
    def _language_name(self, code: str | None, field: str, index: int) -> str:
        if code not in self.language_names:
            raise ValueError(
                f"Sample {index}: unknown {field} {code!r}. Use an ISO 639 code from {sorted(self.language_names)}, "
                "or add it to the processor's language_names."
            )
        return self.language_names[code]

    def instruction(
        self,
        task: str,
        source_language: str,
        target_language: str | None = None,
        source_text: str | None = None,
        index: int = 0,
    ) -> str:
        """The task instruction for one sample, from the processor's templates."""
        if task not in TASKS:
            raise ValueError(f"Sample {index}: unknown task {task!r}; choose from {TASKS}.")
        if task == "asr":
            target_language = target_language or source_language
            if target_language != source_language:
                raise ValueError(
                    f"Sample {index}: task 'asr' transcribes in the source language, but target_language="
                    f"{target_language!r} != source_language={source_language!r}; use task 's2tt' to translate."
                )
        elif target_language is None:
            raise ValueError(f"Sample {index}: task {task!r} needs target_language (an ISO 639 code).")
        if task == "mt" and not source_text:
            raise ValueError(f"Sample {index}: task 'mt' needs text= (the text to translate).")
        return self.prompt_templates[task].format(
            source_language=self._language_name(source_language, "source_language", index),
            target_language=self._language_name(target_language, "target_language", index),
            source_text=source_text or "",
        )

    def build_prompt_ids(self, instruction: str, num_audio_tokens: int | None) -> list[int]:
        """Token ids of the prompt: `<|audio_bos|>` + audio placeholders + `<|audio_eos|>` + the instruction
        (inside the chat template when `use_chat_template`), ending where the model's answer begins."""
        audio = f"{self.audio_bos_token}{self.audio_token}{self.audio_eos_token}" if num_audio_tokens else ""
        content = audio + instruction
        if self.use_chat_template:
            prompt = self.tokenizer.apply_chat_template(
                [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
            )
        else:
            prompt = content + "\n"
        ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        if num_audio_tokens:
            position = ids.index(self.audio_token_id)
            ids[position : position + 1] = [self.audio_token_id] * num_audio_tokens
        return ids

    # ------------------------------------------------------------------------------------------------ calling
    def apply_transcription_request(
        self,
        audio: Any | Sequence[Any],
        language: str | Sequence[str],
        sampling_rate: int | None = None,
        target_language: str | Sequence[str | None] | None = None,
        target_text: str | Sequence[str] | None = None,
        output_labels: bool | None = None,
        padding_side: str | None = None,
        return_tensors: str = "pt",
    ) -> BatchFeature:
        """Inputs for transcribing (`asr`) or translating (`s2tt`) speech, as in Voxtral and Fun-ASR-Nano.

        A sample whose `target_language` is given and differs from `language` is speech translation (`s2tt`); otherwise
        it is transcription in `language` (`asr`). Without targets the output goes straight into
        `model.generate(**inputs)` (left padding); with `target_text` and `output_labels=True` it is a training batch.

        Args:
            audio: one clip or a list: file paths, arrays/tensors (with `sampling_rate`), or `datasets` Audio dicts.
            language: ISO 639 code of the speech, per batch or per sample.
            sampling_rate: the sampling rate of array inputs (paths and Audio dicts carry their own).
            target_language: ISO 639 code of the output text, per batch or per sample; None or `language` transcribes.
            target_text, output_labels, padding_side, return_tensors: as in `__call__`.
        """
        if audio is None or any(clip is None for clip in (audio if _is_batch(audio) else [audio])):
            raise ValueError(
                "apply_transcription_request needs a clip for every sample; for text-only translation use "
                "apply_text_translation_request."
            )
        return self(  # task None: 's2tt' where target_language differs from language, else 'asr'
            audio=audio,
            source_language=language,
            target_language=target_language,
            target_text=target_text,
            output_labels=output_labels,
            sampling_rate=sampling_rate,
            padding_side=padding_side,
            return_tensors=return_tensors,
        )

    def apply_text_translation_request(
        self,
        text: str | Sequence[str],
        source_language: str | Sequence[str],
        target_language: str | Sequence[str],
        target_text: str | Sequence[str] | None = None,
        output_labels: bool | None = None,
        padding_side: str | None = None,
        return_tensors: str = "pt",
    ) -> BatchFeature:
        """Inputs for translating text (the `mt` task): `text` in `source_language` into `target_language`, one string
        or a list. Same conventions as `apply_transcription_request`."""
        if text is None:
            raise ValueError("apply_text_translation_request needs text= (the text to translate).")
        return self(
            text=text,
            task="mt",
            source_language=source_language,
            target_language=target_language,
            target_text=target_text,
            output_labels=output_labels,
            padding_side=padding_side,
            return_tensors=return_tensors,
        )

    def __call__(
        self,
        text: str | Sequence[str | None] | None = None,
        audio: Any | Sequence[Any] | None = None,
        *,
        task: str | Sequence[str | None] | None = None,
        source_language: str | Sequence[str] | None = None,
        target_language: str | Sequence[str | None] | None = None,
        target_text: str | Sequence[str] | None = None,
        output_labels: bool | None = None,
        sampling_rate: int | None = None,
        padding_side: str | None = None,
        return_tensors: str = "pt",
        **kwargs: Any,
    ) -> BatchFeature:
        """Model inputs for a batch that may mix tasks (what the training collator calls).

        Args:
            text: the input text of `mt` samples (None for speech samples). Never the target: targets go through
                `target_text`.
            audio: one clip or a list (None for `mt` samples): file paths, arrays/tensors with `sampling_rate`, or
                `datasets` Audio dicts.
            task: `"asr"`, `"s2tt"` or `"mt"`, per batch or per sample. None: `mt` for a sample without audio,
                otherwise `s2tt` when `target_language` differs from `source_language`, else `asr`.
            source_language, target_language: ISO 639 codes, per batch or per sample.
            target_text: the targets; with `output_labels=True` the output is a training batch: prompt + target + eos,
                right padding, `labels` with -100 on prompt, audio and padding.
            output_labels: return `labels` (needs `target_text`). Defaults to whether `target_text` is given.
                Without targets: generation prompts (left padding) for `model.generate(**inputs)`.
            sampling_rate: the sampling rate of array inputs.
            padding_side: override the padding side.

        Returns:
            `BatchFeature` with `input_ids`, `attention_mask`, (`labels`), and for the samples with audio, in batch
            order, `input_features` and `feature_attention_mask`.
        """
        if "source_text" in kwargs:
            raise TypeError(
                "PartProcessor no longer takes source_text=: the input text of 'mt' samples is text= (the transformers "
                "convention), and targets are target_text=. Use processor(text=..., task='mt', ...) or "
                "processor.apply_text_translation_request(text, source_language, target_language)."
            )
        if kwargs:
            raise TypeError(f"PartProcessor.__call__ got unexpected arguments {sorted(kwargs)}.")
        size = _batch_size(audio, text, task, source_language, target_language, target_text)
        audios = _as_list(audio, size, "audio")
        texts = _as_list(text, size, "text")
        sources = _as_list(source_language, size, "source_language")
        targets = _as_list(target_language, size, "target_language")
        tasks = _as_list(task, size, "task")
        for index in range(size):
            if tasks[index] is None:
                if audios[index] is None:
                    tasks[index] = "mt"
                else:
                    tasks[index] = "s2tt" if targets[index] not in (None, sources[index]) else "asr"
            if tasks[index] != "mt" and texts[index] is not None:
                raise ValueError(
                    f"Sample {index}: text= is the input text of 'mt' samples, but this sample's task is "
                    f"{tasks[index]!r}. Targets go through target_text= (with output_labels=True), e.g. "
                    "processor.apply_transcription_request(audio, language=..., target_text=..., output_labels=True); "
                    "text= no longer means the target."
                )
        if return_tensors != "pt":
            raise ValueError(f"PartProcessor returns PyTorch tensors only (return_tensors='pt'), got {return_tensors!r}.")
        if output_labels is None:
            output_labels = target_text is not None
        if output_labels and target_text is None:
            raise ValueError("output_labels=True needs target_text= (the targets the labels are made from).")
        if target_text is not None and not output_labels:
            raise ValueError(
                "target_text= makes training inputs with labels; drop output_labels=False, or drop target_text to get "
                "generation prompts."
            )
        target_texts = _as_list(target_text, size, "target_text")

        waveforms: list[np.ndarray] = []
        sequences, label_sequences = [], []
        for index in range(size):
            if tasks[index] not in TASKS:
                raise ValueError(f"Sample {index}: unknown task {tasks[index]!r}; choose from {TASKS}.")
            if sources[index] is None:
                raise ValueError(f"Sample {index}: source_language is required (an ISO 639 code such as 'de').")
            num_audio_tokens = None
            if tasks[index] in SPEECH_TASKS:
                if audios[index] is None:
                    raise ValueError(f"Sample {index}: task {tasks[index]!r} needs audio.")
                waveform = self._load_and_check(audios[index], sampling_rate, index)
                waveforms.append(waveform)
                num_audio_tokens = self.audio_placeholder_count(len(waveform))
            elif audios[index] is not None:
                raise ValueError(f"Sample {index}: task 'mt' is text-only; pass audio=None for it.")
            instruction = self.instruction(tasks[index], sources[index], targets[index], texts[index], index)
            prompt_ids = self.build_prompt_ids(instruction, num_audio_tokens)
            if not output_labels:
                sequences.append(prompt_ids)
                continue
            if target_texts[index] is None:
                raise ValueError(f"Sample {index}: output_labels=True but its target_text is None.")
            target_ids = self.tokenizer(target_texts[index], add_special_tokens=False)["input_ids"]
            target_ids = target_ids + [self.tokenizer.eos_token_id]
            sequences.append(prompt_ids + target_ids)
            label_sequences.append([-100] * len(prompt_ids) + target_ids)
        self._check_context_length(sequences)

        side = padding_side or ("right" if output_labels else "left")
        batch = _pad(sequences, self.tokenizer.pad_token_id, side)
        data = {"input_ids": batch[0], "attention_mask": batch[1]}
        if output_labels:
            data["labels"] = _pad(label_sequences, -100, side)[0]
        if waveforms:
            features = self.feature_extractor(waveforms, sampling_rate=self.feature_extractor.sampling_rate)
            data["input_features"] = features["input_features"]
            data["feature_attention_mask"] = features["feature_attention_mask"]
        return BatchFeature(data=data)

    def _load_and_check(self, audio: Any, sampling_rate: int | None, index: int) -> np.ndarray:
        name = f"sample {index}"
        waveform = load_audio(
            audio, sampling_rate, target_sampling_rate=self.feature_extractor.sampling_rate, name=name
        )
        seconds = len(waveform) / self.feature_extractor.sampling_rate
        if len(waveform) < self.feature_extractor.min_num_samples:
            raise ValueError(
                f"{name}: audio of {seconds:.3f} s is too short; the front end needs at least "
                f"{self.feature_extractor.min_num_samples} samples ({self.feature_extractor.min_num_samples / 16000:.3f} s)."
                " Drop or pad such clips."
            )
        if seconds > self.max_audio_seconds:
            raise ValueError(
                f"{name}: audio of {seconds:.1f} s exceeds max_audio_seconds={self.max_audio_seconds}. Nothing is "
                "truncated: transcribe long recordings with the pipeline's chunk_length_s= (or evaluate them with "
                "chunk_length_s= of trainers.evaluation), drop such training samples (PartTrainingArguments."
                "drop_long_audio), or raise processor.max_audio_seconds if the encoder takes longer clips."
            )
        if seconds > self.effective_max_audio_seconds:
            raise ValueError(
                f"{name}: audio of {seconds:.1f} s is longer than the {WHISPER_N_SAMPLES // 16000} s a Whisper "
                f"encoder takes (its features would be cut there, while max_audio_seconds={self.max_audio_seconds}). "
                "Split it into shorter segments (the pipeline's chunk_length_s=), or lower max_audio_seconds."
            )
        return waveform

    @property
    def effective_max_audio_seconds(self) -> float:
        """The longest clip the processor passes: `max_audio_seconds`, and at most 30 s for a Whisper front end
        (whose features stop at 30 s)."""
        if self.feature_extractor.front_end == "whisper":
            return min(self.max_audio_seconds, WHISPER_N_SAMPLES / self.feature_extractor.sampling_rate)
        return self.max_audio_seconds

    def _check_context_length(self, sequences: list[list[int]]) -> None:
        limit = getattr(self.tokenizer, "model_max_length", None)
        if not limit or limit > 10**8:
            return
        for index, ids in enumerate(sequences):
            if len(ids) > limit:
                raise ValueError(
                    f"Sample {index}: {len(ids)} tokens exceed the LLM context of {limit} (tokenizer.model_max_length)."
                    " Shorten the audio or text, or split the sample; nothing is truncated silently."
                )

    # ------------------------------------------------------------------------------------------------ decoding
    def batch_decode(self, sequences, skip_special_tokens: bool = True, **kwargs) -> list[str]:
        """Decodes generated ids into clean text (special tokens dropped, whitespace stripped)."""
        texts = self.tokenizer.batch_decode(sequences, skip_special_tokens=skip_special_tokens, **kwargs)
        return [t.strip() for t in texts]

    def decode(self, sequence, skip_special_tokens: bool = True, **kwargs) -> str:
        return self.batch_decode([sequence], skip_special_tokens=skip_special_tokens, **kwargs)[0]

    @property
    def model_input_names(self) -> list[str]:
        return ["input_ids", "attention_mask", "input_features", "feature_attention_mask", "labels"]


def _is_batch(value: Any) -> bool:
    """Lists and tuples are batches; a single array, tensor, path or Audio dict is one sample."""
    return isinstance(value, (list, tuple))


def _batch_size(*values: Any) -> int:
    for value in values:
        if _is_batch(value):
            return len(value)
    return 1


def _as_list(value: Any, size: int, name: str) -> list[Any]:
    if _is_batch(value):
        if len(value) != size:
            raise ValueError(f"{name} has {len(value)} entries but the batch has {size} samples; give one per sample.")
        return list(value)
    return [value] * size


def _pad(sequences: list[list[int]], value: int, side: str) -> tuple[torch.Tensor, torch.Tensor]:
    if side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {side!r}.")
    length = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), length), value, dtype=torch.long)
    mask = torch.zeros((len(sequences), length), dtype=torch.long)
    for row, sequence in enumerate(sequences):
        span = slice(length - len(sequence), length) if side == "left" else slice(0, len(sequence))
        ids[row, span] = torch.tensor(sequence, dtype=torch.long)
        mask[row, span] = 1
    return ids, mask


__all__ = ["PartProcessor", "SPEECH_TASKS", "TASKS", "LANGUAGE_NAMES", "DEFAULT_PROMPT_TEMPLATES"]
