"""PartProcessor: prompts, placeholder counts, labels, padding, audio inputs, save/load, and bad-input errors."""

import numpy as np
import pytest
import soundfile as sf
import torch
from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import AutoConfig, AutoModel, AutoProcessor, PreTrainedConfig, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutput

from modeling_part import LANGUAGE_NAMES, PartConfig, PartForSpeechToText, PartProcessor
from modeling_part.configuration_part import audio_token_lengths

from conftest import make_audio


def test_placeholder_count_equals_model_audio_positions(tiny_part):
    model, processor = tiny_part
    for num_samples in (400, 560, 961, 1600, 16000, 16001, 23999, 48000):
        audio = make_audio(num_samples / 16000)[:num_samples]
        batch = processor(audio=audio, sampling_rate=16000, task="asr", source_language="en")
        placeholders = int((batch["input_ids"] == processor.audio_token_id).sum())
        assert placeholders == processor.audio_placeholder_count(num_samples)
        lengths = model.get_audio_features(batch["input_features"], batch["feature_attention_mask"]).audio_token_lengths
        assert int(lengths[0]) == placeholders


def test_labels_mask_prompt_audio_and_padding(tiny_part):
    _, processor = tiny_part
    batch = processor(
        audio=[make_audio(1.0), make_audio(1.5, 1)],
        sampling_rate=16000,
        task="asr",
        source_language="en",
        target_text=["a cat", "a much longer sentence here"],
    )
    ids, labels, mask = batch["input_ids"], batch["labels"], batch["attention_mask"]
    assert (mask[:, 0] == 1).all()  # training batches are right-padded
    assert (labels[ids == processor.audio_token_id] == -100).all()
    assert (labels[mask == 0] == -100).all()
    tokenizer = processor.tokenizer
    for row, text in enumerate(["a cat", "a much longer sentence here"]):
        target = labels[row][labels[row] != -100].tolist()
        assert target[-1] == tokenizer.eos_token_id
        assert tokenizer.decode(target[:-1]) == text


def test_training_and_inference_prompts_share_one_path(tiny_part):
    _, processor = tiny_part
    audio = make_audio(1.2)
    train = processor.apply_transcription_request(audio, language="de", sampling_rate=16000, target_language="en",
                                                  target_text="two", output_labels=True)
    infer = processor.apply_transcription_request(audio, language="de", sampling_rate=16000, target_language="en")
    prompt_length = int((train["labels"][0] == -100).sum())
    assert train["input_ids"][0, :prompt_length].tolist() == infer["input_ids"][0].tolist()
    prompt = processor.tokenizer.decode(infer["input_ids"][0])
    assert "Translate the German speech into English text." in prompt


def test_chat_template_prompt(tiny_part):
    _, processor = tiny_part
    processor.tokenizer.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    processor.use_chat_template = True
    batch = processor(audio=make_audio(1.0), sampling_rate=16000, task="asr", source_language="fr")
    text = processor.tokenizer.decode(batch["input_ids"][0])
    assert text.startswith("<|im_start|>user\n<|audio_bos|><|AUDIO|>") and text.endswith("<|im_start|>assistant\n")


def test_audio_inputs_paths_dicts_tensors_and_stereo(tiny_part, tmp_path):
    _, processor = tiny_part
    mono = make_audio(1.0)
    path = tmp_path / "clip.wav"
    sf.write(path, np.stack([mono, mono], axis=1), 16000, subtype="FLOAT")  # stereo file
    with open(path, "rb") as f:
        undecoded = {"path": None, "bytes": f.read()}
    inputs = [str(path), undecoded, {"array": mono, "sampling_rate": 16000}, torch.from_numpy(mono)]
    features = [
        processor(audio=x, sampling_rate=16000 if isinstance(x, torch.Tensor) else None, task="asr", source_language="en")[
            "input_features"
        ]
        for x in inputs
    ]
    for other in features[1:]:
        torch.testing.assert_close(other, features[0], atol=2e-3, rtol=1e-3)
    resampled = processor(audio=np.interp(np.arange(0, 16000, 16000 / 44100), np.arange(16000), mono),
                          sampling_rate=44100, task="asr", source_language="en")
    assert resampled["input_features"].shape == features[0].shape


