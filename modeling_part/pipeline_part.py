"""The `automatic-speech-recognition` pipeline for PART models (speech translation through the same call).

transformers' own ASR pipeline feeds features as the model's main input and decodes files with ffmpeg; a speech
LLM needs a task prompt around its audio. `pipeline()` picks the class registered for a task before it loads the
model, and transformers offers no per-model-type choice without `trust_remote_code`, so `register_part_pipeline`
registers `PartSpeechRecognitionPipeline` for the task and the class decides when it is built: for a PART model it
is itself (`PartProcessor` + `generate`); for any other model it builds the class the task had before (transformers'
`AutomaticSpeechRecognitionPipeline`) from the very same arguments, so Whisper, wav2vec2 and the rest get exactly
transformers' pipeline object and behaviour, as if this package were not imported.

Recordings longer than the model takes are transcribed with `chunk_length_s=`: cut at pauses (or into overlapping
windows where the speech has none, see `modeling_part.long_form`), `batch_size` chunks per `generate` call, and the
chunks' texts joined; `return_timestamps=True` adds each chunk's text with its start and end.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

import numpy as np
import soundfile

from transformers import AutoProcessor
from transformers.pipelines import PIPELINE_REGISTRY
from transformers.pipelines.automatic_speech_recognition import AutomaticSpeechRecognitionPipeline

from .audio_utils import load_audio
from .long_form import (
    FRAME_SECONDS,
    Chunk,
    chunk_timestamps,
    file_frame_energies_db,
    join_texts,
    merge_chunk_texts,
    plan_chunks,
    plan_chunks_from_energies,
)

TASK = "automatic-speech-recognition"

_non_part_impl: type | str = AutomaticSpeechRecognitionPipeline
"""The task's implementation before `register_part_pipeline` (a class or a dotted path): built for other models."""


def _is_part_model(model: Any) -> bool:
    return getattr(getattr(model, "config", None), "model_type", None) == "part"


def non_part_pipeline_class() -> type:
    """The pipeline class `pipeline("automatic-speech-recognition")` builds for a model that is not PART."""
    if isinstance(_non_part_impl, str):
        module, name = _non_part_impl.rsplit(".", 1)
        return getattr(importlib.import_module(module), name)
    return _non_part_impl


