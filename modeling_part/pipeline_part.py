"""The `automatic-speech-recognition` pipeline for PART models (speech translation through the same call).

transformers' own ASR pipeline feeds features as the model's main input and decodes files with ffmpeg; a speech
LLM needs a task prompt around its audio. `pipeline()` picks the class registered for a task before it loads the
model, and transformers offers no per-model-type choice without `trust_remote_code`, so `register_part_pipeline`
registers `PartSpeechRecognitionPipeline` for the task and the class decides when it is built: for a PART model it
is itself (`PartProcessor` + `generate`); for any other model it builds the class the task had before (transformers'
`AutomaticSpeechRecognitionPipeline`) from the very same arguments, so Whisper, wav2vec2 and the rest get exactly
transformers' pipeline object and behaviour, as if this package were not imported.
"""

from __future__ import annotations

import importlib
from typing import Any

from transformers import AutoProcessor
from transformers.pipelines import PIPELINE_REGISTRY
from transformers.pipelines.automatic_speech_recognition import AutomaticSpeechRecognitionPipeline

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

    def _sanitize_parameters(self, language=None, task=None, target_language=None, sampling_rate=None, **kwargs):
        preprocess = {"language": language, "task": task or "asr", "target_language": target_language}
        preprocess["sampling_rate"] = sampling_rate
        forward = {k: v for k, v in kwargs.items() if k in ("max_new_tokens", "num_beams", "generate_kwargs")}
        unknown = set(kwargs) - set(forward)
        if unknown:
            raise ValueError(
                f"Unsupported arguments for a PART pipeline call: {sorted(unknown)}; a PART call takes language=, "
                "task=, target_language=, sampling_rate=, max_new_tokens=, num_beams= and generate_kwargs=."
            )
        return preprocess, forward, {}

    def preprocess(self, inputs, language=None, task="asr", target_language=None, sampling_rate=None, **kwargs):
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
        yield self.part_processor.apply_transcription_request(
            inputs, language=language, sampling_rate=sampling_rate, target_language=target_language
        )

    def _forward(self, model_inputs, **forward_params):
        generate_kwargs = dict(forward_params.pop("generate_kwargs", None) or {})
        generate_kwargs.update(forward_params)
        tokens = self.model.generate(**model_inputs, **generate_kwargs)
        return {"tokens": tokens, "is_last": True}

    def postprocess(self, model_outputs, **kwargs) -> dict[str, Any]:
        outputs = model_outputs[0] if isinstance(model_outputs, list) else model_outputs
        return {"text": self.part_processor.batch_decode(outputs["tokens"])[0]}


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
