"""Audio input for PART: turn a file, an array or a `datasets` Audio value into the 16 kHz mono float32
waveform that the feature extractor expects (decode with soundfile, downmix, scale PCM, resample with soxr)."""

from __future__ import annotations

import io
import math
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

AudioInput = Union[str, "os.PathLike[str]", bytes, np.ndarray, "torch.Tensor", dict[str, Any]]


def audio_duration_seconds(num_samples: int, sampling_rate: int = SAMPLING_RATE) -> float:
    """Duration in seconds of `num_samples` samples at `sampling_rate` Hz."""
    return num_samples / sampling_rate


def load_audio(
    audio: AudioInput,
    sampling_rate: int | None = None,
    *,
    target_sampling_rate: int = SAMPLING_RATE,
    name: str = "sample",
) -> np.ndarray:
    """Load one clip as a 1-D float32 mono waveform in [-1, 1] at `target_sampling_rate` (16 kHz by default).

    Args:
        audio: one of
            - a file path (`str` / `os.PathLike`): decoded with soundfile; formats soundfile cannot read
              fall back to the optional `asrfront.load` when installed, else headerless s16le 16 kHz mono
              `.pcm` / `.raw` files are read as raw PCM;
            - the file's contents as `bytes` (decoded with soundfile);
            - a numpy array or a torch tensor of samples, with `sampling_rate` given. 1-D is mono. 2-D is
              `(frames, channels)` as soundfile returns it, or `(channels, frames)` when it has at most
              8 rows and more columns than rows (e.g. a torch / torchcodec `(2, N)` stereo tensor).
              Integer PCM is scaled to [-1, 1];
            - a `datasets` Audio value: decoded `{"array", "sampling_rate"}`, undecoded as
              `Audio(decode=False)` stores it `{"path", "bytes"}` (bytes are used when present), or a
              torchcodec `AudioDecoder` (what `Audio(decode=True)` returns in datasets >= 4).
        sampling_rate: sampling rate of an array / tensor input. Sources that carry their own rate (files,
            bytes, dicts, decoders) ignore it.
        target_sampling_rate: rate of the returned waveform.
        name: identifier of the sample (e.g. its dataset id), used in error messages.

    Channels are averaged; resampling uses soxr (high quality). A float32 mono input already at the
    target rate is returned without a copy.

    Raises:
        ValueError: unsupported input type, missing `sampling_rate` for an array, undecodable file, empty
            audio, or NaN / inf samples; the message names `name` and what to do instead.
        FileNotFoundError: the path does not exist.
    """
    if isinstance(audio, (str, os.PathLike)):
        waveform, rate = _decode_path(audio, name)
    elif isinstance(audio, (bytes, bytearray, memoryview)):
        waveform, rate = _decode_bytes(bytes(audio), name)
    elif isinstance(audio, dict):
        waveform, rate = _decode_dict(audio, name)
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
    _check_waveform(waveform, name)
    return _resample(waveform, _check_rate(rate, name), target_sampling_rate)


RAW_PCM_EXTENSIONS = (".pcm", ".raw")  # headerless s16le, 16 kHz, mono


def _decode_path(path: str | os.PathLike[str], name: str) -> tuple[np.ndarray, int]:
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{name}: audio file {path!r} does not exist")
    try:
        data, rate = soundfile.read(path, dtype="float32")
    except soundfile.LibsndfileError as sf_error:
        return _decode_fallback(path, name, sf_error)
    return _to_mono_float32(data, name), rate


def _decode_fallback(path: str, name: str, sf_error: Exception) -> tuple[np.ndarray, int]:
    """What soundfile cannot open: the optional `asrfront` decoder when installed, else headerless s16le
    16 kHz mono PCM (`.pcm` / `.raw`) read by soundfile as RAW."""
    try:
        import asrfront  # decodes to 16 kHz mono itself
    except ImportError:
        asrfront = None
    if asrfront is not None:
        try:
            return asrfront.load(path), asrfront.SAMPLE_RATE
        except ValueError as af_error:
            detail = f"soundfile: {sf_error}; asrfront: {af_error}"
    elif path.lower().endswith(RAW_PCM_EXTENSIONS):
        data, rate = soundfile.read(
            path, dtype="float32", format="RAW", subtype="PCM_16", samplerate=SAMPLING_RATE, channels=1,
            endian="LITTLE",
        )
        return _to_mono_float32(data, name), rate
    else:
        detail = f"soundfile: {sf_error}; the optional asrfront decoder is not installed"
    raise ValueError(
        f"{name}: cannot decode audio file {path!r} ({detail}); convert it to WAV or FLAC, e.g. "
        "`ffmpeg -i in -ar 16000 -ac 1 out.wav`"
    ) from sf_error


