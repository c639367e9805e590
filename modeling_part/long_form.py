"""Long recordings for PART: cut a recording into chunks the model takes, at pauses found by an energy-based
voice-activity detector (overlapping windows where speech has no pause), and join the chunks' texts back, merging
what two windows both transcribed at word level. Used by the pipeline and by `trainers.evaluation`, so a long test file
is scored the way a user transcribes it. Work and memory are linear in the recording's length."""

from __future__ import annotations

import bisect
import math
import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import soundfile

FRAME_SECONDS = 0.02  # the voice-activity detector's analysis frames
MIN_PAUSE_SECONDS = 0.3  # the shortest run of non-speech frames that is a pause (shorter gaps are within words)
PAUSE_PADDING_SECONDS = 0.1  # silence kept on each side of the speech in a chunk
SILENCE_DB = -70.0  # frames quieter than this (mean power, dB of full scale) are never speech
_ENERGY_BLOCK_FRAMES = 4096  # frames per block when computing energies: bounds the temporary memory


@dataclass(frozen=True)
class Chunk:
    """A span `[start, end)` of a recording in samples; `overlap` samples at its start are also the end of the
    previous chunk (0 where the two were cut at a pause)."""

    start: int
    end: int
    overlap: int = 0


def frame_energies_db(blocks: Iterable[np.ndarray], frame_length: int) -> np.ndarray:
    """Mean power in dB of consecutive frames of `frame_length` samples (the last may be shorter) of a recording
    given as blocks of whole frames (but the last), so the temporary memory does not grow with the recording."""
    energies = []
    for block in blocks:
        full = len(block) // frame_length * frame_length
        power = np.square(np.asarray(block, dtype=np.float64))
        energies.append(power[:full].reshape(-1, frame_length).mean(1))
        if len(block) > full:
            energies.append(power[full:].mean(keepdims=True))
    return 10.0 * np.log10(np.maximum(np.concatenate(energies or [np.zeros(0)]), 1e-10))


def speech_frames(energies_db: np.ndarray, min_margin_db: float = 6.0, relative_threshold: float = 0.25) -> np.ndarray:
    """Frames louder than `SILENCE_DB` and than the noise floor (5th percentile) by `relative_threshold` of the range
    to the peak (99th percentile) and by `min_margin_db`; all audible frames where that range is under twice it."""
    audible = energies_db > SILENCE_DB
    if energies_db.size == 0:
        return audible
    floor, peak = np.percentile(energies_db, [5, 99])
    if peak - floor < 2 * min_margin_db:
        return audible
    return audible & (energies_db > floor + max(min_margin_db, relative_threshold * (peak - floor)))


def find_pauses(speech: np.ndarray, frame_length: int, total: int, min_pause_s: float = MIN_PAUSE_SECONDS):
    """Pauses as `(start, end)` sample spans: runs of at least `min_pause_s` of non-speech frames."""
    edges = np.flatnonzero(np.diff(np.concatenate(([1], speech.astype(np.int8), [1]))))
    min_frames = max(1, math.ceil(min_pause_s / FRAME_SECONDS))
    return [
        (int(begin) * frame_length, min(int(stop) * frame_length, total))
        for begin, stop in zip(edges[::2], edges[1::2])
        if stop - begin >= min_frames
    ]


def stride_samples(
    chunk_length_s: float, stride_length_s: float | Sequence[float] | None, sampling_rate: int
) -> tuple[int, int]:
    """`stride_length_s` as transformers' ASR pipeline reads it: seconds of context on each side of a window (one
    number for both, or `(left, right)`); default `chunk_length_s / 6`. Two consecutive windows share left + right."""
    if stride_length_s is None:
        stride_length_s = chunk_length_s / 6
    left, right = (stride_length_s, stride_length_s) if isinstance(stride_length_s, (int, float)) else stride_length_s
    if min(left, right) < 0 or left + right >= chunk_length_s:
        raise ValueError(
            f"stride_length_s={stride_length_s!r} must be >= 0 on each side and leave part of each "
            f"chunk_length_s={chunk_length_s} window unshared (left + right < chunk_length_s)."
        )
    return round(left * sampling_rate), round(right * sampling_rate)


