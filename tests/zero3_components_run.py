"""Builds a PART model from hub-shaped components under DeepSpeed ZeRO-3 and trains the `part` preset briefly on
two CPU ranks (gloo), for `tests/test_zero3_components.py`.

The training arguments (with the ZeRO-3 config) come first, as the transformers docs ask, so `from_pretrained`
builds the encoder and the LLM inside `deepspeed.zero.Init`: their parameters are partitioned from the start,
and `from_pretrained_components` sees an embedding whose `shape` is `(0,)`.

Launch: python -m torch.distributed.run --nproc_per_node 2 tests/zero3_components_run.py OUTPUT_DIR DEEPSPEED_CONFIG
        AUDIO_ENCODER LLM
Writes OUTPUT_DIR/components_rank<r>.json (what each rank saw of the embedding after from_pretrained_components)
and, as PartTrainer does, the consolidated final model in OUTPUT_DIR.
"""

import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]
os.environ.setdefault("DS_ACCELERATOR", "cpu")

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

MAX_STEPS = 4  # the part preset: one step per stage
TINY_ADAPTER = {"hidden_size": 32, "num_attention_heads": 2, "intermediate_size": 64}


def main():
    import deepspeed
    from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled

    from modeling_part import PartForSpeechToText
    from modeling_part import PartProcessor
    from part_fixtures import tiny_components
    from trainers import PartTrainer, PartTrainingArguments
    from trainers.teardown import end_distributed

    output_dir, deepspeed_config, audio_encoder, llm = sys.argv[1:5]
    args = PartTrainingArguments(
        output_dir=output_dir, schedule="part", max_steps=MAX_STEPS, per_device_train_batch_size=2,
        logging_steps=1, save_strategy="no", report_to=[], seed=0, dataloader_num_workers=0, disable_tqdm=True,
        use_cpu=True, lora_r=2, lora_dropout=0.0, deepspeed=deepspeed_config, ddp_backend="gloo",
    )
    assert is_deepspeed_zero3_enabled(), "the ZeRO-3 config must be active before the components load"
    args.device  # sets up the process group (gloo), as the example scripts' logging does
    deepspeed.init_distributed(dist_backend="gloo")  # accelerate does this on GPUs only; zero.Init needs it
    torch.manual_seed(0)
    started = time.time()
    model, tokenizer = PartForSpeechToText.from_pretrained_components(
        audio_encoder, llm, adapter_config=TINY_ADAPTER, return_tokenizer=True
    )
    embedding = model.get_input_embeddings().weight
    output = model.get_output_embeddings().weight
    record = {
        "rank": dist.get_rank(),
        "embedding_partitioned": hasattr(embedding, "ds_id"),
        "embedding_local_shape": list(embedding.shape),
        "embedding_ds_shape": list(getattr(embedding, "ds_shape", embedding.shape)),
        "lm_head_ds_shape": list(getattr(output, "ds_shape", output.shape)),
        "llm_partitioned": all(hasattr(p, "ds_id") for p in model.language_model.parameters()),
        "text_vocab_size": model.config.text_config.vocab_size,
        "tokens": len(tokenizer),
    }
    record["assembly_seconds"] = time.time() - started
    processor = PartProcessor.for_model(model.config, tokenizer)
    trainer = PartTrainer(model=model, args=args, train_components=tiny_components(4), processor=processor)
    started = time.time()
    trainer.train()
    record["training_seconds"] = time.time() - started
    with open(os.path.join(output_dir, f"components_rank{record['rank']}.json"), "w") as f:
        json.dump(record, f, indent=2)
    end_distributed(trainer)  # the DeepSpeed engine holds the group; release it, then destroy the group


if __name__ == "__main__":
    main()
    from part_fixtures import report_gloo_threads

    report_gloo_threads()  # the run's objects are gone: no gloo thread may be left
