"""In-process speech synthesis for the demo corpus with two engines: espeak-ng (from the `espeakng-loader` wheel)
and SVOX Pico (from the `py-nanotts` wheel).

`EspeakSynthesizer` drives libespeak-ng through ctypes in synchronous mode, `PicoSynthesizer` calls py-nanotts;
`render_request` turns either's output into 16 kHz int16 audio, and `synthesize_batch` spreads many utterances over
worker processes. espeak-ng keeps synthesis state in C statics (pitch flutter, glottal phase) that no API call
resets, so an utterance's samples depend on what the process spoke before. To make audio a function of the request
list alone, work is cut into fixed shards and every shard runs in a fresh worker process, whatever the number of
workers. (Pico reads memory it never wrote, see `PicoSynthesizer`, which makes every call start from zeroed memory.)
"""

from __future__ import annotations

import ctypes
import io
import multiprocessing
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from examples.demo.augment import Augmentation

SAMPLE_RATE = 16_000
"""Sampling rate of the audio this module returns."""

ESPEAK_SAMPLE_RATE = 22_050
"""Native rate of espeak-ng's formant synthesizer."""

PICO_SAMPLE_RATE = 16_000
"""Native rate of SVOX Pico (py-nanotts returns 16-bit mono PCM at this rate)."""

ENGINES: tuple[str, ...] = ("espeak", "pico")
"""Synthesizers a `SpeechRequest` can name."""

VOICE_VARIANTS: tuple[str, ...] = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5")
"""espeak-ng voice variants (files in `espeak-ng-data/voices/!v`) used as speakers; "" is the plain voice."""

# espeak_lib.h constants.
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_DONT_EXIT = 0x8000
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_PARAM_RATE = 1
_PARAM_VOLUME = 2
_PARAM_PITCH = 3
_EE_OK = 0
_EE_NOT_FOUND = 2

_SynthCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


class EspeakError(RuntimeError):
    """espeak-ng could not be loaded, or rejected a voice or a text."""


class PicoError(RuntimeError):
    """SVOX Pico (py-nanotts) could not be loaded, or rejected a voice, a prosody or a text."""


@dataclass(frozen=True)
class SpeechRequest:
    """One utterance to synthesize: the text, the engine's voice (espeak `"de+f3"`, Pico `"de-DE"`), its prosody, and
    the engine (`ENGINES`). Rate and pitch are on espeak's scales for both engines (Pico maps them, see
    `PicoSynthesizer.synthesize`). An `augmentation` (training utterances only) is applied to the rendered waveform."""

    text: str
    voice: str
    rate: int = 175  # words per minute (espeak's default is 175)
    pitch: int = 50  # 0-100, 50 is the voice's own base pitch
    gain: float = 1.0  # linear gain applied to the waveform
    lead_silence: float = 0.0  # seconds of background noise before the speech
    trail_silence: float = 0.0  # ... and after it
    noise_level: float = 0.0  # standard deviation (full scale = 1) of Gaussian background noise
    seed: int = 0  # seeds the background noise
    engine: str = "espeak"  # the synthesizer, one of ENGINES
    augmentation: Augmentation | None = None  # effects applied after synthesis (`examples/demo/augment.py`)


def _espeak_paths() -> tuple[str, str]:
    """Return (library path, data path) from the `espeakng-loader` package."""
    try:
        import espeakng_loader
    except ImportError as error:
        raise EspeakError(
            "The demo corpus synthesises speech with espeak-ng from the `espeakng-loader` package. "
            "Install it with `pip install espeakng-loader` (or `pip install -e '.[demo]'`)."
        ) from error
    library_path = espeakng_loader.get_library_path()
    if not Path(library_path).exists():
        raise EspeakError(
            f"espeakng-loader has no espeak-ng library at {library_path}; this platform may lack a wheel. "
            "Reinstall with `pip install --force-reinstall espeakng-loader`."
        )
    return library_path, espeakng_loader.get_data_path()


