"""Tests of load_audio: files, bytes, arrays, tensors and datasets Audio values to 16 kHz mono float32."""

import io

import datasets
import numpy as np
import pytest
import soundfile
import torch

from modeling_part.audio_utils import load_audio


def sine(frequency: float, sampling_rate: int, seconds: float = 1.0, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(sampling_rate * seconds)) / sampling_rate
    return (amplitude * np.sin(2 * np.pi * frequency * t)).astype(np.float32)


def peak_frequency(waveform: np.ndarray, sampling_rate: int = 16000) -> float:
    spectrum = np.abs(np.fft.rfft(waveform * np.hanning(len(waveform))))
    return float(np.fft.rfftfreq(len(waveform), 1 / sampling_rate)[spectrum.argmax()])


def wav_bytes(waveform: np.ndarray, sampling_rate: int = 16000, subtype: str = "PCM_16") -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, waveform, sampling_rate, format="WAV", subtype=subtype)
    return buffer.getvalue()


@pytest.mark.parametrize("subtype, resolution", [("PCM_16", 2**-15), ("PCM_24", 2**-23), ("FLOAT", 1e-7)])
def test_wav_file(tmp_path, subtype, resolution):
    waveform = sine(440, 16000)
    path = tmp_path / "clip.wav"
    soundfile.write(path, waveform, 16000, subtype=subtype)
    for source in (path, str(path)):
        loaded = load_audio(source)
        assert loaded.dtype == np.float32 and loaded.shape == waveform.shape
        np.testing.assert_allclose(loaded, waveform, atol=resolution)


def test_stereo_file_is_downmixed(tmp_path):
    left, right = sine(440, 16000), sine(1000, 16000, amplitude=0.25)
    path = tmp_path / "stereo.flac"
    soundfile.write(path, np.stack([left, right], axis=1), 16000)
    np.testing.assert_allclose(load_audio(path), (left + right) / 2, atol=2**-15)


def test_resampling_keeps_the_frequency(tmp_path):
    path = tmp_path / "cd.wav"
    soundfile.write(path, sine(1000, 44100, seconds=2.0), 44100)
    loaded = load_audio(path)
    assert abs(len(loaded) - 32000) <= 1
    assert peak_frequency(loaded) == pytest.approx(1000, abs=1.0)
    assert np.abs(loaded).max() == pytest.approx(0.5, abs=0.01)
    at_8k = load_audio(sine(1000, 44100), sampling_rate=44100, target_sampling_rate=8000)
    assert len(at_8k) == 8000 and peak_frequency(at_8k, 8000) == pytest.approx(1000, abs=1.0)


def test_unreadable_format_falls_back_to_asrfront(tmp_path):
    pcm = (sine(440, 16000) * 32767).astype("<i2")
    path = tmp_path / "stream.pcm"  # headerless s16le: soundfile cannot open it, asrfront reads it
    path.write_bytes(pcm.tobytes())
    np.testing.assert_allclose(load_audio(path), pcm / 32768, atol=1e-7)


def test_float32_16k_array_is_not_copied():
    waveform = sine(440, 16000)
    loaded = load_audio(waveform, sampling_rate=16000)
    assert np.shares_memory(loaded, waveform)


@pytest.mark.parametrize(
    "pcm, full_scale",
    [
        ((sine(440, 16000) * 32767).astype(np.int16), 32768),
        ((sine(440, 16000) * 2**31).astype(np.int32), 2**31),
        ((sine(440, 16000) * 127 + 128).astype(np.uint8), None),
    ],
)
def test_integer_pcm_arrays_are_scaled(pcm, full_scale):
    loaded = load_audio(pcm, sampling_rate=16000)
    assert loaded.dtype == np.float32
    expected = (pcm.astype(np.float64) - 128) / 128 if full_scale is None else pcm / full_scale
    np.testing.assert_allclose(loaded, expected, atol=1e-6)


def test_multichannel_array_layouts():
    left, right = sine(440, 16000), sine(880, 16000)
    expected = (left + right) / 2
    frames_first = np.stack([left, right], axis=1)  # (frames, channels), as soundfile returns
    np.testing.assert_allclose(load_audio(frames_first, 16000), expected, atol=1e-7)
    np.testing.assert_allclose(load_audio(frames_first.T, 16000), expected, atol=1e-7)  # (channels, frames)
    np.testing.assert_allclose(load_audio(frames_first.astype(np.float64), 16000), expected, atol=1e-7)
    six_channels = np.tile(left[:, None], (1, 6))
    np.testing.assert_allclose(load_audio(six_channels.T, 16000), left, atol=1e-7)
    mono_column = left[:, None]
    np.testing.assert_allclose(load_audio(mono_column, 16000), left)