def plan_chunks(
    audio: np.ndarray | soundfile.SoundFile,
    chunk_length_s: float,
    stride_length_s: float | Sequence[float] | None = None,
    sampling_rate: int = 16000,
    min_pause_s: float = MIN_PAUSE_SECONDS,
) -> list[Chunk]:
    """Cuts a recording (a waveform, or an open `soundfile.SoundFile` read block by block at its own rate) into
    chunks of at most `chunk_length_s`, each ending in the last pause that starts within it (`PAUSE_PADDING_SECONDS`
    of the pause kept on each side); where none does, after `chunk_length_s`, the next chunk starting `left + right`
    of `stride_length_s` earlier (`stride_samples`). Silence at a chunk's ends is trimmed to the padding, chunks
    without speech are left out, and a recording no longer than `chunk_length_s` is one chunk, as it is."""
    if not chunk_length_s or chunk_length_s <= 0:
        raise ValueError(f"chunk_length_s must be a positive number of seconds, got {chunk_length_s!r}.")
    total = len(audio)  # a SoundFile's length is its frames
    sampling_rate = audio.samplerate if isinstance(audio, soundfile.SoundFile) else sampling_rate
    window = round(chunk_length_s * sampling_rate)
    if total <= window:
        return [Chunk(0, total)]
    left, right = stride_samples(chunk_length_s, stride_length_s, sampling_rate)
    frame_length = max(1, round(FRAME_SECONDS * sampling_rate))
    block = _ENERGY_BLOCK_FRAMES * frame_length
    if isinstance(audio, soundfile.SoundFile):
        blocks = (b.mean(axis=1) for b in audio.blocks(blocksize=block, dtype="float32", always_2d=True))
    else:
        blocks = (audio[first : first + block] for first in range(0, total, block))
    speech = speech_frames(frame_energies_db(blocks, frame_length))
    pauses = find_pauses(speech, frame_length, total, min_pause_s)
    speech_index = np.flatnonzero(speech)
    if speech_index.size == 0:
        return []
    pad = round(PAUSE_PADDING_SECONDS * sampling_rate)
    first = max(0, int(speech_index[0]) * frame_length - pad)
    last = min(total, (int(speech_index[-1]) + 1) * frame_length + pad)
    pause_starts = [start for start, _ in pauses]

    spans: list[tuple[int, int]] = []
    position = first
    while last - position > window:
        limit = position + window
        candidate = bisect.bisect_left(pause_starts, limit) - 1  # the last pause starting in the window
        if candidate >= 0 and pause_starts[candidate] > position:
            start, stop = pauses[candidate]
            if stop - start >= 2 * pad:
                end, following = min(start + pad, limit), stop - pad
            else:
                end = following = min((start + stop) // 2, limit)
            spans.append((position, end))
            position = max(following, end)
        else:
            spans.append((position, limit))
            position = limit - (left + right)
    spans.append((position, last))

    chunks: list[Chunk] = []
    for start, end in spans:
        voiced = speech_index[(speech_index >= start // frame_length) & (speech_index < -(-end // frame_length))]
        if voiced.size == 0:
            continue
        start = max(start, int(voiced[0]) * frame_length - pad)
        end = min(end, (int(voiced[-1]) + 1) * frame_length + pad)
        overlap = max(0, chunks[-1].end - start) if chunks else 0
        chunks.append(Chunk(start, end, overlap))
    return chunks


# ------------------------------------------------------------------------------------------ joining texts
_CJK = (
    "\u2e80-\u2fdf\u3000-\u303f\u3040-\u30ff\u31f0-\u31ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff00-\uffef"
)
_UNIT = re.compile(f"[{_CJK}]|[^\\s{_CJK}]+")
"""The units texts are aligned in: words, and single characters of scripts written without spaces."""
_CJK_CHAR = re.compile(f"[{_CJK}]")


def _key(unit: str) -> str | None:
    """A unit as compared across chunks: case-folded, punctuation removed; None for punctuation alone."""
    key = "".join(ch for ch in unit.casefold() if not unicodedata.category(ch).startswith("P"))
    return key or None


def join_texts(texts: Sequence[str]) -> str:
    """Joins consecutive chunks' texts: a space between them, none between two characters of a script written
    without spaces (Chinese, Japanese)."""
    joined = ""
    for text in texts:
        text = text.strip()
        if not text:
            continue
        if joined and not (_CJK_CHAR.fullmatch(joined[-1]) and _CJK_CHAR.fullmatch(text[0])):
            joined += " "
        joined += text
    return joined


def _align(left: list[str | None], right: list[str | None]) -> tuple[int, int] | None:
    """`(keep, skip)` such that `left[:keep] + right[skip:]` says once what `left`'s end and `right`'s start share, or
    None when they share fewer than two units (one if either has one). As transformers' `_find_longest_common_sequence`
    for tokens, every offset is scored by its share of equal units (ties: the longer overlap); the cut falls in the
    middle of the overlap, so a word garbled at either window's edge is dropped."""
    left_length, right_length = len(left), len(right)
    needed = min(2, left_length, right_length)
    best, best_score = None, 0.0
    for offset in range(1, left_length + right_length):
        left_start, left_stop = max(0, left_length - offset), min(left_length, left_length + right_length - offset)
        right_start, right_stop = max(0, offset - left_length), min(right_length, offset)
        matches = sum(
            a is not None and a == b for a, b in zip(left[left_start:left_stop], right[right_start:right_stop])
        )
        score = matches / offset + offset / 10000.0
        if needed and matches >= needed and score > best_score:
            best_score, best = score, (left_start, left_stop, right_start, right_stop)
    if best is None:
        return None
    left_start, left_stop, right_start, right_stop = best
    half = (left_stop - left_start) // 2
    return left_start + half, right_start + half


def merge_chunk_texts(texts: Sequence[str], chunks: Sequence[Chunk], sampling_rate: int = 16000) -> list[str]:
    """Each chunk's part of the transcript (`join_texts` of them is the transcript): its text less what it shares
    with the previous chunk's. Where two windows overlap, the words of each text in the overlap (estimated from the
    chunk's words per second, with a margin) are aligned with `_align` and kept once; where they share too little to
    align, each keeps the words of its half of the overlap. Chunks cut at a pause keep their texts."""
    if len(texts) != len(chunks):
        raise ValueError(f"merge_chunk_texts got {len(texts)} texts for {len(chunks)} chunks; give one per chunk.")
    units = [list(_UNIT.finditer(text)) for text in texts]
    keep = [[0, len(u)] for u in units]  # the unit range [first, stop) each chunk keeps
    for index in range(1, len(chunks)):
        if not chunks[index].overlap:
            continue
        pair, previous = (index - 1, index), keep[index - 1]
        overlap_s = chunks[index].overlap / sampling_rate
        rates = [len(units[i]) / max((chunks[i].end - chunks[i].start) / sampling_rate, 1e-9) for i in pair]
        spans = [min(len(units[i]), math.ceil(1.5 * rate * overlap_s) + 2) for i, rate in zip(pair, rates)]
        left_first = max(previous[0], previous[1] - spans[0])
        left = [_key(u.group()) for u in units[index - 1][left_first : previous[1]]]
        right = [_key(u.group()) for u in units[index][: spans[1]]]
        cut = _align(left, right)
        if cut is None:
            dropped = [round(rate * overlap_s / 2) for rate in rates]
            previous[1] = max(previous[0], previous[1] - dropped[0])
            keep[index][0] = min(len(units[index]), dropped[1])
        else:
            previous[1] = left_first + cut[0]
            keep[index][0] = cut[1]
    parts = []
    for text, chunk_units, (first, stop) in zip(texts, units, keep):
        if (first, stop) == (0, len(chunk_units)):
            parts.append(text.strip())
        elif first >= stop:
            parts.append("")
        else:
            parts.append(text[chunk_units[first].start() : chunk_units[stop - 1].end()])
    return parts


def chunk_timestamps(chunks: Sequence[Chunk], sampling_rate: int = 16000) -> list[tuple[float, float]]:
    """`(start, end)` in seconds of each chunk; two overlapping windows meet in the middle of their overlap."""
    bounds = [[chunk.start, chunk.end] for chunk in chunks]
    for index in range(1, len(chunks)):
        if chunks[index].overlap:
            middle = chunks[index].start + chunks[index].overlap // 2
            bounds[index - 1][1] = bounds[index][0] = middle
    return [(round(start / sampling_rate, 3), round(end / sampling_rate, 3)) for start, end in bounds]


__all__ = [
    "Chunk",
    "chunk_timestamps",
    "find_pauses",
    "frame_energies_db",
    "join_texts",
    "merge_chunk_texts",
    "plan_chunks",
    "speech_frames",
    "stride_samples",
]
