"""Audio input for PART: turn a file, an array or a `datasets` Audio value into the 16 kHz mono float32
waveform that the feature extractor expects (decode with soundfile, downmix, scale PCM, resample with soxr)."""

from __future__ import annotations

import io
import math
import numbers
import os
from typing import TYPE_CHECKING, Any, Union

import numpy as np
import soundfile
import soxr

if TYPE_CHECKING:
    import torch

SAMPLING_RATE = 16000
# A 2-D array with at most this many rows, and more columns than rows, is read as (channels, frames).
MAX_CHANNELS_FIRST = 8
RAW_PCM_EXTENSIONS = (".pcm", ".raw")  # headerless s16le, 16 kHz, mono

AudioInput = Union[str, "os.PathLike[str]", bytes, np.ndarray, "torch.Tensor", dict[str, Any]]


def load_audio(
    audio: AudioInput,
    sampling_rate: int | None = None,
    *,
    target_sampling_rate: int = SAMPLING_RATE,
    name: str = "sample",
) -> np.ndarray:
    """Load one clip as a 1-D float32 mono waveform in [-1, 1] at `target_sampling_rate` (16 kHz by default).

    Args:
        audio: a file path (soundfile; else the optional `asrfront.load`, else headerless s16le 16 kHz mono
            `.pcm` / `.raw`), the file's bytes, a numpy array or torch tensor with `sampling_rate` (1-D mono;
            2-D `(frames, channels)`, or `(channels, frames)` with at most 8 rows and more columns than rows;
            integer PCM is scaled), a `datasets` Audio value (`{"array", "sampling_rate"}` or `{"path", "bytes"}`),
            or a torchcodec `AudioDecoder`.
        sampling_rate: the rate of an array / tensor; sources that carry their own rate ignore it.
        target_sampling_rate: rate of the returned waveform (soxr resampling; channels are averaged).
        name: the sample's identifier in error messages.

    A float32 mono input already at the target rate is returned without a copy. Bad input (unsupported type, no
    `sampling_rate` for an array, undecodable or missing file, empty audio, NaN / inf) raises an error naming `name`.
    """
    if isinstance(audio, dict):  # a datasets Audio value
        if audio.get("array") is not None:
            if "sampling_rate" not in audio:
                raise ValueError(f"{name}: audio dict has 'array' but no 'sampling_rate'; add it")
            audio, sampling_rate = _as_numpy(audio["array"]), audio["sampling_rate"]
        elif audio.get("bytes") is not None or audio.get("path") is not None:
            audio = audio["bytes"] if audio.get("bytes") is not None else audio["path"]
        else:
            raise ValueError(
                f"{name}: audio dict with keys {sorted(audio)} has no audio; expected {{'array', 'sampling_rate'}} "
                "or {'path', 'bytes'} with a path or bytes that is not None"
            )
    if isinstance(audio, (str, os.PathLike, bytes, bytearray, memoryview)):
        waveform, rate = _decode(audio, name)
    elif callable(getattr(audio, "get_all_samples", None)):
        samples = audio.get_all_samples()  # torchcodec AudioDecoder: data is (channels, frames)
        waveform, rate = _to_mono_float32(_as_numpy(samples.data), name, channel_axis=0), samples.sample_rate
    elif isinstance(audio, np.ndarray) or _is_torch_tensor(audio):
        if sampling_rate is None:
            raise ValueError(
                f"{name}: an array or tensor input needs its sampling rate; pass sampling_rate=... "
                "(e.g. load_audio(array, sampling_rate=44100))"
            )
        waveform, rate = _to_mono_float32(_as_numpy(audio), name), sampling_rate
    else:
        raise ValueError(
            f"{name}: unsupported audio input of type {type(audio).__name__}; pass a file path, bytes, a numpy "
            "array or torch tensor with sampling_rate=..., or a datasets Audio dict "
            "({'array', 'sampling_rate'} or {'path', 'bytes'})"
        )
    if waveform.size == 0:
        raise ValueError(f"{name}: the audio is empty (0 samples); drop this sample or fix its source")
    if not np.isfinite(waveform).all():
        first = int(np.flatnonzero(~np.isfinite(waveform))[0])
        raise ValueError(
            f"{name}: the audio contains NaN or inf (first at sample {first}); drop this sample or fix its source"
        )
    if isinstance(rate, bool) or not isinstance(rate, numbers.Real) or not (math.isfinite(rate) and rate > 0):
        raise ValueError(f"{name}: sampling rate must be a positive number of Hz, got {rate!r}")
    if rate != target_sampling_rate:
        waveform = soxr.resample(waveform, rate, target_sampling_rate)
    return np.ascontiguousarray(waveform, dtype=np.float32)