def test_save_and_load_processor(tiny_part, tmp_path):
    _, processor = tiny_part
    processor.prompt_templates["asr"] = "Write down the {source_language} audio."
    processor.save_pretrained(tmp_path)
    loaded = AutoProcessor.from_pretrained(tmp_path)
    assert isinstance(loaded, PartProcessor)
    assert loaded.prompt_templates["asr"] == "Write down the {source_language} audio."
    assert (loaded.encoder_stride, loaded.adapter_kernel_size, loaded.adapter_stride) == (
        processor.encoder_stride, processor.adapter_kernel_size, processor.adapter_stride,
    )
    audio = make_audio(1.3)
    a = processor(audio=audio, sampling_rate=16000, task="asr", source_language="en")
    b = loaded(audio=audio, sampling_rate=16000, task="asr", source_language="en")
    assert torch.equal(a["input_ids"], b["input_ids"])
    torch.testing.assert_close(a["input_features"], b["input_features"])


def test_default_language_names_are_the_prompts_names():
    """The names come from Whisper's language table; prompts (what trained models saw) must keep these words."""
    assert LANGUAGE_NAMES == {
        "en": "English", "de": "German", "fr": "French", "es": "Spanish", "it": "Italian", "ru": "Russian",
        "zh": "Chinese", "ja": "Japanese", "ko": "Korean", "yue": "Cantonese", "pt": "Portuguese", "nl": "Dutch",
        "ar": "Arabic", "tr": "Turkish", "pl": "Polish", "hi": "Hindi", "vi": "Vietnamese", "th": "Thai",
        "id": "Indonesian", "sv": "Swedish",
    }


def test_batch_decode_returns_clean_text(tiny_part):
    _, processor = tiny_part
    tokenizer = processor.tokenizer
    ids = tokenizer(" hello world", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] * 2
    assert processor.batch_decode([ids]) == ["hello world"]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"audio": np.zeros(0, np.float32)}, "empty"),
        ({"audio": np.zeros(100, np.float32)}, "too short"),
        ({"audio": np.full(16000, np.nan, np.float32)}, "NaN"),
        ({"audio": np.full(16000, np.inf, np.float32)}, "inf"),
        ({"audio": np.zeros(16000 * 31, np.float32)}, "max_audio_seconds"),
        ({"audio": make_audio(1.0), "sampling_rate": None}, "sampling_rate"),
        ({"task": "summarise"}, "unknown task"),
        ({"source_language": "xx"}, "unknown source_language"),
        ({"source_language": None}, "source_language is required"),
        ({"task": "s2tt", "target_language": None}, "needs target_language"),
        ({"task": "asr", "target_language": "en", "source_language": "de"}, "use task 's2tt'"),
        ({"task": "mt", "target_language": "en", "audio": None}, "needs text="),
        ({"task": "mt", "target_language": "en", "text": "Hund"}, "text-only"),
        ({"audio": None}, "needs audio"),
    ],
)
def test_bad_inputs_raise_value_errors_naming_the_sample(tiny_part, kwargs, message):
    _, processor = tiny_part
    call = {"audio": make_audio(1.0), "sampling_rate": 16000, "task": "asr", "source_language": "en"}
    call.update(kwargs)
    with pytest.raises(ValueError, match=message) as error:
        processor(**call)
    assert "ample 0" in str(error.value) or "sample" in str(error.value)


def test_text_longer_than_context_raises(tiny_part):
    _, processor = tiny_part
    processor.tokenizer.model_max_length = 64
    with pytest.raises(ValueError, match="exceed the LLM context"):
        processor(audio=make_audio(1.0), sampling_rate=16000, task="asr", source_language="en", target_text="word " * 200)


def test_processor_refuses_tokenizer_without_audio_tokens(tiny_part):
    from modeling_part.tiny import build_tokenizer

    _, processor = tiny_part
    tokenizer = build_tokenizer()
    tokenizer_without = type(tokenizer)(tokenizer_object=tokenizer.backend_tokenizer)
    tokenizer_without.backend_tokenizer  # noqa: B018
    if "<|AUDIO|>" in tokenizer_without.get_vocab():
        from tokenizers import Tokenizer, models

        tokenizer_without = type(tokenizer)(tokenizer_object=Tokenizer(models.BPE()), eos_token="</s>")
    with pytest.raises(ValueError, match="from_pretrained_components"):
        PartProcessor(processor.feature_extractor, tokenizer_without)


