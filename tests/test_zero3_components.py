"""`from_pretrained_components` under DeepSpeed ZeRO-3 on hub-shaped checkpoints (Qwen2.5-7B style: untied, padded
vocabulary; Fun-ASR-Nano encoder): two CPU ranks (gloo, `torch.distributed.run`) load the parts inside
`zero.Init`, run the `part` preset and save (`tests/zero3_components_run.py`).

Checked: the parts were partitioned when the audio tokens were added; the padded vocabulary was neither shrunk nor
grown although every rank's `weight.shape[0]` was 0; the consolidated checkpoint has exactly the keys and shapes
of a single-process model; the audio tokens' rows (input and output) hold the pretrained tokens' mean.
"""

import json
import os

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

pytest.importorskip("deepspeed")

from modeling_part import PartForSpeechToText  # noqa: E402
from part_fixtures import run_two_ranks  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
TIMEOUT = 360
LLM, ENCODER = "qwen2.5-7b", "fun-asr-nano"
AUDIO_TOKENS = ["<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>"]


@pytest.fixture(scope="module")
def zero3_components_run(hub_checkpoints, tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("zero3_components")
    run_two_ranks(
        "zero3_components_run.py", str(output_dir), os.path.join(REPO, "examples/configs/ds_zero3.json"),
        str(hub_checkpoints[ENCODER]), str(hub_checkpoints[LLM]), timeout=TIMEOUT, env={"DS_ACCELERATOR": "cpu"},
    )
    ranks = [json.loads((output_dir / f"components_rank{r}.json").read_text()) for r in range(2)]
    return output_dir, ranks


@pytest.mark.slow
def test_zero3_components_keep_the_padded_vocabulary_and_the_single_process_shapes(
    zero3_components_run, hub_checkpoints
):
    output_dir, ranks = zero3_components_run
    hub_config = json.loads((hub_checkpoints[LLM] / "config.json").read_text())
    rows = hub_config["vocab_size"]
    for rank in ranks:
        assert rank["embedding_ds_shape"][0] == rank["lm_head_ds_shape"][0] == rank["text_vocab_size"] == rows
        assert rank["tokens"] < rows
        assert rank["llm_partitioned"] and rank["embedding_partitioned"]  # loaded in zero.Init, never replaced
        assert rank["embedding_local_shape"][0] == 0  # what the old "resize when needed" test read

    single, _ = PartForSpeechToText.from_pretrained_components(
        hub_checkpoints[ENCODER], hub_checkpoints[LLM], return_tokenizer=True,
        adapter_config={"hidden_size": 32, "num_attention_heads": 2, "intermediate_size": 64},
    )
    expected = {name: tuple(tensor.shape) for name, tensor in single.state_dict().items()}
    saved = load_file(str(output_dir / "model.safetensors"))
    assert {name: tuple(tensor.shape) for name, tensor in saved.items()} == expected
    config = json.loads((output_dir / "config.json").read_text())
    assert config["text_config"]["vocab_size"] == rows


@pytest.mark.slow
def test_zero3_components_initialise_the_audio_rows_from_the_pretrained_tokens(zero3_components_run, hub_checkpoints):
    output_dir, _ = zero3_components_run
    pretrained = AutoModelForCausalLM.from_pretrained(hub_checkpoints[LLM], dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(output_dir)
    audio_ids = tokenizer.convert_tokens_to_ids(AUDIO_TOKENS)
    trained_ids = list(range(len(AutoTokenizer.from_pretrained(hub_checkpoints[LLM]))))
    assert max(audio_ids) < pretrained.config.vocab_size
    saved = load_file(str(output_dir / "model.safetensors"))
    others = [i for i in range(pretrained.config.vocab_size) if i not in audio_ids]
    for key, old in [
        ("language_model.model.embed_tokens.weight", pretrained.get_input_embeddings().weight.detach()),
        ("language_model.lm_head.weight", pretrained.get_output_embeddings().weight.detach()),
    ]:
        new = saved[key]
        assert old[audio_ids].abs().max() == 0  # padding rows in the pretrained LLM
        torch.testing.assert_close(new[audio_ids], old[trained_ids].mean(0).expand(3, -1), atol=1e-5, rtol=0)
        assert torch.equal(new[others], old[others])  # frozen through every stage, other padding rows included
