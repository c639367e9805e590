"""Tiny multi-task corpora and trainer set-up shared by the trainer tests (and the SIGKILL subprocess)."""

import io

import numpy as np
import soundfile as sf
from datasets import Audio, Dataset

from conftest import make_audio

WORDS = {"en": ["one", "two", "three", "four"], "de": ["eins", "zwei", "drei", "vier"]}


def wav_bytes(audio: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, audio, 16000, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def tiny_components(num_samples: int = 8):
    """asr/en, asr/de, s2tt/de-en and mt/de-en components over a handful of synthetic clips."""
    from trainers.data import MixtureComponent

    def speech(language, target_words, seed):
        rows = {"audio": [], "text": []}
        for i in range(num_samples):
            rows["audio"].append({"path": None, "bytes": wav_bytes(make_audio(0.6 + 0.1 * (i % 4), seed=seed + i))})
            rows["text"].append(target_words[i % 4])
        return Dataset.from_dict(rows).cast_column("audio", Audio(sampling_rate=16000, decode=False))

    mt = Dataset.from_dict({"source_text": WORDS["de"] * 2, "text": WORDS["en"] * 2})
    return [
        MixtureComponent("asr_en", speech("en", WORDS["en"], 0), "asr", "en", "en"),
        MixtureComponent("asr_de", speech("de", WORDS["de"], 100), "asr", "de", "de"),
        MixtureComponent("s2tt_de_en", speech("de", WORDS["en"], 100), "s2tt", "de", "en"),
        MixtureComponent("mt_de_en", mt, "mt", "de", "en"),
    ]


def tiny_trainer(output_dir, schedule="part", max_steps=8, callbacks=(), seed=0, **arg_overrides):
    import torch

    from modeling_part.tiny import build_tiny_part
    from trainers import PartTrainer, PartTrainingArguments

    torch.manual_seed(seed)
    model, processor = build_tiny_part("sensevoice", encoder_layers=3)
    settings = dict(
        output_dir=str(output_dir),
        schedule=schedule,
        max_steps=max_steps,
        per_device_train_batch_size=2,
        logging_steps=1,
        save_steps=2,
        save_strategy="steps",
        report_to=[],
        seed=seed,
        dataloader_num_workers=0,
        disable_tqdm=True,
        use_cpu=True,
        lora_r=2,
        lora_dropout=0.0,
    )
    settings.update(arg_overrides)
    args = PartTrainingArguments(**settings)
    return PartTrainer(
        model=model, args=args, train_components=tiny_components(), processor=processor, callbacks=list(callbacks)
    )