def test_tiny_tokenizer_keeps_chinese_characters_apart(tmp_path):
    """Unspaced Chinese repeated in a small corpus: BPE merges whole sentences into single tokens; with
    `split_han_characters` every token holds at most one Han character, text round-trips, and a saved tokenizer keeps
    the split."""
    from transformers import AutoTokenizer

    from modeling_part.tiny import build_tokenizer

    texts = ["价格是三加拿大元。", "今天是星期一。", "价格是十二欧元。", "火车三点半出发。"] * 50 + ["the price is three"] * 50
    tokenizer = build_tokenizer(texts, vocab_size=600, split_han_characters=True)
    tokenizer.save_pretrained(tmp_path)
    for loaded in (tokenizer, AutoTokenizer.from_pretrained(tmp_path)):
        for text in [*texts[:4], "价格是三欧元。 the price"]:
            ids = loaded(text, add_special_tokens=False)["input_ids"]
            pieces = [loaded.decode([i]) for i in ids]
            assert all(sum("\u4e00" <= c <= "\u9fff" for c in piece) <= 1 for piece in pieces), pieces
            assert loaded.decode(ids) == text
    merged = build_tokenizer(texts, vocab_size=600)  # the default, as the shipped demo stand-ins were made
    assert len(merged("价格是三加拿大元。", add_special_tokens=False)["input_ids"]) < 4  # what the split prevents


# ------------------------------------------------------------------ encoder output lengths from the encoder itself
@strict
class StridedEncoderConfig(PreTrainedConfig):
    """A toy encoder: one conv1d (kernel 5, stride 3, no padding) over low-frame-rate fbank features."""

    model_type = "part_test_strided_encoder"
    input_size: int = 560
    hidden_size: int = 32


class StridedEncoderConfigWithoutLengths(StridedEncoderConfig):
    model_type = "part_test_strided_encoder_without_lengths"


class StridedEncoderWithoutLengths(PreTrainedModel):
    config_class = StridedEncoderConfigWithoutLengths
    main_input_name = "input_features"

    def __init__(self, config):
        super().__init__(config)
        self.conv = nn.Conv1d(config.input_size, config.hidden_size, kernel_size=5, stride=3)
        self.layers = nn.ModuleList()
        self.post_init()

    def forward(self, input_features, attention_mask=None, **kwargs):
        return BaseModelOutput(last_hidden_state=self.conv(input_features.transpose(1, 2)).transpose(1, 2))


class StridedEncoder(StridedEncoderWithoutLengths):
    config_class = StridedEncoderConfig

    def _get_feat_extract_output_lengths(self, input_lengths):
        return (input_lengths - 5) // 3 + 1  # not a ceil division: a stride alone would miscount


for _config_class, _model_class in ((StridedEncoderConfig, StridedEncoder),
                                    (StridedEncoderConfigWithoutLengths, StridedEncoderWithoutLengths)):
    AutoConfig.register(_config_class.model_type, _config_class, exist_ok=True)
    AutoModel.register(_config_class, _model_class, exist_ok=True)


