"""PartProcessor: audio I/O, features, task prompts, tokenization and labels for PART. One code path
(`build_prompt_ids`) makes the prompt for training and for inference, so a model never sees a prompt at test time
that differs from the one it was trained on (a common cause of repetition loops in speech LLMs)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.nn.utils.rnn import pad_sequence
from transformers import AutoConfig, BatchFeature, ProcessorMixin
from transformers.models.whisper.tokenization_whisper import LANGUAGES as WHISPER_LANGUAGES

from .audio_utils import load_audio
from .configuration_part import adapter_output_lengths, audio_token_lengths, encoder_output_lengths
from .feature_extraction_part import WHISPER_N_SAMPLES, PartFeatureExtractor

TASKS = ("asr", "s2tt", "mt")
"""Speech recognition, speech-to-text translation, text-to-text translation."""
SPEECH_TASKS = ("asr", "s2tt")
_LANGUAGE_CODES = "en de fr es it ru zh ja ko yue pt nl ar tr pl hi vi th id sv".split()
LANGUAGE_NAMES = {code: WHISPER_LANGUAGES[code].title() for code in _LANGUAGE_CODES}
"""ISO 639 code -> English name (Whisper's table) of the languages the default processor accepts."""
DEFAULT_PROMPT_TEMPLATES = {
    "asr": "Transcribe the {source_language} speech into {source_language} text.",
    "s2tt": "Translate the {source_language} speech into {target_language} text.",
    "mt": "Translate the {source_language} text into {target_language} text: {source_text}",
}


class PartProcessor(ProcessorMixin):
    r"""Turns (audio, task, languages[, target text]) into PART model inputs.

    Args:
        feature_extractor ([`PartFeatureExtractor`]): the front end of the model's encoder.
        tokenizer: the LLM's tokenizer, holding the audio tokens `audio_token`, `audio_bos_token`, `audio_eos_token`.
        prompt_templates: instruction per task, with `{source_language}`, `{target_language}` and `{source_text}`.
        language_names: ISO 639 code -> name used in prompts; the accepted languages.
        use_chat_template: wrap the instruction in the tokenizer's chat template; defaults to whether it has one.
        encoder_stride, adapter_kernel_size, adapter_stride, audio_config: how the model turns feature frames into
            audio positions (see `for_model`): with `audio_config` through the encoder's own
            `_get_feat_extract_output_lengths`, else (processors saved before it) `ceil(frames / encoder_stride)`.
        max_audio_seconds: longer clips are rejected, never truncated (see `effective_max_audio_seconds`).
    """

    model_input_names = ["input_ids", "attention_mask", "input_features", "feature_attention_mask", "labels"]

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
        """The processor of a `PartConfig`: its placeholder counts and, unless `feature_extractor` is given, the front
        end of its encoder with its mel bins; `tokenizer` holds the audio tokens (see `from_pretrained_components`)."""
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

    def audio_placeholder_count(self, num_samples: int) -> int:
        """Audio positions the model produces for a 16 kHz clip of `num_samples`, computed with the model's functions:
        the encoder's `_get_feat_extract_output_lengths`, then the adapter's downsampling."""
        frames = self.feature_extractor.num_frames(num_samples)
        if self._encoder_config is None:
            return int(audio_token_lengths(frames, self.encoder_stride, self.adapter_kernel_size, self.adapter_stride))
        encoder_frames = encoder_output_lengths(self._encoder_config, frames)
        return int(adapter_output_lengths(encoder_frames, self.adapter_kernel_size, self.adapter_stride))

    def _language_name(self, code: str | None, field: str, index: int) -> str:
        if code is None:
            raise ValueError(f"Sample {index}: {field} is required (an ISO 639 code such as 'de').")
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
        source_name = self._language_name(source_language, "source_language", index)
        if task == "asr" and target_language not in (None, source_language):
            raise ValueError(
                f"Sample {index}: task 'asr' transcribes in the source language, but target_language="
                f"{target_language!r} != source_language={source_language!r}; use task 's2tt' to translate."
            )
        if task != "asr" and target_language is None:
            raise ValueError(f"Sample {index}: task {task!r} needs target_language (an ISO 639 code).")
        if task == "mt" and not source_text:
            raise ValueError(f"Sample {index}: task 'mt' needs text= (the text to translate).")
        return self.prompt_templates[task].format(
            source_language=source_name,
            target_language=self._language_name(target_language or source_language, "target_language", index),
            source_text=source_text or "",
        )

    def build_prompt_ids(self, instruction: str, num_audio_tokens: int | None) -> list[int]:
        """Token ids of the prompt: `<|audio_bos|>` + audio placeholders + `<|audio_eos|>` + the instruction
        (inside the chat template when `use_chat_template`), ending where the model's answer begins."""
        audio = f"{self.audio_bos_token}{self.audio_token}{self.audio_eos_token}" if num_audio_tokens else ""
        if self.use_chat_template:
            prompt = self.tokenizer.apply_chat_template(
                [{"role": "user", "content": audio + instruction}], tokenize=False, add_generation_prompt=True
            )
        else:
            prompt = audio + instruction + "\n"
        ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        if num_audio_tokens:
            position = ids.index(self.audio_token_id)
            ids[position : position + 1] = [self.audio_token_id] * num_audio_tokens
        return ids

    def apply_transcription_request(
        self,
        audio: Any | Sequence[Any],
        language: str | Sequence[str],
        sampling_rate: int | None = None,
        target_language: str | Sequence[str | None] | None = None,
        **kwargs: Any,
    ) -> BatchFeature:
        """Inputs for transcribing (`asr`) or translating (`s2tt`) speech, as in Voxtral and Fun-ASR-Nano: a sample
        whose `target_language` differs from `language` (ISO 639 codes, per batch or per sample) is translated.
        `audio` is one clip or a list; `kwargs` (`target_text`, `output_labels`, `padding_side`, `return_tensors`) are
        as in `__call__`. Without targets the output goes straight into `model.generate(**inputs)`."""
        if any(clip is None for clip in (audio if _is_batch(audio) else [audio])):
            raise ValueError(
                "apply_transcription_request needs a clip for every sample; for text-only translation use "
                "apply_text_translation_request."
            )
        kwargs.update(source_language=language, target_language=target_language, sampling_rate=sampling_rate)
        return self(audio=audio, **kwargs)

    def apply_text_translation_request(
        self,
        text: str | Sequence[str],
        source_language: str | Sequence[str],
        target_language: str | Sequence[str],
        **kwargs: Any,
    ) -> BatchFeature:
        """Inputs for translating text (the `mt` task): `text` in `source_language` into `target_language`, one string
        or a list; `kwargs` as in `apply_transcription_request`."""
        if text is None:
            raise ValueError("apply_text_translation_request needs text= (the text to translate).")
        return self(text=text, task="mt", source_language=source_language, target_language=target_language, **kwargs)

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
        """Model inputs for a batch that may mix tasks (what the training collator calls); every argument but
        `sampling_rate` (of array inputs), `output_labels`, `padding_side` and `return_tensors` is per batch or per
        sample.

        `text` is the input of `mt` samples, never the target. `audio`: file paths, arrays/tensors or `datasets`
        Audio dicts (None for `mt`). `task` None: `mt` without audio, else `s2tt` when `target_language` differs from
        `source_language` (ISO 639 codes), else `asr`. With `target_text` and `output_labels` (default: whether
        `target_text` is given) the output is a training batch: prompt + target + eos, right padding, `labels` -100
        on prompt, audio and padding; without, generation prompts (left padding) for `model.generate(**inputs)`.
        Returns `input_ids`, `attention_mask`, (`labels`) and, for the samples with audio, `input_features` and
        `feature_attention_mask`.
        """
        if "source_text" in kwargs:
            raise TypeError(
                "PartProcessor no longer takes source_text=: the input text of 'mt' samples is text= (the transformers "
                "convention), and targets are target_text=. Use processor(text=..., task='mt', ...) or "
                "processor.apply_text_translation_request(text, source_language, target_language)."
            )
        if kwargs:
            raise TypeError(f"PartProcessor.__call__ got unexpected arguments {sorted(kwargs)}.")
        if return_tensors != "pt":
            raise ValueError(f"PartProcessor returns PyTorch tensors (return_tensors='pt'), not {return_tensors!r}.")
        if output_labels is None:
            output_labels = target_text is not None
        if output_labels and target_text is None:
            raise ValueError("output_labels=True needs target_text= (the targets the labels are made from).")
        if target_text is not None and not output_labels:
            raise ValueError(
                "target_text= makes training inputs with labels; drop output_labels=False, or drop target_text to get "
                "generation prompts."
            )
        side = padding_side or ("right" if output_labels else "left")
        if side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {side!r}.")
        columns = {"audio": audio, "text": text, "task": task, "source_language": source_language,
                   "target_language": target_language, "target_text": target_text}
        size = next((len(value) for value in columns.values() if _is_batch(value)), 1)
        samples = zip(*(_as_list(value, size, name) for name, value in columns.items()))
        context = getattr(self.tokenizer, "model_max_length", None) or 10**9
        waveforms: list[np.ndarray] = []
        sequences, label_sequences = [], []
        for index, (clip, source_text, task_, source, target, target_text_) in enumerate(samples):
            if task_ is None:
                task_ = "mt" if clip is None else "s2tt" if target not in (None, source) else "asr"
            if task_ != "mt" and source_text is not None:
                raise ValueError(
                    f"Sample {index}: text= is the input text of 'mt' samples, but this sample's task is {task_!r}. "
                    "Targets go through target_text= (with output_labels=True), e.g. processor."
                    "apply_transcription_request(audio, language=..., target_text=..., output_labels=True); text= "
                    "no longer means the target."
                )
            instruction = self.instruction(task_, source, target, source_text, index)
            num_audio_tokens = None
            if task_ in SPEECH_TASKS:
                if clip is None:
                    raise ValueError(f"Sample {index}: task {task_!r} needs audio.")
                waveforms.append(self._load_and_check(clip, sampling_rate, index))
                num_audio_tokens = self.audio_placeholder_count(len(waveforms[-1]))
            elif clip is not None:
                raise ValueError(f"Sample {index}: task 'mt' is text-only; pass audio=None for it.")
            ids = self.build_prompt_ids(instruction, num_audio_tokens)
            labels = [-100] * len(ids)
            if output_labels:
                if target_text_ is None:
                    raise ValueError(f"Sample {index}: output_labels=True but its target_text is None.")
                target_ids = self.tokenizer(target_text_, add_special_tokens=False)["input_ids"]
                target_ids.append(self.tokenizer.eos_token_id)
                ids, labels = ids + target_ids, labels + target_ids
            if len(ids) > context:
                raise ValueError(
                    f"Sample {index}: {len(ids)} tokens exceed the LLM context of {context} "
                    "(tokenizer.model_max_length). Shorten the audio or text, or split the sample; nothing is "
                    "truncated silently."
                )
            sequences.append(ids)
            label_sequences.append(labels)

        data = {"input_ids": _pad(sequences, self.tokenizer.pad_token_id, side)}
        data["attention_mask"] = _pad([[1] * len(ids) for ids in sequences], 0, side)
        if output_labels:
            data["labels"] = _pad(label_sequences, -100, side)
        if waveforms:
            data.update(self.feature_extractor(waveforms, sampling_rate=self.feature_extractor.sampling_rate))
        return BatchFeature(data=data)

    def _load_and_check(self, audio: Any, sampling_rate: int | None, index: int) -> np.ndarray:
        name = f"sample {index}"
        rate = self.feature_extractor.sampling_rate
        waveform = load_audio(audio, sampling_rate, target_sampling_rate=rate, name=name)
        seconds, min_samples = len(waveform) / rate, self.feature_extractor.min_num_samples
        if len(waveform) < min_samples:
            raise ValueError(
                f"{name}: audio of {seconds:.3f} s is too short; the front end needs at least {min_samples} samples "
                f"({min_samples / rate:.3f} s). Drop or pad such clips."
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
                f"{name}: audio of {seconds:.1f} s is longer than the {WHISPER_N_SAMPLES // rate} s a Whisper "
                f"encoder takes (its features would be cut there, while max_audio_seconds={self.max_audio_seconds}). "
                "Split it into shorter segments (the pipeline's chunk_length_s=), or lower max_audio_seconds."
            )
        return waveform

    @property
    def effective_max_audio_seconds(self) -> float:
        """The longest clip the processor passes: `max_audio_seconds`, at most 30 s for a Whisper front end."""
        if self.feature_extractor.front_end == "whisper":
            return min(self.max_audio_seconds, WHISPER_N_SAMPLES / self.feature_extractor.sampling_rate)
        return self.max_audio_seconds

    def batch_decode(self, sequences, skip_special_tokens: bool = True, **kwargs) -> list[str]:
        """Decodes generated ids into clean text (special tokens dropped, whitespace stripped)."""
        texts = self.tokenizer.batch_decode(sequences, skip_special_tokens=skip_special_tokens, **kwargs)
        return [t.strip() for t in texts]

    def decode(self, sequence, skip_special_tokens: bool = True, **kwargs) -> str:
        return self.batch_decode([sequence], skip_special_tokens=skip_special_tokens, **kwargs)[0]


def _is_batch(value: Any) -> bool:
    """Lists and tuples are batches; a single array, tensor, path or Audio dict is one sample."""
    return isinstance(value, (list, tuple))


def _as_list(value: Any, size: int, name: str) -> list[Any]:
    if not _is_batch(value):
        return [value] * size
    if len(value) != size:
        raise ValueError(f"{name} has {len(value)} entries but the batch has {size} samples; give one per sample.")
    return list(value)


def _pad(sequences: list[list[int]], value: int, side: str) -> torch.Tensor:
    tensors = [torch.tensor(sequence, dtype=torch.long) for sequence in sequences]
    return pad_sequence(tensors, batch_first=True, padding_value=value, padding_side=side)


__all__ = ["PartProcessor", "SPEECH_TASKS", "TASKS", "LANGUAGE_NAMES", "DEFAULT_PROMPT_TEMPLATES"]
