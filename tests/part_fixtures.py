"""Tiny multi-task corpora and trainer set-up shared by the trainer tests (and the SIGKILL subprocess), and the
two-rank launcher of the multi-process tests."""

import glob
import io
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile

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


def tiny_trainer(output_dir, schedule="part", max_steps=8, callbacks=(), seed=0, trainer_kwargs=None, **arg_overrides):
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
        model=model, args=args, train_components=tiny_components(), processor=processor, callbacks=list(callbacks),
        **(trainer_kwargs or {}),
    )


GROUP_PREFIXES = {
    "adapter": "adapter.", "encoder": "audio_tower.", "encoder_last_k": "audio_tower.", "llm_lora": ".lora_"
}


def assert_trained_groups_moved(record: dict, theirs: dict, stage: dict, where: str) -> None:
    """A stage's record (parameter hashes at its start and end, the trained names), against the other rank's: the
    same parameters trained, every trained group moved, and no frozen parameter did."""
    trained = set(record["trained"])
    assert trained == set(theirs["trained"])
    for group in [*stage["trainable"], *(g for gs in stage["unfreeze_at"].values() for g in gs)]:
        names = {n for n in trained if GROUP_PREFIXES[group] in n}
        assert names, f"{where}: nothing of {group} trained"
        still = sorted(n for n in names if record["end"][n] == record["start"][n])
        assert not still, f"{where}: trained {group} parameters did not move: {still[:3]}"
    moved_frozen = sorted(n for n in record["end"] if n not in trained and record["end"][n] != record["start"][n])
    assert not moved_frozen, f"{where}: frozen parameters moved: {moved_frozen[:3]}"


def count_batches(trainer) -> dict[str, int]:
    """Counts the batches `trainer` trains on, and how many of them are text-only, in the returned (live) dict."""
    batches = {"all": 0, "text_only": 0}
    original_compute_loss = trainer.compute_loss

    def compute_loss(model, inputs, *args, **kwargs):
        batches["all"] += 1
        batches["text_only"] += int("input_features" not in inputs)
        return original_compute_loss(model, inputs, *args, **kwargs)

    trainer.compute_loss = compute_loss
    return batches


TEARDOWN_LINE = "gloo threads after teardown:"


def report_gloo_threads() -> None:
    """A multi-rank test script's last line, after its run ended with `end_distributed` and its objects went out of
    scope: this rank's count of gloo threads still running (`TEARDOWN_LINE`), which `run_two_ranks` requires to be 0
    on both ranks (one left when the interpreter exits can abort a finished run, trainers/teardown.py)."""
    import gc

    from trainers.teardown import gloo_threads

    gc.collect()
    print(f"{TEARDOWN_LINE} {gloo_threads()}", flush=True)


def run_two_ranks(script: str, *arguments: str, timeout: float, env: dict[str, str] | None = None) -> tuple[str, str]:
    """Runs `script` (a path, or a file name in tests/) on two CPU ranks (`python -m torch.distributed.run --standalone
    --nproc_per_node 2`, one OpenMP thread each) from the repository root; returns the launcher's (stdout, stderr),
    where every rank's lines appear with a `[default<rank>]:` prefix.

    Each rank's stdout and stderr are also kept in files of their own (torchrun's `--log-dir` with `--tee 3`), and
    when the run fails, every rank's output is shown, rank by rank, so the failure says which rank failed after
    which line. Fails the calling test when the launcher exits with an error, or when it runs longer than `timeout`
    seconds (ranks out of step in a collective): then the launcher is asked to stop its ranks (SIGTERM; they run in
    sessions of their own, so killing the launcher's process group would orphan them, still holding the output
    pipes), and killed if it does not. Fails it too unless both ranks end with `report_gloo_threads` and report no
    gloo thread left."""
    import pytest

    here = os.path.dirname(os.path.abspath(__file__))
    log_dir = tempfile.mkdtemp(prefix="torchrun_logs_")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "--log-dir", log_dir, "--tee", "3", os.path.join(here, script), *arguments]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", **(env or {})}
    process = subprocess.Popen(command, cwd=os.path.dirname(here), env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGTERM)  # torchrun stops its ranks (SIGTERM, then SIGKILL after a grace period)
        try:
            stdout, stderr = process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            stdout, stderr = "", "(no output: the launcher did not stop)"
        logs = _launcher_and_rank_logs(stderr, log_dir)
        pytest.fail(f"{script} did not finish in {timeout}s (ranks out of step?)\n{logs}")
    if process.returncode != 0:
        pytest.fail(f"torchrun exited with {process.returncode} ({script})\n{_launcher_and_rank_logs(stderr, log_dir)}")
    if stdout.count(f"{TEARDOWN_LINE} 0") != 2:
        pytest.fail(f"{script}: not both ranks ended with no gloo thread left (part_fixtures.report_gloo_threads)\n"
                    f"{_launcher_and_rank_logs(stderr, log_dir)}")
    shutil.rmtree(log_dir, ignore_errors=True)
    return stdout, stderr


def _launcher_and_rank_logs(launcher_stderr: str, log_dir: str, tail: int = 6000) -> str:
    """The launcher's own stderr lines (its failure summary names the failed rank and its exit code), then each
    rank's stderr and stdout from torchrun's log directory, the last `tail` characters of each. The directory is
    kept for a closer look."""
    own = "\n".join(line for line in launcher_stderr.splitlines() if not re.match(r"\[default\d+\]:", line))
    sections = [f"launcher stderr, without the ranks' lines (tail):\n{own[-tail:]}"]
    logs = sorted(glob.glob(os.path.join(log_dir, "*", "attempt_*", "*", "std*.log")))
    for path in logs:
        rank = os.path.basename(os.path.dirname(path))
        with open(path, errors="replace") as f:
            text = f.read()
        sections.append(f"rank {rank} {os.path.basename(path)} (tail):\n{text[-tail:] or '(empty)'}")
    if not logs:
        sections.append(f"(no rank logs under {log_dir})")
    sections.append(f"(all logs: {log_dir})")
    return "\n\n".join(sections)