def _decode(source: str | os.PathLike[str] | bytes, name: str) -> tuple[np.ndarray, int]:
    """Decode a file or its bytes with soundfile; a file it cannot open with the optional `asrfront` decoder, else
    as headerless `.pcm` / `.raw`."""
    from_bytes = isinstance(source, (bytes, bytearray, memoryview))
    path = None if from_bytes else os.fspath(source)
    if path is not None and not os.path.isfile(path):
        raise FileNotFoundError(f"{name}: audio file {path!r} does not exist")
    try:
        samples, rate = soundfile.read(io.BytesIO(source) if from_bytes else path, dtype="float32")
        return _to_mono_float32(samples, name), rate
    except soundfile.LibsndfileError as sf_error:
        if from_bytes:
            raise ValueError(
                f"{name}: cannot decode {len(source)} bytes of audio with soundfile ({sf_error}); store the audio as "
                "WAV, FLAC, OGG or MP3, or pass a file path"
            ) from sf_error
        error = sf_error
    try:
        import asrfront  # decodes to 16 kHz mono itself
    except ImportError:
        asrfront = None
    if asrfront is not None:
        try:
            return asrfront.load(path), asrfront.SAMPLE_RATE
        except ValueError as af_error:
            detail = f"soundfile: {error}; asrfront: {af_error}"
    elif path.lower().endswith(RAW_PCM_EXTENSIONS):
        samples, rate = soundfile.read(
            path, dtype="float32", format="RAW", subtype="PCM_16", samplerate=SAMPLING_RATE, channels=1,
            endian="LITTLE",
        )
        return _to_mono_float32(samples, name), rate
    else:
        detail = f"soundfile: {error}; the optional asrfront decoder is not installed"
    raise ValueError(
        f"{name}: cannot decode audio file {path!r} ({detail}); convert it to WAV or FLAC, e.g. "
        "`ffmpeg -i in -ar 16000 -ac 1 out.wav`"
    ) from error


def _is_torch_tensor(value: Any) -> bool:
    return type(value).__module__.startswith("torch") and hasattr(value, "detach")


def _as_numpy(value: Any) -> np.ndarray:
    """A numpy view of an array, tensor or list (no copy for CPU tensors)."""
    return value.detach().cpu().numpy() if _is_torch_tensor(value) else np.asarray(value)


def _to_mono_float32(samples: np.ndarray, name: str, channel_axis: int | None = None) -> np.ndarray:
    """Average the channels (axis `channel_axis`, else inferred, see `load_audio`) and scale integer PCM to [-1, 1];
    float32 mono passes through uncopied."""
    if samples.ndim not in (1, 2):
        raise ValueError(
            f"{name}: audio array has shape {samples.shape}; expected 1-D mono, (frames, channels) or "
            f"(channels, frames) with at most {MAX_CHANNELS_FIRST} channels"
        )
    if samples.ndim == 2 and channel_axis is None:
        rows, cols = samples.shape
        channel_axis = 0 if rows <= MAX_CHANNELS_FIRST and cols > rows else 1
    kind = samples.dtype.kind
    if kind not in "fiu":
        raise ValueError(
            f"{name}: audio samples have dtype {samples.dtype}; pass float samples in [-1, 1] or integer PCM"
        )
    if samples.ndim == 2 and samples.shape[channel_axis] > 1:
        waveform = samples.mean(axis=channel_axis, dtype=np.float32)
    else:
        waveform = samples.reshape(-1).astype(np.float32, copy=False)
    if kind in "iu":
        full_scale = float(2 ** (8 * samples.dtype.itemsize - 1))  # waveform is a new array here
        if kind == "u":  # unsigned PCM (e.g. 8-bit WAV) is centred on half of full scale
            waveform -= np.float32(full_scale)
        waveform *= np.float32(1.0 / full_scale)
    return waveform