class PartSpeechRecognitionPipeline(AutomaticSpeechRecognitionPipeline):
    """ASR and speech translation with a PART model.

    Built for any other model, it returns the task's previous pipeline class instead (see the module docstring).

    Example:
        >>> asr = pipeline("automatic-speech-recognition", model="path/to/part-model")
        >>> asr("clip.wav", language="de")["text"]  # German transcript
        >>> asr("clip.wav", language="de", task="s2tt", target_language="en")["text"]  # English translation
        >>> asr("meeting.wav", language="de", chunk_length_s=20, batch_size=4, return_timestamps=True)["chunks"]
    """

    def __new__(cls, *args: Any, **kwargs: Any):
        if not args and not kwargs:  # copy / pickle: `cls.__new__(cls)`, then the state is restored
            return super().__new__(cls)
        model = kwargs["model"] if "model" in kwargs else args[0] if args else None
        if not _is_part_model(model):
            return non_part_pipeline_class()(*args, **kwargs)  # not an instance of cls: __init__ does not run again
        return super().__new__(cls)

    def __init__(self, *args, processor=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.part_processor = processor or AutoProcessor.from_pretrained(self.model.name_or_path)

    def __call__(self, inputs: Any, batch_size: int | None = None, **kwargs: Any) -> dict[str, Any] | list:
        """Transcribes (`task="asr"`) or translates (`task="s2tt"`) one recording or a list of them.

        Args:
            inputs: a file path, bytes, an array with `sampling_rate=`, `{"raw"/"array", "sampling_rate"}`, or a
                list of these.
            language: ISO 639 code of the speech (required). task, target_language: `"s2tt"` and the output
                language to translate.
            chunk_length_s: transcribe a recording longer than this in chunks of at most this many seconds, cut at
                pauses (see `modeling_part.long_form`); at most the processor's `max_audio_seconds` (30 s for a
                Whisper encoder). Without it, a recording must fit in one chunk.
            stride_length_s: where a stretch of speech has no pause, consecutive windows share `left + right` seconds
                (one number for both sides, or `(left, right)`; default `chunk_length_s / 6`), merged at word level.
            batch_size: chunks per `generate` call (default: the pipeline's `batch_size`, else 1).
            return_timestamps: `True` adds `chunks`, `[{"text", "timestamp": (start, end)}]` in seconds.
            max_new_tokens, num_beams, generate_kwargs: passed to `generate` (per chunk).

        Returns:
            `{"text": ...}` (and `"chunks"`), or a list of them for a list of inputs.
        """
        chunk_batch_size = batch_size if batch_size is not None else (self._batch_size or 1)
        if not isinstance(chunk_batch_size, int) or chunk_batch_size < 1:
            raise ValueError(f"batch_size must be a positive int (chunks per generate call), got {chunk_batch_size!r}.")
        # The recordings go through one at a time (batch of 1 for the DataLoader); their chunks are batched here.
        return super().__call__(inputs, batch_size=1, chunk_batch_size=chunk_batch_size, **kwargs)

    def _sanitize_parameters(
        self,
        language=None,
        task=None,
        target_language=None,
        sampling_rate=None,
        chunk_length_s=None,
        stride_length_s=None,
        chunk_batch_size=None,
        return_timestamps=None,
        **kwargs,
    ):
        preprocess = {
            "language": language,
            "task": task,
            "target_language": target_language,
            "sampling_rate": sampling_rate,
            "chunk_length_s": chunk_length_s,
            "stride_length_s": stride_length_s,
            "chunk_batch_size": chunk_batch_size,
        }
        preprocess = {k: v for k, v in preprocess.items() if v is not None}  # unset: keep the pipeline's own
        forward = {k: v for k, v in kwargs.items() if k in ("max_new_tokens", "num_beams", "generate_kwargs")}
        unknown = set(kwargs) - set(forward)
        if unknown:
            raise ValueError(
                f"Unsupported arguments for a PART pipeline call: {sorted(unknown)}; a PART call takes language=, "
                "task=, target_language=, sampling_rate=, chunk_length_s=, stride_length_s=, batch_size=, "
                "return_timestamps=, max_new_tokens=, num_beams= and generate_kwargs=."
            )
        postprocess = {}
        if return_timestamps is not None:
            if return_timestamps not in (True, False):
                raise ValueError(
                    f"A PART pipeline gives each chunk's start and end (return_timestamps=True), got "
                    f"return_timestamps={return_timestamps!r}; word and character timestamps are not available."
                )
            postprocess["return_timestamps"] = return_timestamps
        return preprocess, forward, postprocess

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
        **kwargs,
    ):
        if language is None:
            raise ValueError(
                "A PART pipeline call needs language= (the ISO 639 code of the speech, e.g. language='de')."
            )
        if isinstance(inputs, dict) and "raw" in inputs:  # the parent pipeline's {"raw", "sampling_rate"} form
            inputs = {"array": inputs["raw"], "sampling_rate": inputs["sampling_rate"]}
        if task not in ("asr", "s2tt"):
            raise ValueError(f"A PART speech pipeline runs task='asr' or task='s2tt', got task={task!r}.")
        if task == "s2tt" and target_language in (None, language):
            raise ValueError("task='s2tt' needs target_language= different from language=.")
        if task == "asr" and target_language not in (None, language):
            raise ValueError(
                f"task='asr' transcribes in language={language!r}, but target_language={target_language!r}; use "
                "task='s2tt' to translate."
            )
        processor = self.part_processor
        rate = processor.feature_extractor.sampling_rate
        limit = processor.effective_max_audio_seconds  # max_audio_seconds, and 30 s for a Whisper encoder
        if chunk_length_s is not None and chunk_length_s > limit:
            raise ValueError(
                f"chunk_length_s={chunk_length_s} is longer than the {limit} s the model takes "
                f"(processor.max_audio_seconds); pass chunk_length_s <= {limit} (e.g. {min(20, limit)})."
            )
        request = {"language": language, "target_language": target_language, "batch_size": chunk_batch_size}
        audio_file = _open_long_file(inputs, chunk_length_s)
        if audio_file is not None:  # read block by block and chunk by chunk: never the whole file in memory
            with audio_file:
                frame_length = max(1, round(FRAME_SECONDS * audio_file.samplerate))
                energies = file_frame_energies_db(audio_file, frame_length)
                chunks = plan_chunks_from_energies(
                    energies, audio_file.frames, chunk_length_s, stride_length_s, audio_file.samplerate
                )

                def read(chunk: Chunk) -> np.ndarray:
                    audio_file.seek(chunk.start)
                    samples = audio_file.read(chunk.end - chunk.start, dtype="float32", always_2d=True)
                    return load_audio(samples.mean(axis=1), audio_file.samplerate, target_sampling_rate=rate)

                yield from self._chunk_batches(chunks, read, audio_file.samplerate, **request)
            return
        waveform = load_audio(inputs, sampling_rate, target_sampling_rate=rate, name="the pipeline's input")
        if chunk_length_s is None:
            seconds = len(waveform) / rate
            if seconds > limit:
                raise ValueError(
                    f"The recording is {seconds:.1f} s long, longer than the {limit} s the model takes "
                    "(processor.max_audio_seconds); pass chunk_length_s= (e.g. chunk_length_s=20) to transcribe it in "
                    "chunks cut where the speech pauses."
                )
            chunks = [Chunk(0, len(waveform))]
        else:
            chunks = plan_chunks(waveform, chunk_length_s, stride_length_s, sampling_rate=rate)
        yield from self._chunk_batches(chunks, lambda c: waveform[c.start : c.end], rate, **request)

    def _chunk_batches(self, chunks, read, chunk_rate, language, target_language, batch_size):
        """Model inputs for `batch_size` chunks at a time (`read(chunk)`: its 16 kHz waveform), with the chunks and
        the sampling rate their spans count in."""
        if not chunks:  # no speech anywhere
            yield {"is_last": True, "chunks": [], "sampling_rate": chunk_rate, "inputs": None}
            return
        rate = self.part_processor.feature_extractor.sampling_rate
        for first in range(0, len(chunks), batch_size):
            batch = chunks[first : first + batch_size]
            waveforms = [read(chunk) for chunk in batch]
            inputs = self.part_processor.apply_transcription_request(
                waveforms, language=language, sampling_rate=rate, target_language=target_language
            )
            is_last = first + batch_size >= len(chunks)
            yield {"is_last": is_last, "chunks": batch, "sampling_rate": chunk_rate, "inputs": inputs}

    def _forward(self, model_inputs, **forward_params):
        generate_kwargs = dict(forward_params.pop("generate_kwargs", None) or {})
        generate_kwargs.update(forward_params)
        outputs = {key: model_inputs[key] for key in ("is_last", "chunks", "sampling_rate")}
        if model_inputs["inputs"] is None:
            return {**outputs, "texts": []}
        tokens = self.model.generate(**model_inputs["inputs"], **generate_kwargs)
        return {**outputs, "texts": self.part_processor.batch_decode(tokens)}

    def postprocess(self, model_outputs, return_timestamps: bool = False, **kwargs) -> dict[str, Any]:
        outputs = model_outputs if isinstance(model_outputs, list) else [model_outputs]
        chunks = [chunk for output in outputs for chunk in output["chunks"]]
        texts = [text for output in outputs for text in output["texts"]]
        rate = outputs[0]["sampling_rate"]
        parts = merge_chunk_texts(texts, chunks, rate)
        result: dict[str, Any] = {"text": join_texts(parts)}
        if return_timestamps:
            result["chunks"] = [
                {"text": text, "timestamp": span} for text, span in zip(parts, chunk_timestamps(chunks, rate))
            ]
        return result


