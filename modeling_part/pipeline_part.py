"""The `automatic-speech-recognition` pipeline for PART models (speech translation through the same call).

A speech LLM needs a task prompt around its audio, so `register_part_pipeline` registers
`PartSpeechRecognitionPipeline` for the task; built for any other model, it builds the class the task had before
(transformers' `AutomaticSpeechRecognitionPipeline`) from the same arguments (see docs/design.md). Recordings longer
than the model takes are transcribed with `chunk_length_s=` (`modeling_part.long_form`).
"""

from __future__ import annotations

import contextlib
import importlib
import os
from typing import Any

import numpy as np
import soundfile

from transformers import AutoProcessor
from transformers.pipelines import PIPELINE_REGISTRY
from transformers.pipelines.automatic_speech_recognition import AutomaticSpeechRecognitionPipeline

from .audio_utils import load_audio
from .long_form import Chunk, chunk_timestamps, join_texts, merge_chunk_texts, plan_chunks

TASK = "automatic-speech-recognition"
_PREPROCESS_PARAMS = (
    "language", "task", "target_language", "sampling_rate", "chunk_length_s", "stride_length_s", "chunk_batch_size"
)
_FORWARD_PARAMS = ("max_new_tokens", "num_beams", "generate_kwargs")

_non_part_impl: type = AutomaticSpeechRecognitionPipeline
"""The task's pipeline class before `register_part_pipeline`: what `pipeline(TASK)` builds for other models."""


