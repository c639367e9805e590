"""Voice-moving augmentation of demo training utterances, with numpy only.

Four effects, applied in a fixed order (speaker, room, channel, noise) to the float waveform at `SAMPLE_RATE`:
speed perturbation by resampling (duration, pitch and formants change together, as Kaldi's), reverberation (an
exponentially decaying noise impulse response), band-limiting (telephone band-pass or low-pass, by FFT masking) and
additive white or pink noise at a signal-to-noise ratio. An `Augmentation` holds every drawn parameter and a seed
for the random signals (impulse response, noise), so it is part of a `SpeechRequest` and the audio is a function of
the request. `draw_augmentation` draws one or two of the effects with their parameters from a `random.Random`.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import numpy as np

from examples.demo.tts import SAMPLE_RATE

EFFECTS: tuple[str, ...] = ("speed", "reverb", "band", "noise")
"""The effects `draw_augmentation` chooses from, in the order `apply_augmentation` applies them."""

SPEED_RANGE = (0.9, 1.1)
"""Speed factors (> 1 is faster: shorter, higher pitch and formants)."""

RT60_RANGE = (0.2, 0.6)
"""Reverberation times in seconds (decay by 60 dB)."""

WET_RANGE = (0.2, 0.5)
"""Share of the reverberant signal in the wet/dry mix."""

TELEPHONE_BAND = (300.0, 3400.0)
"""Pass band of the "telephone" band-limiting in Hz."""

LOWPASS_RANGE = (4000.0, 6000.0)
"""Cut-off frequencies of the "lowpass" band-limiting in Hz."""

SNR_RANGE = (10.0, 30.0)
"""Signal-to-noise ratios of the additive noise in dB."""

PEAK = 0.99
"""An augmented waveform whose peak exceeds this is scaled down to it (no clipping)."""

AUGMENTATION_SETTINGS: dict = dict(
    effects=EFFECTS, effects_per_utterance=(1, 2), speed=SPEED_RANGE, rt60=RT60_RANGE, wet=WET_RANGE,
    telephone=TELEPHONE_BAND, lowpass=LOWPASS_RANGE, snr_db=SNR_RANGE, noise=("white", "pink"), peak=PEAK,
)  # fmt: skip
"""What `draw_augmentation` draws from (recorded in a corpus's config)."""


@dataclass(frozen=True)
class Augmentation:
    """The drawn parameters of one utterance's augmentation; a neutral value turns an effect off.

    `speed`: resampling factor (1.0: off); `rt60`: reverberation time in s (0: off) with `wet`, the reverberant
    share of the mix; `band`: "" (off), "telephone" or "lowpass" (below `cutoff` Hz); `snr_db`: additive noise
    (None: off) of colour `noise` ("white" or "pink"); `seed`: the random signals (impulse response, noise).
    """

    speed: float = 1.0
    rt60: float = 0.0
    wet: float = 0.0
    band: str = ""
    cutoff: float = 0.0
    snr_db: float | None = None
    noise: str = "white"
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.5 <= self.speed <= 2.0:
            raise ValueError(f"Augmentation speed {self.speed} is outside 0.5-2.0; use a factor like 0.9-1.1.")
        if self.rt60 < 0 or not 0.0 <= self.wet <= 1.0:
            raise ValueError(f"Augmentation rt60 {self.rt60} s and wet {self.wet}: use rt60 >= 0 and wet in 0-1.")
        if self.band not in ("", "telephone", "lowpass"):
            raise ValueError(f"Augmentation band {self.band!r}: use '' (off), 'telephone' or 'lowpass'.")
        if self.band == "lowpass" and not 0 < self.cutoff < SAMPLE_RATE / 2:
            raise ValueError(f"Augmentation cutoff {self.cutoff} Hz: a low-pass needs one in 0-{SAMPLE_RATE // 2} Hz.")
        if self.noise not in ("white", "pink"):
            raise ValueError(f"Augmentation noise {self.noise!r}: use 'white' or 'pink'.")

    @property
    def effects(self) -> tuple[str, ...]:
        """The effects this augmentation applies, of `EFFECTS`."""
        on = {"speed": self.speed != 1.0, "reverb": self.rt60 > 0 and self.wet > 0, "band": bool(self.band),
              "noise": self.snr_db is not None}  # fmt: skip
        return tuple(effect for effect in EFFECTS if on[effect])


def draw_augmentation(rng: random.Random) -> Augmentation:
    """One or two of `EFFECTS`, with parameters from their ranges, and a seed for the random signals."""
    effects = rng.sample(EFFECTS, rng.randint(1, 2))
    parameters: dict = {}
    if "speed" in effects:
        parameters["speed"] = rng.uniform(*SPEED_RANGE)
    if "reverb" in effects:
        parameters.update(rt60=rng.uniform(*RT60_RANGE), wet=rng.uniform(*WET_RANGE))
    if "band" in effects:
        parameters["band"] = rng.choice(("telephone", "lowpass"))
        if parameters["band"] == "lowpass":
            parameters["cutoff"] = rng.uniform(*LOWPASS_RANGE)
    if "noise" in effects:
        parameters.update(snr_db=rng.uniform(*SNR_RANGE), noise=rng.choice(("white", "pink")))
    return Augmentation(**parameters, seed=rng.getrandbits(32))


def change_speed(audio: np.ndarray, factor: float) -> np.ndarray:
    """Resample so that the clip plays `factor` times faster at the same rate (length / factor samples; pitch and
    formants scale by `factor`): band-limited resampling in the frequency domain (the spectrum truncated or
    zero-padded), so nothing aliases."""
    length = len(audio)
    new_length = max(1, round(length / factor))
    if new_length == length or length == 0:
        return audio.astype(np.float32)
    spectrum = np.fft.rfft(audio.astype(np.float64))
    bins = new_length // 2 + 1
    resized = np.zeros(bins, dtype=np.complex128)
    kept = min(bins, len(spectrum))
    resized[:kept] = spectrum[:kept]
    if length % 2 == 0 and kept == len(spectrum) < bins:  # the old Nyquist bin stands for +-fs/2 together: split it
        resized[kept - 1] /= 2
    return (np.fft.irfft(resized, n=new_length) * (new_length / length)).astype(np.float32)


def _fft_convolve(signal: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Full linear convolution (length len(signal) + len(kernel) - 1) through the FFT."""
    length = len(signal) + len(kernel) - 1
    size = 1 << (length - 1).bit_length()
    product = np.fft.rfft(signal, size) * np.fft.rfft(kernel, size)
    return np.fft.irfft(product, size)[:length]


def impulse_response(rt60: float, rng: np.random.Generator) -> np.ndarray:
    """A synthetic room: Gaussian noise under an exponential envelope that decays 60 dB in `rt60` seconds (the
    response's length), with unit energy."""
    length = max(1, round(rt60 * SAMPLE_RATE))
    envelope = np.exp(-3 * math.log(10) * np.arange(length) / (rt60 * SAMPLE_RATE))  # 20 log10 = -60 dB at rt60
    response = rng.standard_normal(length) * envelope
    return response / np.sqrt(np.sum(response**2))


def reverberate(audio: np.ndarray, rt60: float, wet: float, rng: np.random.Generator) -> np.ndarray:
    """Mix `(1 - wet)` of the dry clip with `wet` of it convolved with `impulse_response(rt60)`; the result is longer
    than the clip by the response's length minus one sample: the reverberant tail rings on after the speech."""
    response = impulse_response(rt60, rng)
    reverberant = _fft_convolve(audio.astype(np.float64), response)
    dry = np.pad(audio.astype(np.float64), (0, len(response) - 1))
    return ((1 - wet) * dry + wet * reverberant).astype(np.float32)


def band_limit(audio: np.ndarray, band: str, cutoff: float = 0.0) -> np.ndarray:
    """Zero the clip's spectrum outside `TELEPHONE_BAND` (`band="telephone"`) or above `cutoff` Hz
    (`band="lowpass"`); the length is kept."""
    spectrum = np.fft.rfft(audio.astype(np.float64))
    frequencies = np.fft.rfftfreq(len(audio), 1 / SAMPLE_RATE)
    if band == "telephone":
        keep = (frequencies >= TELEPHONE_BAND[0]) & (frequencies <= TELEPHONE_BAND[1])
    elif band == "lowpass":
        keep = frequencies <= cutoff
    else:
        raise ValueError(f"band {band!r}: use 'telephone' or 'lowpass'.")
    return np.fft.irfft(spectrum * keep, n=len(audio)).astype(np.float32)


def noise_signal(length: int, color: str, rng: np.random.Generator) -> np.ndarray:
    """`length` samples of white noise, or pink noise (power falling as 1/f: white noise shaped in the frequency
    domain, no DC)."""
    white = rng.standard_normal(length)
    if color == "white":
        return white
    if color != "pink":
        raise ValueError(f"noise colour {color!r}: use 'white' or 'pink'.")
    spectrum = np.fft.rfft(white)
    frequencies = np.fft.rfftfreq(length, 1 / SAMPLE_RATE)
    scale = np.zeros_like(frequencies)
    scale[1:] = 1 / np.sqrt(frequencies[1:])
    return np.fft.irfft(spectrum * scale, n=length)


def add_noise(audio: np.ndarray, snr_db: float, color: str, rng: np.random.Generator) -> np.ndarray:
    """Add noise of `color` scaled so that the clip's mean power over the noise's is `snr_db` dB."""
    signal = audio.astype(np.float64)
    noise = noise_signal(len(signal), color, rng)
    signal_power, noise_power = float(np.mean(signal**2)), float(np.mean(noise**2))
    if signal_power == 0 or noise_power == 0:
        return audio.astype(np.float32)
    noise *= math.sqrt(signal_power / (noise_power * 10 ** (snr_db / 10)))
    return (signal + noise).astype(np.float32)


def apply_augmentation(audio: np.ndarray, augmentation: Augmentation) -> np.ndarray:
    """`augmentation`'s effects on a float waveform at `SAMPLE_RATE`, in the order of `EFFECTS`, scaled down to
    `PEAK` if its peak exceeds it; float32."""
    rng = np.random.default_rng(augmentation.seed)
    effects = augmentation.effects
    if "speed" in effects:
        audio = change_speed(audio, augmentation.speed)
    if "reverb" in effects:
        audio = reverberate(audio, augmentation.rt60, augmentation.wet, rng)
    if "band" in effects:
        audio = band_limit(audio, augmentation.band, augmentation.cutoff)
    if "noise" in effects:
        audio = add_noise(audio, augmentation.snr_db, augmentation.noise, rng)
    audio = np.asarray(audio, dtype=np.float32)
    peak = float(np.max(np.abs(audio))) if len(audio) else 0.0
    if peak > PEAK:
        audio = audio * np.float32(PEAK / peak)
    return audio