def test_torch_tensors():
    waveform = sine(440, 16000)
    np.testing.assert_array_equal(load_audio(torch.from_numpy(waveform), sampling_rate=16000), waveform)
    stereo = torch.from_numpy(np.stack([waveform, waveform]))  # (channels, frames), as torchcodec returns
    np.testing.assert_allclose(load_audio(stereo, sampling_rate=16000), waveform, atol=1e-7)
    at_48k = load_audio(torch.from_numpy(sine(440, 48000)).double(), sampling_rate=48000)
    assert len(at_48k) == 16000 and peak_frequency(at_48k) == pytest.approx(440, abs=1.0)


def stored_undecoded(value) -> dict:
    """The value as a datasets column of `Audio(decode=False)` stores and returns it."""
    dataset = datasets.Dataset.from_dict({"audio": [value]}).cast_column("audio", datasets.Audio(decode=False))
    return dataset[0]["audio"]


def test_datasets_audio_values(tmp_path):
    waveform = sine(440, 22050)
    path = tmp_path / "clip.wav"
    soundfile.write(path, waveform, 22050, subtype="FLOAT")
    expected = load_audio(waveform, sampling_rate=22050)
    assert len(expected) == 16000

    decoded = {"array": waveform.astype(np.float64), "sampling_rate": 22050, "path": None}
    np.testing.assert_allclose(load_audio(decoded), expected, atol=1e-6)

    undecoded_path = stored_undecoded(str(path))
    assert undecoded_path["bytes"] is None
    np.testing.assert_allclose(load_audio(undecoded_path), expected, atol=1e-6)

    embedded = {"path": "clip.wav", "bytes": path.read_bytes()}  # the path need not exist when bytes are given
    np.testing.assert_allclose(load_audio(stored_undecoded(embedded)), expected, atol=1e-6)
    np.testing.assert_allclose(load_audio(path.read_bytes()), expected, atol=1e-6)


def test_audio_decoder_objects():
    class Samples:  # the part of torchcodec's AudioSamples that load_audio reads: (channels, frames)
        data = torch.from_numpy(np.stack([sine(440, 8000)] * 10))  # more channels than an array's inferred layout
        sample_rate = 8000

    class Decoder:  # datasets >= 4 returns torchcodec AudioDecoders for Audio(decode=True)
        def get_all_samples(self):
            return Samples()

    loaded = load_audio(Decoder())
    assert len(loaded) == 16000 and peak_frequency(loaded) == pytest.approx(440, abs=1.0)


@pytest.mark.parametrize(
    "audio, sampling_rate, match",
    [
        (np.zeros(100, np.float32), None, "sampling_rate="),
        (torch.zeros(100), None, "sampling_rate="),
        (np.zeros(0, np.float32), 16000, "empty"),
        (np.zeros((0, 2), np.float32), 16000, "empty"),
        (np.array([0.0, np.nan, 0.1], np.float32), 16000, "NaN or inf"),
        (np.array([0.0, np.inf], np.float64), 16000, "NaN or inf"),
        (np.zeros((2, 2, 100), np.float32), 16000, "shape"),
        (np.zeros(100, bool), 16000, "dtype"),
        (np.zeros(100, np.float32), 0, "positive"),
        (np.zeros(100, np.float32), "16k", "number"),
        ([0.0, 0.1], 16000, "unsupported audio input of type list"),
        (42, None, "unsupported audio input of type int"),
        ({"array": np.zeros(100, np.float32)}, None, "sampling_rate"),
        ({"path": None, "bytes": None}, None, "no audio"),
        ({"array": np.zeros(0, np.float32), "sampling_rate": 16000}, None, "empty"),
        (b"definitely not audio", None, "cannot decode"),
        ({"path": "x.wav", "bytes": b"definitely not audio"}, None, "cannot decode"),
    ],
)
def test_errors_name_the_sample(audio, sampling_rate, match):
    with pytest.raises(ValueError, match=match) as error:
        load_audio(audio, sampling_rate, name="utt-42")
    assert "utt-42" in str(error.value)


def test_file_errors_name_the_sample(tmp_path):
    with pytest.raises(FileNotFoundError, match="utt-7"):
        load_audio(tmp_path / "missing.wav", name="utt-7")
    garbage = tmp_path / "broken.wav"
    garbage.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk" * 3)
    with pytest.raises(ValueError, match="utt-7.*cannot decode.*ffmpeg"):
        load_audio(garbage, name="utt-7")
    silent = tmp_path / "silent.wav"
    soundfile.write(silent, np.zeros(0, np.float32), 16000)
    with pytest.raises(ValueError, match="utt-7.*empty"):
        load_audio(silent, name="utt-7")
