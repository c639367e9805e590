"""The path real users take, on hub-shaped checkpoints (tests/hub_fixtures.py): `from_pretrained_components` ->
the `part` preset through `PartTrainer` -> final save -> `AutoModelForSpeechSeq2Seq` / `AutoProcessor` loading ->
`generate`, which must give the in-memory trained model's outputs. Each LLM family and each encoder once."""

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForSpeechSeq2Seq, AutoProcessor, AutoTokenizer

from modeling_part import PartForSpeechToText, PartProcessor

from conftest import make_audio
from part_fixtures import tiny_components

TINY_ADAPTER = {"hidden_size": 32, "num_attention_heads": 2, "intermediate_size": 64}
COMBINATIONS = [
    ("qwen2.5-0.5b-instruct", "whisper-large-v3"),  # tied, padded, instruct (eos <|im_end|>), 128-mel Whisper
    ("qwen2.5-7b", "fun-asr-nano"),  # untied lm_head, larger padding, base (eos <|endoftext|>)
    ("qwen3-0.6b", "fun-asr-nano"),  # Qwen3: explicit head_dim, q/k norms, tied
]


def train_part_preset(model, processor, output_dir, max_steps: int = 4):
    """The `part` preset (4 stages, one step each at max_steps=4) through PartTrainer, with its final save."""
    from trainers import PartTrainer, PartTrainingArguments

    args = PartTrainingArguments(
        output_dir=str(output_dir), schedule="part", max_steps=max_steps, per_device_train_batch_size=2,
        logging_steps=1, save_strategy="no", report_to=[], seed=0, dataloader_num_workers=0, disable_tqdm=True,
        use_cpu=True, lora_r=2, lora_dropout=0.0, mt_weight=1.0,
    )
    trainer = PartTrainer(model=model, args=args, train_components=tiny_components(4), processor=processor)
    trainer.train()
    return trainer


def generation_prompts(processor):
    """A mixed batch (two clips of different lengths, ASR and S2TT) and a text-only MT prompt."""
    audio = processor.apply_transcription_request(
        [make_audio(0.8, seed=11), make_audio(1.3, seed=12)], language=["en", "de"], sampling_rate=16000,
        target_language=[None, "en"],
    )
    text = processor.apply_text_translation_request("zwei drei", source_language="de", target_language="en")
    return [audio, text]


@pytest.mark.slow
@pytest.mark.parametrize("llm_name, encoder_name", COMBINATIONS)
def test_part_run_from_hub_components_saves_a_model_that_generates_the_same(
    hub_checkpoints, tmp_path, llm_name, encoder_name
):
    llm_folder, encoder_folder = hub_checkpoints[llm_name], hub_checkpoints[encoder_name]
    hub_config = json.loads((llm_folder / "config.json").read_text())
    torch.manual_seed(0)
    model, tokenizer = PartForSpeechToText.from_pretrained_components(
        encoder_folder, llm_folder, adapter_config=TINY_ADAPTER, return_tokenizer=True
    )
    original = AutoTokenizer.from_pretrained(llm_folder)
    assert tokenizer.eos_token == original.eos_token == ("<|endoftext|>" if llm_name == "qwen2.5-7b" else "<|im_end|>")
    assert model.generation_config.eos_token_id == tokenizer.eos_token_id == hub_config["eos_token_id"]
    assert {p.dtype for p in model.parameters()} == {torch.float32}  # bfloat16 / float16 on disk
    processor = PartProcessor.for_model(model.config, tokenizer)
    assert processor.use_chat_template and processor.feature_extractor.feature_size == (
        128 if encoder_name == "whisper-large-v3" else 80
    )
    prompt = tokenizer.decode(processor(task="mt", source_language="de", target_language="en",
                                        text="eins")["input_ids"][0])
    assert prompt.startswith("<|im_start|>") and prompt.endswith("<|im_start|>assistant\n")  # the chat template

    trainer = train_part_preset(model, processor, tmp_path)
    summary = json.loads((tmp_path / "training_summary.json").read_text())
    assert [s["global_step"] for s in summary["stages"]] == [1, 1, 1, 1]
    model = trainer.model.eval()
    assert model.has_lora  # in memory the LoRA stays unmerged; the saved model has it merged

    weights = load_file(str(tmp_path / "model.safetensors"))
    rows = hub_config["vocab_size"]
    assert weights["language_model.model.embed_tokens.weight"].shape[0] == rows  # padded vocabulary kept
    assert ("language_model.lm_head.weight" in weights) == (not hub_config["tie_word_embeddings"])
    assert not any(".lora_" in k for k in weights)
    audio_rows = weights["language_model.model.embed_tokens.weight"][tokenizer.convert_tokens_to_ids(
        ["<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>"])]
    assert audio_rows.abs().sum(-1).gt(0).all()  # mean-initialised, not the zero padding rows

    loaded = AutoModelForSpeechSeq2Seq.from_pretrained(tmp_path).eval()
    loaded_processor = AutoProcessor.from_pretrained(tmp_path)
    assert type(loaded) is PartForSpeechToText and not loaded.has_lora
    assert loaded.config.text_config.model_type == hub_config["model_type"]
    assert loaded.config.audio_config.model_type == model.config.audio_config.model_type
    for batch, reloaded in zip(generation_prompts(processor), generation_prompts(loaded_processor)):
        assert batch.keys() == reloaded.keys()
        assert all(torch.equal(batch[k], reloaded[k]) for k in batch)  # tokenizer, template, front end round-trip
        expected = model.generate(**batch, max_new_tokens=6, do_sample=False)
        generated = loaded.generate(**reloaded, max_new_tokens=6, do_sample=False)
        assert torch.equal(generated, expected), (generated.tolist(), expected.tolist())
        with torch.no_grad():
            torch.testing.assert_close(loaded(**reloaded).logits, model(**batch).logits, atol=1e-4, rtol=1e-4)