class PartSpeechRecognitionPipeline(AutomaticSpeechRecognitionPipeline):
    """ASR and speech translation with a PART model (for any other model, the task's previous pipeline class).

    Example:
        >>> asr = pipeline("automatic-speech-recognition", model="path/to/part-model")
        >>> asr("clip.wav", language="de")["text"]  # German transcript
        >>> asr("clip.wav", language="de", task="s2tt", target_language="en")["text"]  # English translation
        >>> asr("meeting.wav", language="de", chunk_length_s=20, batch_size=4, return_timestamps=True)["chunks"]
    """

    def __new__(cls, *args: Any, **kwargs: Any):
        model = kwargs.get("model", args[0] if args else None)
        # without arguments: copy / pickle's `cls.__new__(cls)`, then the state is restored
        if (args or kwargs) and getattr(getattr(model, "config", None), "model_type", None) != "part":
            return _non_part_impl(*args, **kwargs)  # not an instance of cls: __init__ does not run again
        return super().__new__(cls)

    def __init__(self, *args, processor=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.part_processor = processor or AutoProcessor.from_pretrained(self.model.name_or_path)

    def __call__(self, inputs: Any, batch_size: int | None = None, **kwargs: Any) -> dict[str, Any] | list:
        """Transcribes (`task="asr"`) or translates (`task="s2tt"`, with `target_language`) one recording or a list.

        `inputs`: a file path, bytes, an array with `sampling_rate=`, or `{"raw"/"array", "sampling_rate"}`.
        `language` (ISO 639 code of the speech) is required. `chunk_length_s`: cut a longer recording into chunks of
        at most this many seconds at pauses; where speech has no pause, windows share `stride_length_s` on each side
        (one number or `(left, right)`; default `chunk_length_s / 6`). `batch_size`: chunks per `generate` call.
        `return_timestamps=True` adds `chunks`, `[{"text", "timestamp": (start, end)}]`. `max_new_tokens`,
        `num_beams` and `generate_kwargs` go to `generate`. Returns `{"text": ...}` (and `"chunks"`) per input.
        """
        chunk_batch_size = batch_size if batch_size is not None else (self._batch_size or 1)
        if not isinstance(chunk_batch_size, int) or chunk_batch_size < 1:
            raise ValueError(f"batch_size must be a positive int (chunks per generate call), got {chunk_batch_size!r}.")
        # The recordings go through one at a time (batch of 1 for the DataLoader); their chunks are batched here.
        return super().__call__(inputs, batch_size=1, chunk_batch_size=chunk_batch_size, **kwargs)

    def _sanitize_parameters(self, return_timestamps=None, **kwargs):
        preprocess = {name: value for name in _PREPROCESS_PARAMS if (value := kwargs.pop(name, None)) is not None}
        forward = {name: kwargs.pop(name) for name in _FORWARD_PARAMS if name in kwargs}
        if kwargs:
            raise ValueError(
                f"Unsupported arguments for a PART pipeline call: {sorted(kwargs)}; a PART call takes language=, "
                "task=, target_language=, sampling_rate=, chunk_length_s=, stride_length_s=, batch_size=, "
                "return_timestamps=, max_new_tokens=, num_beams= and generate_kwargs=."
            )
        if return_timestamps not in (None, True, False):
            raise ValueError(
                f"A PART pipeline gives each chunk's start and end (return_timestamps=True), got "
                f"return_timestamps={return_timestamps!r}; word and character timestamps are not available."
            )
        return preprocess, forward, {} if return_timestamps is None else {"return_timestamps": return_timestamps}

    def preprocess(
        self,
        inputs,
        language=None,
        task="asr",
        target_language=None,
        sampling_rate=None,
        chunk_length_s=None,
        stride_length_s=None,
        chunk_batch_size=1,
    ):
        if language is None:
            raise ValueError("A PART pipeline call needs language= (the ISO 639 code of the speech, e.g. 'de').")
        if task not in ("asr", "s2tt"):
            raise ValueError(f"A PART speech pipeline runs task='asr' or task='s2tt', got task={task!r}.")
        if (task == "s2tt") != (target_language not in (None, language)):
            raise ValueError(
                f"task={task!r} with language={language!r}, target_language={target_language!r}: task='s2tt' "
                "translates into a target_language= different from language=, task='asr' transcribes in language=."
            )
        if isinstance(inputs, dict) and "raw" in inputs:  # the parent pipeline's {"raw", "sampling_rate"} form
            inputs = {"array": inputs["raw"], "sampling_rate": inputs["sampling_rate"]}
        rate = self.part_processor.feature_extractor.sampling_rate
        limit = self.part_processor.effective_max_audio_seconds  # max_audio_seconds, and 30 s for a Whisper encoder
        if chunk_length_s is not None and chunk_length_s > limit:
            raise ValueError(
                f"chunk_length_s={chunk_length_s} is longer than the {limit} s the model takes "
                f"(processor.max_audio_seconds); pass chunk_length_s <= {limit} (e.g. {min(20, limit)})."
            )
        audio_file = _open_sound_file(inputs) if chunk_length_s is not None else None
        with audio_file or contextlib.nullcontext():
            source = audio_file  # scanned block by block and read chunk by chunk: never whole in memory
            if audio_file is None:
                source = load_audio(inputs, sampling_rate, target_sampling_rate=rate, name="the pipeline's input")
                if chunk_length_s is None and len(source) > limit * rate:
                    raise ValueError(
                        f"The recording is {len(source) / rate:.1f} s long, longer than the {limit} s the model takes "
                        "(processor.max_audio_seconds); pass chunk_length_s= (e.g. chunk_length_s=20) to transcribe "
                        "it in chunks cut where the speech pauses."
                    )
            source_rate = audio_file.samplerate if audio_file is not None else rate
            chunks = (plan_chunks(source, chunk_length_s, stride_length_s, rate) if chunk_length_s is not None
                      else [Chunk(0, len(source))])  # a file is opened for chunk_length_s only
            if not chunks:  # no speech anywhere
                yield {"is_last": True, "chunks": [], "sampling_rate": source_rate, "inputs": None}
            for first in range(0, len(chunks), chunk_batch_size):  # model inputs for chunk_batch_size chunks at a time
                batch = chunks[first : first + chunk_batch_size]
                audio = [_read_chunk(source, chunk, rate) for chunk in batch]
                inputs = self.part_processor.apply_transcription_request(
                    audio, language, sampling_rate=rate, target_language=target_language
                )
                is_last = first + chunk_batch_size >= len(chunks)
                yield {"is_last": is_last, "chunks": batch, "sampling_rate": source_rate, "inputs": inputs}

    def _forward(self, model_inputs, generate_kwargs=None, **forward_params):
        outputs = {key: model_inputs[key] for key in ("is_last", "chunks", "sampling_rate")}
        if model_inputs["inputs"] is None:
            return {**outputs, "texts": []}
        tokens = self.model.generate(**model_inputs["inputs"], **{**(generate_kwargs or {}), **forward_params})
        return {**outputs, "texts": self.part_processor.batch_decode(tokens)}

    def postprocess(self, model_outputs, return_timestamps: bool = False) -> dict[str, Any]:
        outputs = model_outputs if isinstance(model_outputs, list) else [model_outputs]
        chunks = [chunk for output in outputs for chunk in output["chunks"]]
        rate = outputs[0]["sampling_rate"]
        parts = merge_chunk_texts([text for output in outputs for text in output["texts"]], chunks, rate)
        result: dict[str, Any] = {"text": join_texts(parts)}
        if return_timestamps:
            timestamps = chunk_timestamps(chunks, rate)
            result["chunks"] = [{"text": text, "timestamp": span} for text, span in zip(parts, timestamps)]
        return result


def _read_chunk(source: np.ndarray | soundfile.SoundFile, chunk: Chunk, rate: int) -> np.ndarray:
    """The samples of `chunk` at `rate`: sliced from a waveform, or read from an open file and resampled."""
    if not isinstance(source, soundfile.SoundFile):
        return source[chunk.start : chunk.end]
    source.seek(chunk.start)
    samples = source.read(chunk.end - chunk.start, dtype="float32", always_2d=True)
    return load_audio(samples.mean(axis=1), source.samplerate, target_sampling_rate=rate)


def _open_sound_file(inputs: Any) -> soundfile.SoundFile | None:
    """The open file when `inputs` is a path soundfile reads, else None (`load_audio` decodes it)."""
    if not isinstance(inputs, (str, os.PathLike)) or not os.path.isfile(inputs):
        return None
    try:
        return soundfile.SoundFile(inputs)
    except (soundfile.LibsndfileError, RuntimeError):
        return None


def register_part_pipeline() -> None:
    """Makes `pipeline("automatic-speech-recognition", ...)` build `PartSpeechRecognitionPipeline` for PART models;
    every other model gets the class registered before, with the same arguments. Calling it again changes nothing."""
    global _non_part_impl
    task_entry = PIPELINE_REGISTRY.supported_tasks[TASK]
    impl = task_entry["impl"]
    if isinstance(impl, type) and issubclass(impl, PartSpeechRecognitionPipeline):
        return
    if isinstance(impl, str):  # transformers names its pipeline classes by dotted path
        module, name = impl.rsplit(".", 1)
        impl = getattr(importlib.import_module(module), name)
    _non_part_impl = impl
    PIPELINE_REGISTRY.supported_tasks[TASK] = {**task_entry, "impl": PartSpeechRecognitionPipeline}


__all__ = ["PartSpeechRecognitionPipeline", "register_part_pipeline"]
