"""Feature extractor for PART's speech encoders: the SenseVoice front end (FunASR `WavFrontend`: kaldi fbank,
low-frame-rate stacking, CMVN) and Whisper's 30 s log-mel; the C kernels of the optional `asrfront` package compute
them when installed (`pip install part-speech[asrfront]`), else numpy and transformers' `WhisperFeatureExtractor`."""

from __future__ import annotations

import functools
import itertools
import os
import re
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, Union

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from transformers import WhisperFeatureExtractor
from transformers.audio_utils import mel_filter_bank, window_function
from transformers.feature_extraction_sequence_utils import SequenceFeatureExtractor
from transformers.feature_extraction_utils import BatchFeature
from transformers.utils import TensorType

if TYPE_CHECKING:
    import torch

try:  # optional (`part-speech[asrfront]`): faster C kernels for the same features
    from asrfront import sensevoice as asrfront_sensevoice
    from asrfront import whisper as asrfront_whisper
except ImportError:  # numpy and WhisperFeatureExtractor compute the same features
    asrfront_sensevoice = asrfront_whisper = None


SAMPLING_RATE = 16000
FRONT_ENDS = ("sensevoice", "whisper")
BACKENDS = ("auto", "asrfront", "numpy")

# Kaldi fbank as FunASR's WavFrontend configures it (torchaudio.compliance.kaldi.fbank defaults otherwise).
FBANK_FRAME_LENGTH = 400  # 25 ms
FBANK_FRAME_SHIFT = 160  # 10 ms
FBANK_FFT_SIZE = 512  # the frame length rounded up to a power of two
FBANK_PREEMPHASIS = 0.97
FBANK_WAVEFORM_SCALE = 32768.0  # FunASR computes fbank on the int16-scaled waveform
FBANK_LOG_FLOOR = float(np.finfo(np.float32).eps)
FBANK_FRAMES_PER_BLOCK = 8192  # bounds the numpy fallback's memory on long clips

WHISPER_HOP_LENGTH = 160
WHISPER_N_SAMPLES = 30 * SAMPLING_RATE
WHISPER_N_FRAMES = WHISPER_N_SAMPLES // WHISPER_HOP_LENGTH  # 3000
WHISPER_ASRFRONT_N_MELS = (80, 128)

CMVN_VARIANCE_FLOOR = 1e-8

# One 16 kHz mono clip, or a batch of them.
SpeechInput = Union[np.ndarray, "torch.Tensor", Sequence[float], Sequence[Union[np.ndarray, "torch.Tensor"]]]


