"""The `automatic-speech-recognition` pipeline for PART models (speech translation through the same call).

transformers' own ASR pipeline feeds features as the model's main input and decodes files with ffmpeg; a speech
LLM needs a task prompt around its audio. `PartSpeechRecognitionPipeline` subclasses it: PART models go through
`PartProcessor` and `generate`, every other model keeps the parent's behaviour, so registering it for the task
changes nothing for Whisper, wav2vec2 and the rest.
"""

from __future__ import annotations

from typing import Any

from transformers import AutoProcessor
from transformers.pipelines import PIPELINE_REGISTRY
from transformers.pipelines.automatic_speech_recognition import AutomaticSpeechRecognitionPipeline

TASK = "automatic-speech-recognition"


class PartSpeechRecognitionPipeline(AutomaticSpeechRecognitionPipeline):
    """ASR and speech translation with a PART model.

    Example:
        >>> asr = pipeline("automatic-speech-recognition", model="path/to/part-model")
        >>> asr("clip.wav", language="de")["text"]  # German transcript
        >>> asr("clip.wav", language="de", task="s2tt", target_language="en")["text"]  # English translation
    """

    def __init__(self, *args, processor=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.is_part = self.model.config.model_type == "part"
        if self.is_part:
            self.part_processor = processor or AutoProcessor.from_pretrained(self.model.name_or_path)

    def _sanitize_parameters(self, language=None, task=None, target_language=None, sampling_rate=None, **kwargs):
        if not getattr(self, "is_part", False):
            return super()._sanitize_parameters(**kwargs)
        preprocess = {"language": language, "task": task or "asr", "target_language": target_language}
        preprocess["sampling_rate"] = sampling_rate
        forward = {k: v for k, v in kwargs.items() if k in ("max_new_tokens", "num_beams", "generate_kwargs")}
        unknown = set(kwargs) - set(forward)
        if unknown:
            raise ValueError(f"Unsupported arguments for a PART pipeline call: {sorted(unknown)}.")
        return preprocess, forward, {}

    def preprocess(self, inputs, language=None, task="asr", target_language=None, sampling_rate=None, **kwargs):
        if not self.is_part:
            yield from super().preprocess(inputs, **kwargs)
            return
        if language is None:
            raise ValueError(
                "A PART pipeline call needs language= (the ISO 639 code of the speech, e.g. language='de')."
            )
        if isinstance(inputs, dict) and "raw" in inputs:  # the parent pipeline's {"raw", "sampling_rate"} form
            inputs = {"array": inputs["raw"], "sampling_rate": inputs["sampling_rate"]}
        yield self.part_processor(
            audio=inputs,
            task=task,
            source_language=language,
            target_language=target_language,
            sampling_rate=sampling_rate,
        )

    def _forward(self, model_inputs, **forward_params):
        if not self.is_part:
            return super()._forward(model_inputs, **forward_params)
        generate_kwargs = dict(forward_params.pop("generate_kwargs", None) or {})
        generate_kwargs.update(forward_params)
        tokens = self.model.generate(**model_inputs, **generate_kwargs)
        return {"tokens": tokens, "is_last": True}

    def postprocess(self, model_outputs, **kwargs) -> dict[str, Any]:
        if not self.is_part:
            return super().postprocess(model_outputs, **kwargs)
        outputs = model_outputs[0] if isinstance(model_outputs, list) else model_outputs
        return {"text": self.part_processor.batch_decode(outputs["tokens"])[0]}


def register_part_pipeline() -> None:
    """Makes `pipeline("automatic-speech-recognition", ...)` use `PartSpeechRecognitionPipeline`.

    The task keeps its models and defaults; only the implementation class changes, and it behaves as the parent for
    every non-PART model.
    """
    task_entry = PIPELINE_REGISTRY.supported_tasks[TASK]
    if task_entry["impl"] is not PartSpeechRecognitionPipeline:
        PIPELINE_REGISTRY.supported_tasks[TASK] = {**task_entry, "impl": PartSpeechRecognitionPipeline}


__all__ = ["PartSpeechRecognitionPipeline", "register_part_pipeline"]