def _strided_part(config_class, tokenizer):
    return PartConfig(
        audio_config=config_class(),
        adapter_config={"hidden_size": 32, "num_attention_heads": 2, "intermediate_size": 64},
        text_config={"model_type": "qwen2", "vocab_size": len(tokenizer), "hidden_size": 32, "intermediate_size": 64,
                     "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1},
        audio_token_id=tokenizer.convert_tokens_to_ids("<|AUDIO|>"),
        feature_frame_rate=100 / 6,
    )


def test_an_encoder_without_output_lengths_is_refused_naming_the_method(tiny_part):
    _, processor = tiny_part
    with pytest.raises(ValueError, match="_get_feat_extract_output_lengths"):
        _strided_part(StridedEncoderConfigWithoutLengths, processor.tokenizer)


def test_placeholder_count_uses_the_encoders_own_output_lengths(tiny_part):
    """Any encoder with `_get_feat_extract_output_lengths` works, and the processor counts what the model makes."""
    _, tiny_processor = tiny_part
    config = _strided_part(StridedEncoderConfig, tiny_processor.tokenizer)
    torch.manual_seed(0)
    model = PartForSpeechToText(config).eval()
    processor = PartProcessor.for_model(config, tiny_processor.tokenizer, tiny_processor.feature_extractor)
    miscounted_by_a_stride = 0
    for num_samples in (4240, 5000, 9999, 16000, 16001, 23999, 48000):  # 5 feature frames or more
        audio = make_audio(num_samples / 16000)[:num_samples]
        batch = processor(audio=audio, sampling_rate=16000, task="asr", source_language="en", target_text="hi")
        placeholders = int((batch["input_ids"] == processor.audio_token_id).sum())
        lengths = model.get_audio_features(batch["input_features"], batch["feature_attention_mask"]).audio_token_lengths
        assert placeholders == processor.audio_placeholder_count(num_samples) == int(lengths[0])
        assert torch.isfinite(model(**batch).loss)
        frames = int(batch["feature_attention_mask"].sum())
        by_stride = audio_token_lengths(frames, config.encoder_stride, config.adapter_config.kernel_size,
                                        config.adapter_config.downsample_stride)
        miscounted_by_a_stride += by_stride != placeholders
    assert miscounted_by_a_stride  # the encoder's own function, not its stride, decides


# ------------------------------------------------------------------ the request API (transformers speech-LLM style)
def test_transcription_request_takes_paths_dicts_and_batches_and_feeds_generate(tiny_part, tmp_path):
    model, processor = tiny_part
    clip = make_audio(1.0)
    path = tmp_path / "clip.wav"
    sf.write(path, clip, 16000, subtype="FLOAT")
    single = processor.apply_transcription_request(str(path), language="en")
    as_dict = processor.apply_transcription_request({"array": clip, "sampling_rate": 16000}, language="en")
    as_array = processor.apply_transcription_request(clip, language="en", sampling_rate=16000)
    for other in (as_dict, as_array):
        assert torch.equal(other["input_ids"], single["input_ids"])
        torch.testing.assert_close(other["input_features"], single["input_features"], atol=2e-3, rtol=1e-3)
    assert torch.equal(single["input_ids"], processor(audio=clip, sampling_rate=16000, task="asr",
                                                      source_language="en")["input_ids"])
    assert "labels" not in single
    batch = processor.apply_transcription_request([clip, make_audio(1.6, 1)], language=["en", "de"],
                                                  sampling_rate=16000, target_language=[None, "en"])
    assert (batch["attention_mask"][:, -1] == 1).all()  # generation prompts are left-padded
    prompts = [processor.tokenizer.decode(row) for row in batch["input_ids"]]
    assert "Transcribe the English speech into English text." in prompts[0]
    assert "Translate the German speech into English text." in prompts[1]  # target_language != language: s2tt
    same = processor.apply_transcription_request(clip, language="de", sampling_rate=16000, target_language="de")
    assert "Transcribe the German speech" in processor.tokenizer.decode(same["input_ids"][0])
    with torch.no_grad():
        generated = model.generate(**batch, max_new_tokens=3, do_sample=False)
    assert generated.shape == (2, 3)


def test_requests_with_output_labels_are_the_training_path(tiny_part):
    _, processor = tiny_part
    clips = [make_audio(1.0), make_audio(1.4, 1)]
    request = processor.apply_transcription_request(clips, language="de", sampling_rate=16000, target_language="en",
                                                    target_text=["two", "three cats"], output_labels=True)
    called = processor(audio=clips, sampling_rate=16000, task="s2tt", source_language="de", target_language="en",
                       target_text=["two", "three cats"], output_labels=True)
    for key in ("input_ids", "attention_mask", "labels", "input_features"):
        assert torch.equal(request[key], called[key])
    assert (request["attention_mask"][:, 0] == 1).all()  # right padding
    text = processor.apply_text_translation_request(["zwei Hunde", "drei"], source_language="de",
                                                    target_language="en", target_text=["two dogs", "three"],
                                                    output_labels=True)
    assert "input_features" not in text
    prompt_length = int((text["labels"][0] == -100).sum())
    prompt = processor.apply_text_translation_request("zwei Hunde", source_language="de", target_language="en")
    assert text["input_ids"][0, :prompt_length].tolist() == prompt["input_ids"][0].tolist()
    assert processor.tokenizer.decode(prompt["input_ids"][0]).strip().endswith(
        "Translate the German text into English text: zwei Hunde"
    )
    inferred = processor(text="zwei Hunde", source_language="de", target_language="en")  # no audio: task 'mt'
    assert torch.equal(inferred["input_ids"], prompt["input_ids"])


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"source_text": "Hund", "task": "mt", "target_language": "en", "audio": None}, TypeError, "text="),
        ({"text": "hi"}, ValueError, "target_text="),  # the old meaning of text= (the target) is refused
        ({"output_labels": True}, ValueError, "needs target_text"),
        ({"target_text": "hi", "output_labels": False}, ValueError, "output_labels=False"),
    ],
)
def test_old_style_calls_fail_naming_the_new_call(tiny_part, kwargs, error, message):
    _, processor = tiny_part
    call = {"audio": make_audio(1.0), "sampling_rate": 16000, "task": "asr", "source_language": "en"}
    call.update(kwargs)
    with pytest.raises(error, match=message):
        processor(**call)


def test_for_model_picks_the_front_end_of_the_encoder(tiny_whisper_part, tiny_part):
    for (model, processor), front_end in ((tiny_whisper_part, "whisper"), (tiny_part, "sensevoice")):
        built = PartProcessor.for_model(model.config, processor.tokenizer)
        assert built.feature_extractor.front_end == front_end
        assert built.feature_extractor.feature_size == model.config.audio_config.num_mel_bins
        assert built.audio_placeholder_count(16000) == processor.audio_placeholder_count(16000)
