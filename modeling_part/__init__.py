"""PART model package: config, model, feature extractor and processor, registered with the Auto classes.

Importing it registers `PartConfig` with `AutoConfig`, the model with `AutoModel` and `AutoModelForSpeechSeq2Seq`,
the feature extractor and processor with `AutoFeatureExtractor` / `AutoProcessor`, marks every class for
`trust_remote_code` export (saved folders carry their code), and routes the `automatic-speech-recognition` pipeline
for PART models to `PartSpeechRecognitionPipeline` (every other model still gets transformers' own pipeline).
"""

from transformers import AutoConfig, AutoFeatureExtractor, AutoModel, AutoModelForSpeechSeq2Seq, AutoProcessor

from .audio_utils import load_audio
from .configuration_part import PartAdapterConfig, PartConfig
from .feature_extraction_part import PartFeatureExtractor
from .modeling_part import PartForSpeechToText, PartPreTrainedModel
from .pipeline_part import PartSpeechRecognitionPipeline, register_part_pipeline
from .processing_part import LANGUAGE_NAMES, TASKS, PartProcessor

AutoConfig.register(PartConfig.model_type, PartConfig, exist_ok=True)
AutoConfig.register(PartAdapterConfig.model_type, PartAdapterConfig, exist_ok=True)
AutoModel.register(PartConfig, PartForSpeechToText, exist_ok=True)
AutoModelForSpeechSeq2Seq.register(PartConfig, PartForSpeechToText, exist_ok=True)
AutoFeatureExtractor.register(PartConfig, PartFeatureExtractor, exist_ok=True)
AutoProcessor.register(PartConfig, PartProcessor, exist_ok=True)

PartConfig.register_for_auto_class()
PartForSpeechToText.register_for_auto_class("AutoModelForSpeechSeq2Seq")
PartFeatureExtractor.register_for_auto_class("AutoFeatureExtractor")
PartProcessor.register_for_auto_class("AutoProcessor")
register_part_pipeline()

__all__ = [
    "LANGUAGE_NAMES",
    "TASKS",
    "PartAdapterConfig",
    "PartConfig",
    "PartFeatureExtractor",
    "PartForSpeechToText",
    "PartPreTrainedModel",
    "PartProcessor",
    "PartSpeechRecognitionPipeline",
    "load_audio",
]
