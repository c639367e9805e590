"""Long-form transcription with a PART model, measured: recordings of 1, 3 and 10 minutes made of a corpus's test
utterances with pauses between them, transcribed with `pipeline(..., chunk_length_s=...)`.

Reports the long-form WER against the concatenated references beside the same model's per-utterance WER on the
same utterances, the peak memory of each length (each measured in a fresh process, so they cannot inflate each
other) and the time per audio second. With the demo's model and corpus (`make demo`):

    python examples/long_form.py --model outputs/demo/part --corpus outputs/demo/corpus --language en \
        --minutes 1 3 10 --output_dir outputs/long_form
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import soundfile  # noqa: E402

RATE = 16000


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="A saved PART model folder (with its processor).")
    parser.add_argument("--corpus", help="A `datasets` folder with a test split (the demo's corpus).")
    parser.add_argument("--split", default="test")
    parser.add_argument("--language", default="en", help="Language of the utterances (ISO 639 code).")
    parser.add_argument("--target_language", default=None, help="Translate into this language (task s2tt).")
    parser.add_argument("--minutes", type=float, nargs="+", default=[1.0, 3.0, 10.0])
    parser.add_argument("--pause_s", type=float, nargs=2, default=[0.4, 1.0], help="Pauses drawn from [min, max].")
    parser.add_argument("--chunk_length_s", type=float, default=20.0)
    parser.add_argument("--batch_size", type=int, default=4, help="Chunks per generate call.")
    parser.add_argument("--max_new_tokens", type=int, default=256, help="Per chunk.")
    parser.add_argument("--threads", type=int, default=1, help="torch threads in every measurement.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output_dir", default="outputs/long_form")
    parser.add_argument("--measure", default=None, help=argparse.SUPPRESS)  # internal: one recording, this process
    return parser.parse_args(argv)


def pipeline_for(args: argparse.Namespace):
    import torch
    from transformers import pipeline

    import modeling_part  # noqa: F401  (registers the PART pipeline)

    torch.set_num_threads(args.threads)
    return pipeline("automatic-speech-recognition", model=args.model)


def request(args: argparse.Namespace) -> dict:
    task = "s2tt" if args.target_language not in (None, args.language) else "asr"
    call = {"language": args.language, "task": task, "max_new_tokens": args.max_new_tokens}
    if task == "s2tt":
        call["target_language"] = args.target_language
    return call


def resident_mib() -> float:
    """This process's resident memory now (Linux /proc)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize() / 2**20