def kaldi_num_frames(num_samples: int) -> int:
    """Number of kaldi fbank frames (25 ms every 10 ms, `snip_edges=True`) of a 16 kHz clip."""
    return max(0, 1 + (num_samples - FBANK_FRAME_LENGTH) // FBANK_FRAME_SHIFT)


@functools.lru_cache(maxsize=8)
def _kaldi_mel_banks(num_mel_bins: int) -> np.ndarray:
    """Kaldi's mel filters (20 Hz to 8 kHz) over the 257 bins of a 512-point FFT: (257, num_mel_bins)."""
    banks = mel_filter_bank(
        num_frequency_bins=FBANK_FFT_SIZE // 2 + 1,
        num_mel_filters=num_mel_bins,
        min_frequency=20.0,
        max_frequency=SAMPLING_RATE / 2,
        sampling_rate=SAMPLING_RATE,
        norm=None,
        mel_scale="kaldi",
        triangularize_in_mel_space=True,
    )
    return banks.astype(np.float32)


def kaldi_fbank(waveform: np.ndarray, num_mel_bins: int = 80) -> np.ndarray:
    """Kaldi log-mel fbank `(kaldi_num_frames(len(waveform)), num_mel_bins)` of a 16 kHz waveform in [-1, 1]: equals
    `torchaudio.compliance.kaldi.fbank(waveform * 32768, num_mel_bins=num_mel_bins, window_type="hamming",
    dither=0.0)` (FunASR's `WavFrontend`), vectorised over frames in blocks of `FBANK_FRAMES_PER_BLOCK`."""
    num_frames = kaldi_num_frames(waveform.shape[0])
    features = np.empty((num_frames, num_mel_bins), dtype=np.float32)
    all_frames = sliding_window_view(waveform, FBANK_FRAME_LENGTH)[::FBANK_FRAME_SHIFT] if num_frames else None
    # Kaldi's symmetric Hamming window times the int16 scale, so one multiply does both
    window = (window_function(FBANK_FRAME_LENGTH, "hamming", periodic=False) * FBANK_WAVEFORM_SCALE).astype(np.float32)
    banks = _kaldi_mel_banks(num_mel_bins)
    for start in range(0, num_frames, FBANK_FRAMES_PER_BLOCK):
        frames = all_frames[start : start + FBANK_FRAMES_PER_BLOCK]
        frames = frames - frames.mean(axis=1, keepdims=True, dtype=np.float32)
        frames[:, 1:] -= FBANK_PREEMPHASIS * frames[:, :-1]  # right side is evaluated before the update
        frames[:, 0] *= 1.0 - FBANK_PREEMPHASIS
        frames *= window
        spectrum = np.fft.rfft(frames, n=FBANK_FFT_SIZE)
        mel = (spectrum.real**2 + spectrum.imag**2) @ banks
        np.log(np.maximum(mel, FBANK_LOG_FLOOR, out=mel), out=features[start : start + FBANK_FRAMES_PER_BLOCK])
    return features


def apply_lfr(features: np.ndarray, lfr_m: int = 7, lfr_n: int = 6) -> np.ndarray:
    """Low-frame-rate stacking as FunASR (and `FunAsrNanoFeatureExtractor._apply_lfr`): every `lfr_n` frames,
    `lfr_m` consecutive frames concatenated, the first frame repeated `(lfr_m - 1) // 2` times on the left and the
    last one as needed on the right. `(T, D)` -> `(ceil(T / lfr_n), lfr_m * D)`."""
    num_input, dim = features.shape
    num_output = -(-num_input // lfr_n)
    if num_output == 0:
        return np.zeros((0, lfr_m * dim), dtype=features.dtype)
    starts = np.arange(num_output)[:, None] * lfr_n - (lfr_m - 1) // 2
    rows = np.clip(starts + np.arange(lfr_m)[None, :], 0, num_input - 1)  # the clip is the edge padding
    return features[rows].reshape(num_output, lfr_m * dim)


@functools.lru_cache(maxsize=4)
def _whisper_feature_extractor(n_mels: int) -> WhisperFeatureExtractor:
    return WhisperFeatureExtractor(feature_size=n_mels)


def read_am_mvn(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
    """`(shift, scale)` float32 vectors of a FunASR `am.mvn` file (Kaldi nnet text): the `<LearnRateCoef> x [ ... ]`
    values after `<AddShift>` and after `<Rescale>`; features are normalised as `(x + shift) * scale`."""
    text = open(path, encoding="utf-8").read()
    vectors = []
    for name in ("<AddShift>", "<Rescale>"):
        found = re.search(re.escape(name) + r"[^\n]*\n\s*<LearnRateCoef>\s+\S+\s+\[([^\]]*)\]", text)
        if found is None:
            raise ValueError(f"{path}: no {name} followed by '<LearnRateCoef> x [ ... ]'; is it a FunASR am.mvn file?")
        vectors.append(np.array(found.group(1).split(), dtype=np.float32))
    shift, scale = vectors
    if shift.shape != scale.shape:
        raise ValueError(f"{path}: <AddShift> has {shift.size} values, <Rescale> {scale.size}")
    return shift, scale


class PartFeatureExtractor(SequenceFeatureExtractor):
    r"""Feature extractor for PART's audio encoders: `front_end="sensevoice"` (FunASR `WavFrontend`: kaldi fbank of
    `feature_size` mel bins, low-frame-rate stacking `lfr_m` / `lfr_n`, then `(x - cmvn_mean) * cmvn_istd` when CMVN
    is set by `load_cmvn` or `fit_cmvn`; `[B, T, feature_size * lfr_m]`) or `front_end="whisper"` (Whisper's log-mel
    of clips padded or trimmed to 30 s; `[B, feature_size, 3000]`). `feature_attention_mask` `[B, T]` marks the
    `num_frames(len(clip))` valid frames. `backend`: `"auto"` (asrfront's C kernels when installed and they support
    the settings), `"asrfront"` or `"numpy"`; both compute the same features (max abs difference below 1e-3)."""

    model_input_names = ["input_features", "feature_attention_mask"]

    def __init__(
        self,
        front_end: str = "sensevoice",
        feature_size: int = 80,
        sampling_rate: int = SAMPLING_RATE,
        lfr_m: int = 7,
        lfr_n: int = 6,
        cmvn_mean: Sequence[float] | None = None,
        cmvn_istd: Sequence[float] | None = None,
        backend: str = "auto",
        padding_value: float = 0.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(feature_size=feature_size, sampling_rate=sampling_rate, padding_value=padding_value, **kwargs)
        self.front_end = front_end
        self.lfr_m = lfr_m
        self.lfr_n = lfr_n
        self.cmvn_mean = None if cmvn_mean is None else [float(v) for v in cmvn_mean]
        self.cmvn_istd = None if cmvn_istd is None else [float(v) for v in cmvn_istd]
        self.backend = backend
        self._validate()

    def _validate(self) -> None:
        if self.front_end not in FRONT_ENDS:
            raise ValueError(f"front_end must be one of {FRONT_ENDS}, got {self.front_end!r}")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.sampling_rate != SAMPLING_RATE:
            raise ValueError(
                f"sampling_rate must be {SAMPLING_RATE}, got {self.sampling_rate}; resample the audio with "
                "modeling_part.audio_utils.load_audio instead"
            )
        if not isinstance(self.feature_size, int) or self.feature_size < 1:
            raise ValueError(f"feature_size (number of mel bins) must be a positive int, got {self.feature_size!r}")
        if self.backend == "asrfront" and asrfront_sensevoice is None:
            raise ImportError(
                "backend='asrfront' needs the optional asrfront package: `pip install asrfront` (or "
                "`pip install part-speech[asrfront]`); backend='auto' or 'numpy' computes the same features"
            )
        if self.front_end == "whisper":
            if self.backend == "asrfront" and self.feature_size not in WHISPER_ASRFRONT_N_MELS:
                raise ValueError(
                    f"asrfront's Whisper front end supports feature_size {WHISPER_ASRFRONT_N_MELS}, got "
                    f"{self.feature_size}; use backend='auto' or 'numpy'"
                )
            if self.cmvn_mean is not None or self.cmvn_istd is not None:
                raise ValueError("cmvn_mean / cmvn_istd apply to front_end='sensevoice' only; remove them")
            return
        for field in ("lfr_m", "lfr_n"):
            value = getattr(self, field)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{field} must be a positive int, got {value!r}")
        if (self.cmvn_mean is None) != (self.cmvn_istd is None):
            raise ValueError("set both cmvn_mean and cmvn_istd, or neither (use load_cmvn or fit_cmvn)")
        self._cmvn_vectors()

    @property
    def feature_dim(self) -> int:
        """Size of one feature frame: `feature_size * lfr_m` (sensevoice) or `feature_size` (whisper)."""
        return self.feature_size * self.lfr_m if self.front_end == "sensevoice" else self.feature_size

    @property
    def frames_per_second(self) -> float:
        """Feature frames per second of audio: 100 / lfr_n (sensevoice) or 100 (whisper)."""
        if self.front_end == "sensevoice":
            return SAMPLING_RATE / FBANK_FRAME_SHIFT / self.lfr_n
        return SAMPLING_RATE / WHISPER_HOP_LENGTH

    @property
    def min_num_samples(self) -> int:
        """Length of the shortest clip that yields at least one valid feature frame."""
        return FBANK_FRAME_LENGTH if self.front_end == "sensevoice" else 1

    def num_frames(self, num_samples: int) -> int:
        """Valid feature frames of a clip of `num_samples` samples (its `feature_attention_mask` row sum): sensevoice
        `ceil(kaldi_num_frames / lfr_n)`; whisper `ceil(num_samples / 160)` capped at 3000, as
        `WhisperFeatureExtractor`'s attention mask."""
        if self.front_end == "sensevoice":
            return -(-kaldi_num_frames(num_samples) // self.lfr_n)
        return min(-(-num_samples // WHISPER_HOP_LENGTH), WHISPER_N_FRAMES)

    def _uses_asrfront(self) -> bool:
        if self.backend == "numpy" or asrfront_sensevoice is None:
            return False
        return self.front_end == "sensevoice" or self.feature_size in WHISPER_ASRFRONT_N_MELS

    def _cmvn_vectors(self) -> tuple[np.ndarray, np.ndarray] | None:
        """`(mean, istd)` as float32 arrays of `feature_dim` values, or None without CMVN."""
        if self.cmvn_mean is None:
            return None
        mean = np.asarray(self.cmvn_mean, dtype=np.float32)
        istd = np.asarray(self.cmvn_istd, dtype=np.float32)
        for field, vector in (("cmvn_mean", mean), ("cmvn_istd", istd)):
            if vector.shape != (self.feature_dim,):
                raise ValueError(
                    f"{field} has {vector.size} values, expected feature_size * lfr_m = {self.feature_dim}"
                )
            if not np.isfinite(vector).all():
                raise ValueError(f"{field} contains NaN or inf; refit it with fit_cmvn")
        return mean, istd

    def load_cmvn(self, path: str | os.PathLike[str]) -> PartFeatureExtractor:
        """Set CMVN from a FunASR `am.mvn` file (`<AddShift>` = -mean, `<Rescale>` = 1 / std; like FunASR, the first
        `feature_dim` values of longer vectors); returns self."""
        if self.front_end != "sensevoice":
            raise ValueError("CMVN applies to front_end='sensevoice' only")
        shift, scale = read_am_mvn(path)
        if shift.size < self.feature_dim:
            raise ValueError(f"{path}: CMVN vectors have {shift.size} values, need {self.feature_dim}")
        self.cmvn_mean = (-shift[: self.feature_dim]).tolist()
        self.cmvn_istd = scale[: self.feature_dim].tolist()
        return self

    def fit_cmvn(self, waveforms: Iterable[np.ndarray], batch_size: int = 64) -> PartFeatureExtractor:
        """Set CMVN to the global mean and inverse standard deviation of the sensevoice features of `waveforms`
        (16 kHz float clips), for a model trained from scratch; returns self."""
        if self.front_end != "sensevoice":
            raise ValueError("CMVN applies to front_end='sensevoice' only; Whisper's log-mel is already scaled")
        sums = np.zeros((2, self.feature_dim), dtype=np.float64)  # of the features and of their squares
        count = 0
        clips = iter(waveforms)
        while batch := list(itertools.islice(clips, batch_size)):
            valid = np.concatenate(self._sensevoice_features(_as_waveform_list(batch), cmvn=None)).astype(np.float64)
            sums += [valid.sum(axis=0), np.square(valid).sum(axis=0)]
            count += valid.shape[0]
        if count == 0:
            raise ValueError(f"fit_cmvn needs at least one clip of {self.min_num_samples} samples or more")
        mean = sums[0] / count
        variance = np.maximum(sums[1] / count - np.square(mean), CMVN_VARIANCE_FLOOR)
        self.cmvn_mean = mean.astype(np.float32).tolist()
        self.cmvn_istd = (1.0 / np.sqrt(variance)).astype(np.float32).tolist()
        return self

    def __call__(
        self,
        raw_speech: SpeechInput,
        sampling_rate: int | None = None,
        return_tensors: str | TensorType | None = "pt",
        padding: bool | str = True,
        pad_to_multiple_of: int | None = None,
    ) -> BatchFeature:
        """`input_features` and `feature_attention_mask` (int32, 1 = valid frame) of 16 kHz mono float waveforms in
        [-1, 1] (see `load_audio`): one 1-D array, tensor or list of floats, a list of them, or a 2-D `(batch,
        samples)` array. `return_tensors`: `"pt"`, `"np"` or None (numpy). `padding` and `pad_to_multiple_of` are
        `SequenceFeatureExtractor.pad`'s, for sensevoice features: `True` / `"longest"`, or `False` / `"do_not_pad"`
        (per-clip arrays, with `return_tensors=None`); Whisper features always have 3000 frames."""
        if sampling_rate is not None and sampling_rate != self.sampling_rate:
            raise ValueError(
                f"audio must be sampled at {self.sampling_rate} Hz, got sampling_rate={sampling_rate}; resample "
                f"it with modeling_part.audio_utils.load_audio(audio, sampling_rate={sampling_rate})"
            )
        if padding not in (True, "longest", False, "do_not_pad"):
            raise ValueError(f"padding must be True / 'longest' or False / 'do_not_pad', got {padding!r}")
        unpadded = padding in (False, "do_not_pad") and self.front_end == "sensevoice"
        if unpadded and return_tensors is not None:
            raise ValueError("padding=False gives clips of different lengths; pass return_tensors=None")
        waveforms = _as_waveform_list(raw_speech)
        if self.front_end == "whisper":
            lengths = np.array([self.num_frames(w.shape[0]) for w in waveforms])
            mask = (np.arange(WHISPER_N_FRAMES)[None, :] < lengths[:, None]).astype(np.int32)
            features = {"input_features": self._whisper_features(waveforms), "feature_attention_mask": mask}
            return BatchFeature(features, tensor_type=return_tensors)
        features = BatchFeature({"input_features": self._sensevoice_features(waveforms, self._cmvn_vectors())})
        batch = self.pad(
            features, padding=padding, pad_to_multiple_of=pad_to_multiple_of, return_attention_mask=True,
            return_tensors=return_tensors or (None if unpadded else "np"),
        )
        batch["feature_attention_mask"] = batch.pop("attention_mask")
        return batch

    def _sensevoice_features(
        self, waveforms: list[np.ndarray], cmvn: tuple[np.ndarray, np.ndarray] | None
    ) -> list[np.ndarray]:
        """Each clip's `(num_frames, feature_dim)` float32 features."""
        if self._uses_asrfront():
            shift_scale = None if cmvn is None else (-cmvn[0], cmvn[1])  # asrfront: (x + shift) * scale
            features, lengths = asrfront_sensevoice.fbank_batch(
                waveforms, cmvn=shift_scale, n_mels=self.feature_size, lfr_m=self.lfr_m, lfr_n=self.lfr_n
            )
            return [clip[:length] for clip, length in zip(features, lengths, strict=True)]
        features = [apply_lfr(kaldi_fbank(w, self.feature_size), self.lfr_m, self.lfr_n) for w in waveforms]
        return features if cmvn is None else [(clip - cmvn[0]) * cmvn[1] for clip in features]

    def _whisper_features(self, waveforms: list[np.ndarray]) -> np.ndarray:
        """`(B, feature_size, 3000)` float32 Whisper log-mel features."""
        if self._uses_asrfront():
            return asrfront_whisper.log_mel_batch(waveforms, n_mels=self.feature_size)
        extractor = _whisper_feature_extractor(self.feature_size)
        return extractor(waveforms, sampling_rate=SAMPLING_RATE, return_tensors="np")["input_features"]


def _as_waveform_list(raw_speech: SpeechInput) -> list[np.ndarray]:
    """Validate a clip or a batch of clips into a list of 1-D float32 contiguous arrays."""
    if hasattr(raw_speech, "detach"):  # torch tensor
        raw_speech = raw_speech.detach().cpu().numpy()
    if isinstance(raw_speech, np.ndarray):
        if raw_speech.ndim not in (1, 2):
            raise ValueError(
                f"raw_speech has shape {raw_speech.shape}; pass a 1-D waveform, a list of them or a 2-D "
                "(batch, samples) array"
            )
        clips = [raw_speech] if raw_speech.ndim == 1 else list(raw_speech)
    elif isinstance(raw_speech, (list, tuple)):
        if len(raw_speech) == 0:
            raise ValueError("raw_speech is empty; pass at least one waveform")
        clips = [raw_speech] if isinstance(raw_speech[0], (float, int, np.number)) else list(raw_speech)
    else:
        raise ValueError(
            f"raw_speech of type {type(raw_speech).__name__} is not supported; pass 16 kHz float waveforms "
            "(decode files with modeling_part.audio_utils.load_audio)"
        )
    waveforms = []
    for i, clip in enumerate(clips):
        clip = np.asarray(clip.detach().cpu() if hasattr(clip, "detach") else clip)
        if clip.ndim != 1:
            raise ValueError(f"raw_speech[{i}] has shape {clip.shape}; pass mono 1-D waveforms (load_audio downmixes)")
        if clip.dtype.kind != "f":
            raise ValueError(
                f"raw_speech[{i}] has dtype {clip.dtype}; pass float samples in [-1, 1] (load_audio scales PCM)"
            )
        clip = np.ascontiguousarray(clip, dtype=np.float32)
        if not np.isfinite(clip).all():
            raise ValueError(f"raw_speech[{i}] contains NaN or inf samples; drop or fix this clip")
        waveforms.append(clip)
    return waveforms


__all__ = ["PartFeatureExtractor", "apply_lfr", "kaldi_fbank", "kaldi_num_frames", "read_am_mvn"]
