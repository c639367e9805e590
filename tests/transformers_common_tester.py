"""The PART tester for transformers' common model and config tests (`ModelTesterMixin`, `ConfigTester`).

Imported by `tests/test_transformers_common.py` once `transformers_sdist.common_tests_package()` has made the
mixins (package `hf_common_tests`, from the transformers sdist) importable.
"""

from __future__ import annotations

import unittest

import torch
from hf_common_tests.generation.test_utils import GenerationTesterMixin
from hf_common_tests.test_configuration_common import ConfigTester
from hf_common_tests.test_modeling_common import ModelTesterMixin, floats_tensor, ids_tensor

from modeling_part import PartConfig, PartForSpeechToText
from modeling_part.tiny import tiny_part_config


class PartModelTester:
    """A small PART config (SenseVoice-style encoder, adapter, Qwen2 LM) and matching inputs.

    Every sample has a clip; the clips have different valid lengths (padding is exercised), and each prompt holds
    exactly as many audio placeholders as the model makes of its clip, after a few text tokens.
    """

    def __init__(
        self,
        parent,
        batch_size: int = 7,  # the common eager/sdpa test pads other inputs to 7 samples, but not the audio
        feature_length: int = 12,
        text_length: int = 7,
        vocab_size: int = 99,
        hidden_size: int = 32,
        num_hidden_layers: int = 2,
        num_attention_heads: int = 4,
        num_mel_bins: int = 4,
        is_training: bool = True,
        encoder: str = "sensevoice",
    ):
        self.parent = parent
        self.batch_size = batch_size
        self.feature_length = feature_length
        self.text_length = text_length
        self.vocab_size = vocab_size
        self.pad_token_id = 0
        self.audio_token_id = 1  # a low id: the common resize test clamps input_ids to a smaller vocabulary
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_mel_bins = num_mel_bins
        self.is_training = is_training
        self.encoder = encoder
        if encoder == "whisper":  # Whisper reads exactly 2 * max_source_positions frames, zero-padded after the clip
            self.feature_length = 2 * self.whisper_max_source_positions

    whisper_max_source_positions = 12

    def get_config(self) -> PartConfig:
        config = tiny_part_config(
            vocab_size=self.vocab_size,
            audio_token_id=self.audio_token_id,
            width=self.hidden_size,
            encoder_layers=self.num_hidden_layers,
            llm_layers=self.num_hidden_layers,
            heads=self.num_attention_heads,
            num_mel_bins=self.num_mel_bins,
            encoder=self.encoder,
        )
        if self.encoder == "whisper":
            config.audio_config.max_source_positions = self.whisper_max_source_positions
        config.text_config.pad_token_id = self.pad_token_id
        config.text_config.max_position_embeddings = 128
        config.pad_token_id = self.pad_token_id
        return config

    @property
    def feature_lengths(self) -> torch.Tensor:
        """Valid feature frames per clip: the first clip is full length, the others shorter."""
        return torch.tensor([self.feature_length - 3 * (i % 3) for i in range(self.batch_size)])

    @property
    def seq_length(self) -> int:
        config = self.get_config()
        return self.text_length + int(config.audio_token_lengths(torch.tensor(self.feature_length)))

    def prepare_config_and_inputs(self):
        config = self.get_config()
        if self.encoder == "whisper":
            input_features = floats_tensor([self.batch_size, self.num_mel_bins, self.feature_length])
        else:
            input_features = floats_tensor([self.batch_size, self.feature_length, config.audio_config.input_size])
        lengths = self.feature_lengths
        feature_attention_mask = (torch.arange(self.feature_length)[None, :] < lengths[:, None]).long()
        audio_tokens = config.audio_token_lengths(lengths)
        seq_length = self.seq_length
        input_ids = ids_tensor([self.batch_size, seq_length], self.vocab_size - 2) + 2  # no pad, no placeholder
        attention_mask = torch.ones(self.batch_size, seq_length, dtype=torch.long)
        for row, count in enumerate(audio_tokens.tolist()):
            # left padding, then 2 text tokens, the placeholders, then text
            padding = seq_length - self.text_length - count
            input_ids[row, :padding] = self.pad_token_id
            attention_mask[row, :padding] = 0
            input_ids[row, padding + 2 : padding + 2 + count] = self.audio_token_id
        inputs = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "input_features": input_features,
            "feature_attention_mask": feature_attention_mask,
        }
        return config, inputs

    def prepare_config_and_inputs_for_common(self):
        return self.prepare_config_and_inputs()


class PartForSpeechToTextModelTest(ModelTesterMixin, GenerationTesterMixin, unittest.TestCase):
    """`ModelTesterMixin` and `ConfigTester` on `PartForSpeechToText`. `GenerationTesterMixin` is the sdist's
    stand-in (see `transformers_sdist.MISSING_MODULES`): inheriting it satisfies the mixin's check that a generating
    model has generate tests, and the real mixin takes its place once an sdist ships it."""

    all_model_classes = (PartForSpeechToText,)
    pipeline_model_mapping = {}
    additional_model_inputs = ["input_features", "feature_attention_mask"]
    _is_composite = True
    # The common test reads the copyright year of the config's file to skip models added before 2023; ours has none.
    test_can_init_all_missing_weights_before_2023 = True

    def setUp(self):
        self.model_tester = PartModelTester(self)
        self.config_tester = ConfigTester(self, config_class=PartConfig, has_text_modality=False)

    def _prepare_for_class(self, inputs_dict, model_class, return_labels=False):
        """As the mixin's, plus labels for the loss tests (it adds them only for the Auto classes it knows by name):
        next-token targets on the non-audio positions, as for a causal LM."""
        inputs_dict = super()._prepare_for_class(inputs_dict, model_class, return_labels=return_labels)
        if return_labels:
            labels = inputs_dict["input_ids"].clone()
            labels[(labels == self.model_tester.audio_token_id) | (inputs_dict["attention_mask"] == 0)] = -100
            inputs_dict["labels"] = labels
        return inputs_dict

    def test_config(self):
        self.config_tester.run_common_tests()

    @unittest.skip(
        reason="PART keeps the pretrained causal LM whole (its head, weight tying and LoRA), so there is no separate "
        "base model under the head: base_model_prefix is '' and base_model is the model (see PartPreTrainedModel)."
    )
    def test_model_base_model_prefix(self):
        pass


class PartWithWhisperEncoderModelTest(PartForSpeechToTextModelTest):
    """The same common tests with a Whisper encoder (features `[clips, mel bins, frames]`, encoder stride 2)."""

    def setUp(self):
        self.model_tester = PartModelTester(self, encoder="whisper")
        self.config_tester = ConfigTester(self, config_class=PartConfig, has_text_modality=False)