def _decode_bytes(data: bytes, name: str) -> tuple[np.ndarray, int]:
    try:
        samples, rate = soundfile.read(io.BytesIO(data), dtype="float32")
    except soundfile.LibsndfileError as error:
        raise ValueError(
            f"{name}: cannot decode {len(data)} bytes of audio with soundfile ({error}); store the audio as "
            "WAV, FLAC, OGG or MP3, or pass a file path"
        ) from error
    return _to_mono_float32(samples, name), rate


def _decode_dict(audio: dict, name: str) -> tuple[np.ndarray, int]:
    if audio.get("array") is not None:
        if "sampling_rate" not in audio:
            raise ValueError(f"{name}: audio dict has 'array' but no 'sampling_rate'; add it")
        return _to_mono_float32(_as_numpy(audio["array"]), name), audio["sampling_rate"]
    if audio.get("bytes") is not None:
        return _decode_bytes(audio["bytes"], name)
    if audio.get("path") is not None:
        return _decode_path(audio["path"], name)
    raise ValueError(
        f"{name}: audio dict with keys {sorted(audio)} has no audio; expected {{'array', 'sampling_rate'}} "
        "or {'path', 'bytes'} with a path or bytes that is not None"
    )


def _is_torch_tensor(value: Any) -> bool:
    return type(value).__module__.startswith("torch") and hasattr(value, "detach")


def _as_numpy(value: Any) -> np.ndarray:
    """A numpy view of an array, tensor or list (no copy for CPU tensors)."""
    if _is_torch_tensor(value):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def _to_mono_float32(samples: np.ndarray, name: str, channel_axis: int | None = None) -> np.ndarray:
    """Average the channels and scale integer PCM to [-1, 1]; float32 mono passes through uncopied.

    The channel axis of a 2-D array is `channel_axis` if given, else inferred (see `load_audio`)."""
    if samples.ndim == 2:
        if channel_axis is None:
            rows, cols = samples.shape
            channel_axis = 0 if rows <= MAX_CHANNELS_FIRST and cols > rows else 1
    elif samples.ndim == 1:
        channel_axis = None
    else:
        raise ValueError(
            f"{name}: audio array has shape {samples.shape}; expected 1-D mono, (frames, channels) or "
            f"(channels, frames) with at most {MAX_CHANNELS_FIRST} channels"
        )
    kind = samples.dtype.kind
    if kind not in "fiu":
        raise ValueError(
            f"{name}: audio samples have dtype {samples.dtype}; pass float samples in [-1, 1] or integer PCM"
        )
    if channel_axis is not None and samples.shape[channel_axis] > 1:
        waveform = samples.mean(axis=channel_axis, dtype=np.float32)
    else:
        waveform = samples.reshape(-1).astype(np.float32, copy=False)
    if kind in "iu":
        full_scale = float(2 ** (8 * samples.dtype.itemsize - 1))  # waveform is a new array here
        if kind == "u":  # unsigned PCM (e.g. 8-bit WAV) is centred on half of full scale
            waveform -= np.float32(full_scale)
        waveform *= np.float32(1.0 / full_scale)
    return waveform


def _check_waveform(waveform: np.ndarray, name: str) -> None:
    if waveform.size == 0:
        raise ValueError(f"{name}: the audio is empty (0 samples); drop this sample or fix its source")
    if not np.isfinite(waveform).all():
        first = int(np.flatnonzero(~np.isfinite(waveform))[0])
        raise ValueError(
            f"{name}: the audio contains NaN or inf (first at sample {first}); drop this sample or fix its source"
        )


def _check_rate(rate: Any, name: str) -> int | float:
    if isinstance(rate, bool) or not isinstance(rate, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name}: sampling rate must be a number of Hz, got {rate!r}")
    if not (math.isfinite(rate) and rate > 0):
        raise ValueError(f"{name}: sampling rate must be a positive number of Hz, got {rate!r}")
    return rate


def _resample(waveform: np.ndarray, rate: int | float, target_rate: int) -> np.ndarray:
    if rate != target_rate:
        waveform = soxr.resample(waveform, rate, target_rate)
    return np.ascontiguousarray(waveform, dtype=np.float32)