class EspeakSynthesizer:
    """libespeak-ng, loaded through ctypes, speaking text to int16 arrays.

    The library is process-global and not thread safe: create one synthesizer per process.
    """

    sample_rate = ESPEAK_SAMPLE_RATE

    def __init__(self) -> None:
        library_path, data_path = _espeak_paths()
        self.data_path = Path(data_path)
        self._lib = ctypes.CDLL(library_path)
        lib = self._lib
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_SetParameter.restype = ctypes.c_int
        lib.espeak_Synth.argtypes = [
            ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
            ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p,
        ]  # fmt: skip
        lib.espeak_Synth.restype = ctypes.c_int
        lib.espeak_Synchronize.restype = ctypes.c_int
        lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]

        rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, str(self.data_path).encode(), _INITIALIZE_DONT_EXIT)
        if rate != ESPEAK_SAMPLE_RATE:
            raise EspeakError(f"espeak_Initialize failed (returned {rate}) with data at {self.data_path}.")
        self._chunks: list[np.ndarray] = []
        self._callback = _SynthCallback(self._collect)  # keep a reference: the C side stores only the pointer
        lib.espeak_SetSynthCallback(self._callback)
        self._voice: str | None = None

    def _collect(self, wav: ctypes.POINTER(ctypes.c_short), num_samples: int, events: int) -> int:
        if wav and num_samples > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(num_samples,)).copy())
        return 0  # 0 = continue

    def set_voice(self, voice: str) -> None:
        """Select `voice` ("language[+variant]", e.g. "cmn" or "de+f3"); raise if espeak lacks it."""
        if voice == self._voice:
            return
        language, _, variant = voice.partition("+")
        if variant and not (self.data_path / "voices" / "!v" / variant).exists():
            raise EspeakError(
                f"espeak-ng voice variant {variant!r} (in voice {voice!r}) is not in "
                f"{self.data_path / 'voices' / '!v'}; "
                f"use one of {', '.join(VOICE_VARIANTS)}."
            )
        dictionary = self.data_path / f"{language.split('-')[0]}_dict"
        if not dictionary.exists():
            raise EspeakError(
                f"espeak-ng has no dictionary {dictionary.name} for voice {voice!r} under {self.data_path}. "
                "Reinstall the voice data with `pip install --force-reinstall espeakng-loader`, or drop this language."
            )
        status = self._lib.espeak_SetVoiceByName(voice.encode())
        if status != _EE_OK:
            reason = "not found" if status == _EE_NOT_FOUND else f"error {status}"
            raise EspeakError(
                f"espeak-ng voice {language!r} ({reason}) under {self.data_path}. The voice data ships with "
                "`espeakng-loader`; reinstall it (`pip install --force-reinstall espeakng-loader`) or drop "
                f"this language. Voices the demo uses: {', '.join(sorted(set(BASE_VOICES.values())))}."
            )
        self._voice = voice

    def synthesize(self, text: str, voice: str, rate: int = 175, pitch: int = 50) -> np.ndarray:
        """Speak `text` with `voice`; return int16 samples at `ESPEAK_SAMPLE_RATE`."""
        self.set_voice(voice)
        self._lib.espeak_SetParameter(_PARAM_RATE, int(rate), 0)
        self._lib.espeak_SetParameter(_PARAM_PITCH, int(pitch), 0)
        self._lib.espeak_SetParameter(_PARAM_VOLUME, 100, 0)
        self._lib.espeak_ng_SetRandSeed(0)
        self._chunks = []
        data = text.encode("utf-8")
        status = self._lib.espeak_Synth(data, len(data) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
        if status != _EE_OK:
            raise EspeakError(f"espeak_Synth failed with status {status} for voice {voice!r} and text {text!r}.")
        self._lib.espeak_Synchronize()
        if not self._chunks:
            raise EspeakError(f"espeak-ng produced no audio for voice {voice!r} and text {text!r}.")
        return np.concatenate(self._chunks)


PICO_VOICES: dict[str, str] = {"en": "en-US", "de": "de-DE", "fr": "fr-FR", "es": "es-ES", "it": "it-IT"}
"""Pico voice for each demo language it speaks (it also has "en-GB"); Pico has no ru, zh or ja."""

PICO_VOLUME = 0.5
"""Pico's volume multiplier: at its default (1.0) it clips about 0.5% of the samples of a sentence; at 0.5 none."""

_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter


def _load_pico():
    """The `py_nanotts` module, or a `PicoError` saying how to install it."""
    try:
        import py_nanotts
    except ImportError as error:
        raise PicoError(
            "The demo's second synthesizer is SVOX Pico from the `py-nanotts` package, which is missing or does not "
            f"load ({error}). Install it with `pip install -e '.[demo]'` (or `pip install py-nanotts==0.1.1`), or "
            "turn off what it speaks (run_demo.py --other_engine_test false --train_pico_share 0)."
        ) from error
    return py_nanotts


class PicoSynthesizer:
    """SVOX Pico through py-nanotts, speaking text to int16 arrays at `PICO_SAMPLE_RATE`.

    Every py-nanotts call mallocs a fresh 2.5 MB Pico work area and Pico reads some of it before writing it, so with
    glibc's default (a freed large block is reused from the heap) a call's samples depend on earlier calls. The
    constructor fixes glibc's mmap threshold at 64 KiB, so every work area is a new, zeroed mapping and a request's
    samples depend on the request alone. That setting is process-wide: create the synthesizer in a worker process
    (as `synthesize_batch` does), not in a process whose allocations matter.
    """

    sample_rate = PICO_SAMPLE_RATE

    def __init__(self) -> None:
        module = _load_pico()
        try:
            mallopt = ctypes.CDLL(None).mallopt
        except AttributeError as error:
            raise PicoError(
                "Deterministic Pico synthesis needs glibc's mallopt (Linux), which this C library lacks; turn off "
                "Pico (run_demo.py --other_engine_test false --train_pico_share 0)."
            ) from error
        mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        if mallopt(_M_MMAP_THRESHOLD, 64 * 1024) != 1:
            raise PicoError("mallopt(M_MMAP_THRESHOLD) failed; Pico's audio would depend on earlier calls.")
        self._tts = module.NanoTTS()
        self._voices = {voice.value for voice in module.Voice}
        self._speed_range = (module.MIN_SPEED, module.MAX_SPEED)
        self._pitch_range = (module.MIN_PITCH, module.MAX_PITCH)

    def synthesize(self, text: str, voice: str, rate: int = 175, pitch: int = 50) -> np.ndarray:
        """Speak `text` with Pico `voice` ("de-DE"); return int16 samples at `PICO_SAMPLE_RATE`.

        espeak's scales map to Pico's multipliers: speed = rate / 175 (espeak's default rate is Pico's own speed),
        pitch factor = pitch / 50 (espeak's 50 is the voice's own pitch; Pico takes 0.5-2.0, so pitch 25-100).
        """
        if voice not in self._voices:
            raise PicoError(f"Pico has no voice {voice!r}; it has {', '.join(sorted(self._voices))}.")
        speed, factor = rate / 175, pitch / 50
        for name, value, (low, high) in (("speed", speed, self._speed_range), ("pitch", factor, self._pitch_range)):
            if not low <= value <= high:
                raise PicoError(
                    f"rate {rate} and pitch {pitch} give Pico {name} {value:.2f}, outside its {low}-{high}: "
                    f"use rate {round(175 * self._speed_range[0])}-{round(175 * self._speed_range[1])} and pitch "
                    f"{round(50 * self._pitch_range[0])}-{round(50 * self._pitch_range[1])}."
                )
        if "<" in text:  # py-nanotts wraps the text in Pico's XML-like prosody tags
            raise PicoError(f"Pico reads '<' as the start of a tag; text {text!r} would not be spoken as written.")
        pcm = self._tts.speak(text, voice=voice, speed=speed, pitch=factor, volume=PICO_VOLUME)
        if not pcm:
            raise PicoError(f"Pico produced no audio for voice {voice!r} and text {text!r}.")
        return np.frombuffer(pcm, dtype="<i2").astype(np.int16)


BASE_VOICES: dict[str, str] = {
    "en": "en-us",
    "de": "de",
    "fr": "fr",
    "es": "es",
    "it": "it",
    "ru": "ru",
    "zh": "cmn",
    "ja": "ja",
}
"""espeak-ng voice for each demo language code (Mandarin is espeak's "cmn")."""


def to_wav_bytes(samples: np.ndarray, sample_rate: int = SAMPLE_RATE) -> bytes:
    """Encode int16 mono samples as a 16-bit PCM WAV file in memory."""
    import soundfile

    buffer = io.BytesIO()
    soundfile.write(buffer, samples, sample_rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def render_request(synthesizer: EspeakSynthesizer | PicoSynthesizer, request: SpeechRequest) -> np.ndarray:
    """Synthesize `request` with `synthesizer` (of `request.engine`); return int16 samples at `SAMPLE_RATE` (soxr
    resampling where the engine's rate differs, gain, padding, noise floor, then `request.augmentation`, after which
    a peak above 0.99 is scaled down rather than clipped)."""
    import soxr

    native = synthesizer.synthesize(request.text, request.voice, request.rate, request.pitch)
    audio = native.astype(np.float32) / 32768.0
    if synthesizer.sample_rate != SAMPLE_RATE:
        audio = soxr.resample(audio, synthesizer.sample_rate, SAMPLE_RATE, quality="HQ")
    pad = (round(request.lead_silence * SAMPLE_RATE), round(request.trail_silence * SAMPLE_RATE))
    audio = np.pad(audio * request.gain, pad)
    if request.noise_level > 0:
        noise = np.random.default_rng(request.seed).standard_normal(len(audio), dtype=np.float32)
        audio = audio + request.noise_level * noise
    if request.augmentation is not None:
        from examples.demo.augment import apply_augmentation

        audio = apply_augmentation(audio, request.augmentation)
    audio = np.clip(audio, -1.0, 32767 / 32768)
    return np.round(audio * 32768.0).astype(np.int16)


_SYNTHESIZERS = {"espeak": EspeakSynthesizer, "pico": PicoSynthesizer}


def _check_engines(requests: Sequence[SpeechRequest]) -> None:
    """Raise, in the caller, if a request names an unknown engine or an engine that is not installed."""
    engines = {request.engine for request in requests}
    unknown = sorted(engines - set(ENGINES))
    if unknown:
        raise ValueError(f"Unknown speech engines {unknown}; a SpeechRequest's engine is one of {', '.join(ENGINES)}.")
    if "espeak" in engines:
        _espeak_paths()
    if "pico" in engines:
        _load_pico()


def _synthesize_shard(requests: Sequence[SpeechRequest]) -> list[tuple[bytes, int]]:
    """Worker entry point: speak a shard in this (fresh) process; return (wav bytes, number of samples) each."""
    synthesizers: dict[str, EspeakSynthesizer | PicoSynthesizer] = {}
    results = []
    for request in requests:
        if request.engine not in synthesizers:
            synthesizers[request.engine] = _SYNTHESIZERS[request.engine]()
        samples = render_request(synthesizers[request.engine], request)
        results.append((to_wav_bytes(samples), len(samples)))
    return results


def _start_method() -> str:
    # forkserver forks each worker from a clean server process: cheap, and no state of the caller
    # (torch threads, an already loaded espeak) leaks in. spawn is the portable fallback.
    return "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"


def synthesize_batch(
    requests: Sequence[SpeechRequest],
    num_workers: int = 2,
    shard_size: int = 128,
    progress: bool = True,
    description: str = "synthesising",
) -> Iterator[tuple[bytes, int]]:
    """Yield (wav bytes at 16 kHz, number of samples) for each request, in order.

    Every shard of `shard_size` requests is spoken by a new worker process, so the audio depends on
    the requests (and `shard_size`) only, not on `num_workers` or scheduling.
    """
    from tqdm.auto import tqdm

    if num_workers < 1:
        raise ValueError(f"num_workers must be >= 1 (got {num_workers}); synthesis always runs in worker processes.")
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1 (got {shard_size}).")
    _check_engines(requests)  # fail early, in the caller, if an engine is missing
    shards = [list(requests[start : start + shard_size]) for start in range(0, len(requests), shard_size)]
    context = multiprocessing.get_context(_start_method())
    workers = max(1, min(num_workers, len(shards), os.cpu_count() or 1))
    with tqdm(total=len(requests), desc=description, unit="utt", disable=not progress) as bar:
        with context.Pool(workers, maxtasksperchild=1) as pool:
            for shard_results in pool.imap(_synthesize_shard, shards):
                bar.update(len(shard_results))
                yield from shard_results