def _open_long_file(inputs: Any, chunk_length_s: float | None) -> soundfile.SoundFile | None:
    """The open file when `inputs` is a path soundfile reads that lasts longer than `chunk_length_s`, else None."""
    if chunk_length_s is None or not isinstance(inputs, (str, os.PathLike)) or not os.path.isfile(inputs):
        return None
    try:
        audio_file = soundfile.SoundFile(inputs)
    except (soundfile.LibsndfileError, RuntimeError):
        return None  # load_audio's decoders and errors take over
    if audio_file.frames <= chunk_length_s * audio_file.samplerate:
        audio_file.close()
        return None
    return audio_file


def register_part_pipeline() -> None:
    """Makes `pipeline("automatic-speech-recognition", ...)` build `PartSpeechRecognitionPipeline` for PART models.

    The task keeps its model classes and default model; the class registered before is remembered and built, with
    the same arguments, for every other model. Calling it again changes nothing.
    """
    global _non_part_impl
    task_entry = PIPELINE_REGISTRY.supported_tasks[TASK]
    impl = task_entry["impl"]
    if isinstance(impl, type) and issubclass(impl, PartSpeechRecognitionPipeline):
        return
    _non_part_impl = impl
    PIPELINE_REGISTRY.supported_tasks[TASK] = {**task_entry, "impl": PartSpeechRecognitionPipeline}


__all__ = ["PartSpeechRecognitionPipeline", "non_part_pipeline_class", "register_part_pipeline"]