class PeakSampler(threading.Thread):
    """Samples the resident memory every 2 ms while running: the peak of a stretch of work."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak, self.done = resident_mib(), threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.002):
            self.peak = max(self.peak, resident_mib())

    def stop(self) -> float:
        self.done.set()
        self.join()
        return max(self.peak, resident_mib())


def measure(args: argparse.Namespace) -> dict:
    """Transcribes one recording in this process: the time it takes, the process's peak memory (ru_maxrss) and the
    resident memory before and at its peak during the transcription."""
    asr = pipeline_for(args)
    call = request(args)
    warm = soundfile.read(args.measure, frames=5 * RATE, dtype="float32")[0]
    asr(warm, sampling_rate=RATE, **call)  # first-call costs out of the timing
    before = resident_mib()
    sampler = PeakSampler()
    sampler.start()
    started = time.perf_counter()
    result = asr(args.measure, chunk_length_s=args.chunk_length_s, batch_size=args.batch_size,
                 return_timestamps=True, **call)
    seconds = time.perf_counter() - started
    during = sampler.stop()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    audio_seconds = soundfile.info(args.measure).duration
    return {"text": result["text"], "chunks": len(result["chunks"]), "audio_seconds": audio_seconds,
            "seconds": seconds, "seconds_per_audio_second": seconds / audio_seconds, "peak_rss_mib": peak,
            "rss_before_mib": before, "rss_peak_during_mib": during}


def build_recording(rows: list[dict], minutes: float, pause_s: tuple[float, float], seed: int):
    """The test utterances in order (cycled as often as needed), with a random pause before each, until the
    recording lasts `minutes`; returns the waveform and the utterances used."""
    from modeling_part.audio_utils import load_audio

    rng = np.random.default_rng(seed)
    pieces, used, total = [], [], 0
    index = 0
    while total < minutes * 60 * RATE:
        row = rows[index % len(rows)]
        pause = np.zeros(int(rng.uniform(*pause_s) * RATE), dtype=np.float32)
        speech = load_audio(row["audio"], name=row.get("id", str(index)))
        pieces += [pause, speech]
        used.append(row)
        total += len(pause) + len(speech)
        index += 1
    return np.concatenate(pieces), used


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.measure:
        print(json.dumps(measure(args)))
        return {}
    from datasets import load_from_disk

    from trainers.evaluation import generate_predictions
    from trainers.metrics import bleu_by_direction, word_error_rate

    if not args.corpus:
        raise SystemExit("--corpus is required (a datasets folder with a test split, e.g. outputs/demo/corpus).")
    call = request(args)
    task = call["task"]
    target = args.target_language or args.language
    split = load_from_disk(args.corpus)[args.split]
    keys = zip(split["task"], split["source_language"], split["target_language"])
    rows = split.select([i for i, key in enumerate(keys) if key == (task, args.language, target)]).to_list()
    if not rows:
        raise SystemExit(f"No {task} rows {args.language}->{target} in {args.corpus} ({args.split}).")
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)

    asr = pipeline_for(args)
    predictions = generate_predictions(asr.model, asr.part_processor, rows, batch_size=8, progress=False,
                                       max_new_tokens=args.max_new_tokens)
    per_utterance = dict(zip((r["id"] for r in rows), predictions))
    del asr

    def score(hypotheses: list[str], references: list[str]) -> float:
        if task == "s2tt":
            return bleu_by_direction(hypotheses, references, [args.language] * len(references),
                                     [target] * len(references))[f"{args.language}-{target}"]
        return word_error_rate(hypotheses, references, args.language)[args.language].value

    metric = "bleu" if task == "s2tt" else "wer/cer"
    results = {"model": args.model, "language": args.language, "task": task, "chunk_length_s": args.chunk_length_s,
               "batch_size": args.batch_size, "threads": args.threads, "lengths": []}
    for minutes in args.minutes:
        waveform, used = build_recording(rows, minutes, tuple(args.pause_s), args.seed)
        path = out / f"recording_{minutes:g}min.wav"
        soundfile.write(path, waveform, RATE, subtype="FLOAT")
        del waveform
        command = [sys.executable, __file__, *(argv if argv is not None else sys.argv[1:]), "--measure", str(path)]
        finished = subprocess.run(command, capture_output=True, text=True, check=False)
        if finished.returncode:
            raise SystemExit(f"measuring {path} failed:\n{finished.stderr[-3000:]}")
        measured = json.loads(finished.stdout.strip().splitlines()[-1])
        references = [r["text"] for r in used]
        long_form = score([measured["text"]], [" ".join(references)])
        utterances = score([per_utterance[r["id"]] for r in used], references)
        entry = {"minutes": minutes, "utterances": len(used), **{k: v for k, v in measured.items() if k != "text"},
                 f"long_form_{metric}": long_form, f"per_utterance_{metric}": utterances}
        (out / f"transcript_{minutes:g}min.txt").write_text(measured["text"] + "\n")
        results["lengths"].append(entry)
        print(json.dumps(entry), flush=True)
    first = results["lengths"][0]
    lines = [
        f"| audio | utterances | chunks | long-form {metric} | per-utterance {metric} | ratio | peak RSS (MiB) "
        "| vs first | RSS before -> peak while transcribing (MiB) | s per audio s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for entry in results["lengths"]:
        long_form, utterances = entry[f"long_form_{metric}"], entry[f"per_utterance_{metric}"]
        lines.append(
            f"| {entry['minutes']:g} min | {entry['utterances']} | {entry['chunks']} | {long_form:.1f} | "
            f"{utterances:.1f} | {long_form / utterances if utterances else float('nan'):.2f}x | "
            f"{entry['peak_rss_mib']:.0f} | {entry['peak_rss_mib'] / first['peak_rss_mib']:.3f}x | "
            f"{entry['rss_before_mib']:.0f} -> {entry['rss_peak_during_mib']:.0f} | "
            f"{entry['seconds_per_audio_second']:.4f} |"
        )
    results["table"] = "\n".join(lines)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(results["table"])
    return results


if __name__ == "__main__":
    main()
