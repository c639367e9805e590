"""Assembly from saved pretrained parts, Auto-class and trust_remote_code loading in fresh processes, the pipeline."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import soundfile as sf
import torch
from torch import nn
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    FunAsrNanoEncoderConfig,
    Qwen2Config,
    Qwen2ForCausalLM,
    WhisperConfig,
    WhisperForConditionalGeneration,
    pipeline,
)
from transformers.models.fun_asr_nano.modeling_fun_asr_nano import FunAsrNanoEncoder

from modeling_part import PartForSpeechToText, PartProcessor
from modeling_part.modeling_part import embedding_rows, fit_embeddings_to_tokenizer, load_pretrained_audio_encoder
from modeling_part.tiny import build_tokenizer

from conftest import make_audio


@pytest.fixture(scope="module")
def saved_parts(tmp_path_factory):
    """Small pretrained parts saved as standard checkpoints: two encoders, an LLM and its (audio-less) tokenizer."""
    root = tmp_path_factory.mktemp("parts")
    torch.manual_seed(0)
    FunAsrNanoEncoder(
        FunAsrNanoEncoderConfig(hidden_size=32, num_attention_heads=2, intermediate_size=64, num_hidden_layers=3,
                                num_timestamp_prediction_layers=0)
    ).save_pretrained(root / "sensevoice")
    WhisperForConditionalGeneration(
        WhisperConfig(d_model=32, encoder_layers=2, decoder_layers=1, encoder_attention_heads=2,
                      decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, vocab_size=120,
                      pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1)
    ).save_pretrained(root / "whisper")
    tokenizer = build_tokenizer(vocab_size=300)
    plain = type(tokenizer)(tokenizer_object=_without_audio_tokens(tokenizer), eos_token="<|endoftext|>")
    assert sorted(plain.get_vocab().values()) == list(range(len(plain)))
    plain.save_pretrained(root / "llm")
    Qwen2ForCausalLM(
        Qwen2Config(vocab_size=len(plain), hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                    num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True)
    ).save_pretrained(root / "llm")
    return root


def _without_audio_tokens(tokenizer):
    from tokenizers import Tokenizer

    state = json.loads(tokenizer.backend_tokenizer.to_str())
    state["added_tokens"] = [t for t in state["added_tokens"] if "audio" not in t["content"].lower()]
    for token in ("<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>"):
        state["model"]["vocab"].pop(token, None)
    # contiguous ids, as a real tokenizer has (BPE merges name tokens, not ids)
    renumbered = {token: i for i, token in enumerate(sorted(state["model"]["vocab"], key=state["model"]["vocab"].get))}
    state["model"]["vocab"] = renumbered
    for added in state["added_tokens"]:
        added["id"] = renumbered[added["content"]]
    return Tokenizer.from_str(json.dumps(state))


@pytest.mark.parametrize("encoder", ["sensevoice", "whisper"])
def test_from_pretrained_components(saved_parts, encoder):
    llm = Qwen2ForCausalLM.from_pretrained(saved_parts / "llm")
    model, tokenizer = PartForSpeechToText.from_pretrained_components(
        audio_encoder=saved_parts / encoder, llm=saved_parts / "llm", return_tokenizer=True
    )
    assert "<|AUDIO|>" in tokenizer.get_vocab()
    assert model.config.audio_token_id == tokenizer.convert_tokens_to_ids("<|AUDIO|>")
    assert model.get_input_embeddings().weight.shape[0] >= len(tokenizer)
    # The LLM keeps its pretrained weights; only the new token rows are added, set to the pretrained rows' mean.
    old_vocab = llm.get_input_embeddings().weight.shape[0]
    torch.testing.assert_close(model.get_input_embeddings().weight[:old_vocab], llm.get_input_embeddings().weight)
    new_rows = model.get_input_embeddings().weight[old_vocab:]
    assert new_rows.shape[0] == 3
    mean = llm.get_input_embeddings().weight.mean(0).expand_as(new_rows)
    torch.testing.assert_close(new_rows, mean, atol=1e-5, rtol=0)
    torch.testing.assert_close(model.language_model.model.layers[1].mlp.up_proj.weight, llm.model.layers[1].mlp.up_proj.weight)
    if encoder == "whisper":
        reference = WhisperForConditionalGeneration.from_pretrained(saved_parts / "whisper").model.encoder
        assert model.config.audio_config.model_type == "whisper" and model.config.audio_token_rate == 12.5
    else:
        reference = FunAsrNanoEncoder.from_pretrained(saved_parts / "sensevoice")
    for (name, p), (_, q) in zip(model.audio_tower.named_parameters(), reference.named_parameters()):
        torch.testing.assert_close(p, q, msg=name)
    assert not any(p.is_meta for p in model.parameters())

    processor = PartProcessor.for_model(model.config, tokenizer)
    batch = processor(audio=make_audio(1.0), sampling_rate=16000, task="asr", source_language="en", target_text="hi")
    assert torch.isfinite(model(**batch).loss)


AUDIO_TOKENS = ["<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>"]


@pytest.mark.parametrize("llm_name", ["qwen2.5-0.5b-instruct", "qwen2.5-1.5b", "qwen2.5-7b", "qwen3-0.6b"])
def test_audio_tokens_on_a_padded_vocabulary_get_mean_initialised_rows(hub_checkpoints, llm_name):
    """Qwen pads its vocabulary (151,936 rows for 151,665 tokens): the audio tokens land on padding rows, which
    pretraining never trained (zero here). Their rows (input, and output when untied) must be set from the mean of
    the tokenizer's pretrained tokens' rows, not the padding; nothing is resized, least of all shrunk."""
    folder = hub_checkpoints[llm_name]
    pretrained = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    original = AutoTokenizer.from_pretrained(folder)
    trained_ids = sorted(original.get_vocab().values())
    rows = pretrained.config.vocab_size
    assert trained_ids == list(range(len(original))) and rows >= len(original) + 3 and rows % 128 == 0

    model, tokenizer = PartForSpeechToText.from_pretrained_components(
        hub_checkpoints["fun-asr-nano"], folder, return_tokenizer=True
    )
    audio_ids = tokenizer.convert_tokens_to_ids(AUDIO_TOKENS)
    assert audio_ids == [len(original), len(original) + 1, len(original) + 2]
    assert max(tokenizer.get_vocab().values()) < rows and len(tokenizer) <= rows
    llm = model.language_model
    assert llm.get_input_embeddings().weight.shape[0] == rows == llm.config.vocab_size
    assert model.config.text_config.vocab_size == rows and model.config.audio_token_id == audio_ids[0]
    tied = pretrained.config.tie_word_embeddings
    assert (llm.get_output_embeddings().weight is llm.get_input_embeddings().weight) == tied
    pairs = [(llm.get_input_embeddings().weight, pretrained.get_input_embeddings().weight)]
    if not tied:
        pairs.append((llm.get_output_embeddings().weight, pretrained.get_output_embeddings().weight))
    others = [i for i in range(rows) if i not in audio_ids]
    for new, old in pairs:
        assert old[audio_ids].abs().max() == 0  # padding rows, as the fixture left them
        trained_mean = old[trained_ids].mean(0)
        # a mean over all rows (padding included) is pulled towards zero, and would fail the check below
        assert not torch.allclose(old.mean(0), trained_mean, atol=1e-5, rtol=0)
        assert new[audio_ids].abs().min(-1).values.gt(0).all(), "audio token rows are still zero"
        torch.testing.assert_close(new[audio_ids], trained_mean.expand(3, -1), atol=1e-5, rtol=0)
        assert torch.equal(new[others], old[others])  # every pretrained (and other padding) row kept


class _PartitionedLLM:
    """An LLM whose embedding is ZeRO-3 partitioned (`shape` (0,), full `ds_shape`); records resizes."""

    def __init__(self, rows: int):
        weight = nn.Parameter(torch.empty(0))
        weight.ds_shape, weight.ds_id = torch.Size([rows, 8]), 0
        self.embeddings = nn.Module()
        self.embeddings.weight = weight
        self.resized_to = []

    def get_input_embeddings(self):
        return self.embeddings

    def resize_token_embeddings(self, num_tokens, **kwargs):
        self.resized_to.append(num_tokens)
        raise InterruptedError  # stop before the row initialisation, which would need DeepSpeed


def test_vocabulary_rows_of_a_zero3_partitioned_embedding_come_from_ds_shape():
    weight = _PartitionedLLM(384).get_input_embeddings().weight
    assert weight.shape[0] == 0 and embedding_rows(weight) == 384
    assert embedding_rows(torch.zeros(7, 3)) == 7
    padded = _PartitionedLLM(384)
    fit_embeddings_to_tokenizer(padded, 365, trained_ids=list(range(362)), new_ids=[])
    assert padded.resized_to == []  # 384 rows hold 365 tokens: no resize, in particular no shrink to 365
    small = _PartitionedLLM(300)
    with pytest.raises(InterruptedError):
        fit_embeddings_to_tokenizer(small, 365, trained_ids=list(range(297)), new_ids=[297, 298, 299])
    assert small.resized_to == [365]


def test_hub_checkpoints_of_different_dtypes_make_one_model(hub_checkpoints):
    """On the hub Whisper-large-v3 is float16 and Qwen bfloat16, and transformers 5 loads each in its own dtype:
    the parts are loaded in one dtype (float32 unless asked), and mixed parts passed in still run."""
    model, tokenizer = PartForSpeechToText.from_pretrained_components(
        hub_checkpoints["whisper-large-v3"], hub_checkpoints["qwen2.5-0.5b-instruct"], return_tokenizer=True,
        adapter_config={"hidden_size": 32, "num_attention_heads": 2, "intermediate_size": 64},
    )
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    bf16_encoder = load_pretrained_audio_encoder(hub_checkpoints["fun-asr-nano"], dtype=torch.bfloat16)
    mixed, tokenizer = PartForSpeechToText.from_pretrained_components(
        bf16_encoder, hub_checkpoints["qwen3-0.6b"], return_tokenizer=True,
        adapter_config={"hidden_size": 32, "num_attention_heads": 2, "intermediate_size": 64},
    )
    assert mixed.audio_tower.dtype == torch.bfloat16 and mixed.language_model.dtype == torch.float32
    # the audio tower taken out of the full Fun-ASR-Nano model still says where it came from (the card's base_model)
    assert mixed.config.audio_config._name_or_path == str(hub_checkpoints["fun-asr-nano"])
    assert model.config.audio_config._name_or_path == str(hub_checkpoints["whisper-large-v3"])
    processor = PartProcessor.for_model(mixed.config, tokenizer)
    batch = processor(audio=make_audio(1.0), sampling_rate=16000, task="asr", source_language="en", target_text="one")
    assert torch.isfinite(mixed(**batch).loss)


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    from modeling_part.tiny import build_tiny_part

    folder = tmp_path_factory.mktemp("saved_model")
    torch.manual_seed(0)
    model, processor = build_tiny_part("sensevoice")
    model.add_lora(r=2, lora_dropout=0.0)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    audio = make_audio(1.1)
    sf.write(folder / "clip.wav", audio, 16000, subtype="FLOAT")
    batch = processor(audio=audio, sampling_rate=16000, task="asr", source_language="en", target_text="a b")
    torch.save({"batch": dict(batch), "loss": model.eval()(**batch).loss}, folder / "expected.pt")
    return folder


_LOAD_AND_COMPARE = """
import sys, torch
from transformers import AutoModelForSpeechSeq2Seq, AutoProcessor
folder = sys.argv[1]
expected = torch.load(folder + "/expected.pt", weights_only=False)
model = AutoModelForSpeechSeq2Seq.from_pretrained(folder, **KWARGS).eval()
processor = AutoProcessor.from_pretrained(folder, **KWARGS)
import soundfile as sf
audio, rate = sf.read(folder + "/clip.wav", dtype="float32")
batch = processor(audio=audio, sampling_rate=rate, task="asr", source_language="en", target_text="a b")
assert torch.equal(batch["input_ids"], expected["batch"]["input_ids"])
torch.testing.assert_close(model(**batch).loss, expected["loss"])
print("LOADED", type(model).__module__, "imported package:", "modeling_part" in sys.modules)
"""


def _run_fresh(code, folder, tmp_path):
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", code, str(folder)], capture_output=True, text=True, env=env,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_auto_class_loading_in_fresh_process(saved_model, tmp_path):
    code = "import modeling_part\nKWARGS = {}\n" + _LOAD_AND_COMPARE
    assert "LOADED modeling_part.modeling_part imported package: True" in _run_fresh(code, saved_model, tmp_path)


def test_trust_remote_code_loading_without_the_package(saved_model, tmp_path):
    assert {"modeling_part.py", "configuration_part.py", "processing_part.py", "feature_extraction_part.py"} <= {
        p.name for p in saved_model.iterdir()
    }
    blocker = textwrap.dedent(
        """
        import importlib.abc, sys
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("modeling_part", "trainers"):
                    raise ImportError("the PART package is blocked in this process")
        sys.meta_path.insert(0, Block())
        KWARGS = {"trust_remote_code": True}
        """
    )
    output = _run_fresh(blocker + _LOAD_AND_COMPARE, saved_model, tmp_path)
    assert "LOADED transformers_modules" in output and "imported package: False" in output


def test_asr_pipeline_on_saved_folder(saved_model):
    model = PartForSpeechToText.from_pretrained(saved_model).eval()
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(saved_model)
    batch = processor(audio=str(saved_model / "clip.wav"), task="asr", source_language="en")
    expected = processor.batch_decode(model.generate(**batch, max_new_tokens=6))[0]

    asr = pipeline("automatic-speech-recognition", model=str(saved_model))
    assert asr(str(saved_model / "clip.wav"), language="en", max_new_tokens=6)["text"] == expected
    audio, rate = sf.read(saved_model / "clip.wav", dtype="float32")
    assert asr({"raw": audio, "sampling_rate": rate}, language="en", max_new_tokens=6)["text"] == expected
    translation = asr(str(saved_model / "clip.wav"), language="de", task="s2tt", target_language="en", max_new_tokens=6)
    assert isinstance(translation["text"], str)
    with pytest.raises(ValueError, match="language="):
        asr(str(saved_model / "clip.wav"))


def _tiny_whisper_pipeline_parts():
    """A randomly initialised Whisper with a Whisper tokenizer and feature extractor, all built offline; its
    `generate` records the keyword arguments the pipeline passes and returns fixed tokens."""
    from transformers import WhisperFeatureExtractor, WhisperTokenizer

    specials = ["<|endoftext|>", "<|startoftranscript|>", "<|en|>", "<|fr|>", "<|translate|>", "<|transcribe|>",
                "<|notimestamps|>"]
    vocab = {token: index for index, token in enumerate([*"abcdefghijklmnopqrstuvwxyz", "Ġ", *specials])}
    tokenizer = WhisperTokenizer(vocab=vocab, merges=[], additional_special_tokens=specials[1:])
    torch.manual_seed(0)
    model = WhisperForConditionalGeneration(
        WhisperConfig(d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                      decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, vocab_size=len(vocab),
                      max_target_positions=32, pad_token_id=vocab["<|endoftext|>"], bos_token_id=vocab["<|endoftext|>"],
                      eos_token_id=vocab["<|endoftext|>"], decoder_start_token_id=vocab["<|startoftranscript|>"])
    ).eval()
    calls = []

    def recording_generate(input_features=None, attention_mask=None, **kwargs):
        calls.append(kwargs)
        return torch.tensor([[vocab["<|startoftranscript|>"], vocab["h"], vocab["i"], vocab["<|endoftext|>"]]])

    model.generate = recording_generate
    return model, tokenizer, WhisperFeatureExtractor(), calls


def test_asr_pipeline_of_other_models_is_transformers_own():
    """With modeling_part imported, a Whisper ASR pipeline behaves exactly as transformers' own: language, task and
    sampling_rate reach the same preprocess / forward / postprocess parameters and `generate`."""
    import modeling_part  # noqa: F401  (registers the PART pipeline; imported above too)
    from transformers.pipelines.automatic_speech_recognition import AutomaticSpeechRecognitionPipeline

    model, tokenizer, feature_extractor, calls = _tiny_whisper_pipeline_parts()
    ours = pipeline("automatic-speech-recognition", model=model, tokenizer=tokenizer,
                    feature_extractor=feature_extractor)
    plain = AutomaticSpeechRecognitionPipeline(model=model, tokenizer=tokenizer, feature_extractor=feature_extractor)
    assert type(ours) is type(plain)  # transformers' own class, built from the same arguments
    call = {"language": "fr", "task": "translate", "sampling_rate": 16000, "num_beams": 2}
    assert ours._sanitize_parameters(**call) == plain._sanitize_parameters(**call)
    assert ours._sanitize_parameters(**call)[1]["language"] == "fr"

    audio = make_audio(1.0)
    outputs = [asr(audio, **call) for asr in (ours, plain)]
    assert outputs[0] == outputs[1]
    assert calls[0] == calls[1] and (calls[0]["language"], calls[0]["task"]) == ("fr", "translate")
