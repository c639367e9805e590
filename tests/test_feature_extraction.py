"""Tests of PartFeatureExtractor: kaldi fbank vs kaldi-native-fbank, asrfront vs numpy backends, LFR, CMVN,
Whisper log-mel vs transformers' WhisperFeatureExtractor, and num_frames == mask sum."""

import json

import numpy as np
import pytest
import torch
from transformers import WhisperFeatureExtractor

from modeling_part import feature_extraction_part
from modeling_part.feature_extraction_part import PartFeatureExtractor, apply_lfr, kaldi_fbank, kaldi_num_frames

# Tolerances (max abs difference of the features):
# numpy fbank vs kaldi-native-fbank, natural-log mel energies: measured <= 6e-4, mostly kaldi-native-fbank's own
# float32 rounding (a float64 run of our numpy code is 1.4e-4 from our float32 one)
KALDI_TOLERANCE = 1e-3
BACKEND_TOLERANCE = 1e-3  # asrfront vs numpy backend (measured 2e-4 sensevoice, 1e-4 with CMVN, 1e-5 whisper)
WHISPER_TOLERANCE = 1e-4  # vs transformers' WhisperFeatureExtractor, scaled log10 mel (measured 4e-5)
# The same features computed through differently shaped matrix products (blocks, batches, padding) agree to float32
# rounding, not bit for bit: BLAS blocks its kernels by shape and CPU (seen: 1.9e-6 on an AMD EPYC, on log-mel values
# of magnitude up to ~15). Computations of the same shape stay compared exactly.
FLOAT32_ROUNDING = {"rtol": 1e-5, "atol": 1e-5}

# Lengths around every frame-count boundary: kaldi's 400-sample first frame, the 160-sample shift, LFR's
# 6-frame groups, Whisper's 160-sample hop and 30 s cap.
EDGE_LENGTHS = [1, 159, 160, 161, 399, 400, 401, 559, 560, 561, 1199, 1200, 1201, 1360, 1361, 16000, 16001]
EDGE_LENGTHS += [479_999, 480_000, 480_001, 500_000]


def speech_like(num_samples: int, seed: int = 0) -> np.ndarray:
    """Tones with vibrato, a chirp and noise, amplitude-modulated like syllables: float32 in [-1, 1]."""
    rng = np.random.default_rng(seed)
    t = np.arange(num_samples) / 16000
    signal = 0.3 * np.sin(2 * np.pi * (220 * t + 3 * np.sin(2 * np.pi * 5 * t)))
    signal += 0.15 * np.sin(2 * np.pi * 1250 * t) + 0.1 * np.sin(2 * np.pi * (300 + 400 * t) * t)
    signal *= 0.6 + 0.4 * np.sin(2 * np.pi * 4 * t)
    signal += 0.03 * rng.standard_normal(num_samples)
    return signal.astype(np.float32)


def reference_kaldi_fbank(waveform: np.ndarray) -> np.ndarray:
    """FunASR's WavFrontend fbank computed by kaldi-native-fbank on the int16-scaled waveform."""
    import kaldi_native_fbank as knf  # a test dependency (setup.py extra "test"): never skipped
    options = knf.FbankOptions()
    options.frame_opts.samp_freq = 16000
    options.frame_opts.dither = 0.0
    options.frame_opts.window_type = "hamming"
    options.frame_opts.snip_edges = True
    options.mel_opts.num_bins = 80
    options.energy_floor = 0.0
    fbank = knf.OnlineFbank(options)
    fbank.accept_waveform(16000, (waveform * 32768).tolist())
    fbank.input_finished()
    return np.array([fbank.get_frame(i) for i in range(fbank.num_frames_ready)], dtype=np.float32)


def reference_lfr(features: np.ndarray, lfr_m: int, lfr_n: int) -> np.ndarray:
    """FunASR's apply_lfr, frame by frame."""
    num_frames = features.shape[0]
    padded = np.concatenate([np.repeat(features[:1], (lfr_m - 1) // 2, axis=0), features])
    available = num_frames + (lfr_m - 1) // 2
    rows = []
    for i in range(-(-num_frames // lfr_n)):
        window = padded[i * lfr_n : i * lfr_n + lfr_m]
        if lfr_m > available - i * lfr_n:  # last window: repeat the last frame
            window = np.concatenate([window, np.repeat(padded[-1:], lfr_m - window.shape[0], axis=0)])
        rows.append(window.reshape(-1))
    return np.stack(rows)


def max_abs_diff(a, b) -> float:
    return float(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)).max())


@pytest.mark.parametrize("num_samples", [400, 1234, 16000, 48000 + 77])
def test_numpy_fbank_matches_kaldi_native_fbank(num_samples):
    waveform = speech_like(num_samples, seed=num_samples)
    reference = reference_kaldi_fbank(waveform)
    ours = kaldi_fbank(waveform)
    assert ours.shape == reference.shape == (kaldi_num_frames(num_samples), 80)
    assert max_abs_diff(ours, reference) < KALDI_TOLERANCE


def test_numpy_fbank_long_clip_is_computed_in_blocks(monkeypatch):
    waveform = speech_like(16000 * 3)
    whole = kaldi_fbank(waveform)
    monkeypatch.setattr(feature_extraction_part, "FBANK_FRAMES_PER_BLOCK", 7)
    np.testing.assert_allclose(kaldi_fbank(waveform), whole, **FLOAT32_ROUNDING)


@pytest.mark.parametrize("num_frames", [1, 2, 5, 6, 7, 12, 13, 100])
def test_apply_lfr_matches_funasr(num_frames):
    features = np.random.default_rng(num_frames).standard_normal((num_frames, 80)).astype(np.float32)
    stacked = apply_lfr(features, lfr_m=7, lfr_n=6)
    assert stacked.shape == (-(-num_frames // 6), 560)
    np.testing.assert_array_equal(stacked, reference_lfr(features, 7, 6))
    # first window: the first frame three times on the left; last window ends with the last frame
    np.testing.assert_array_equal(stacked[0, :80], features[0])
    np.testing.assert_array_equal(stacked[0, 3 * 80 : 4 * 80], features[0])
    np.testing.assert_array_equal(stacked[-1, -80:], features[min(num_frames - 1, (len(stacked) - 1) * 6 + 3)])


def test_apply_lfr_of_no_frames():
    assert apply_lfr(np.zeros((0, 80), np.float32)).shape == (0, 560)


def test_sensevoice_batch_shapes_padding_and_mask():
    lengths = [16000, 400, 7777, 100]
    clips = [speech_like(n, seed=i) for i, n in enumerate(lengths)]
    extractor = PartFeatureExtractor(backend="numpy")
    batch = extractor(clips, sampling_rate=16000)
    features, mask = batch["input_features"], batch["feature_attention_mask"]
    expected = [extractor.num_frames(n) for n in lengths]
    assert expected == [17, 1, 8, 0]
    assert isinstance(features, torch.Tensor) and features.dtype == torch.float32
    assert features.shape == (4, 17, 560) and mask.shape == (4, 17)
    assert mask.sum(-1).tolist() == expected
    for i, (clip, n) in enumerate(zip(clips, expected, strict=True)):
        alone = apply_lfr(kaldi_fbank(clip))
        np.testing.assert_allclose(features[i, :n].numpy(), alone, **FLOAT32_ROUNDING)
        assert torch.all(features[i, n:] == 0)
        assert torch.all(mask[i, :n] == 1) and torch.all(mask[i, n:] == 0)


def test_sensevoice_padding_options():
    clips = [speech_like(16000), speech_like(4000)]
    extractor = PartFeatureExtractor()
    unpadded = extractor(clips, return_tensors=None, padding=False)
    assert [f.shape for f in unpadded["input_features"]] == [(17, 560), (4, 560)]
    assert [int(m.sum()) for m in unpadded["feature_attention_mask"]] == [17, 4]
    padded = extractor(clips, return_tensors="np", pad_to_multiple_of=8)
    assert padded["input_features"].shape == (2, 24, 560)
    assert padded["feature_attention_mask"].sum(-1).tolist() == [17, 4]
    np.testing.assert_allclose(padded["input_features"][0, :17], unpadded["input_features"][0], **FLOAT32_ROUNDING)
    filled = PartFeatureExtractor(padding_value=-1.0)(clips, return_tensors="np")
    assert np.all(filled["input_features"][1, 4:] == -1.0)
    single = extractor(clips[1], return_tensors="np")
    assert single["input_features"].shape == (1, 4, 560)


@pytest.mark.parametrize("with_cmvn", [False, True])
def test_sensevoice_backends_agree(with_cmvn):
    clips = [speech_like(n, seed=n) for n in (16000 * 4, 12345, 401)]
    numpy_fe = PartFeatureExtractor(backend="numpy")
    asrfront_fe = PartFeatureExtractor(backend="asrfront")
    if with_cmvn:
        numpy_fe.fit_cmvn(clips)
        asrfront_fe.cmvn_mean, asrfront_fe.cmvn_istd = numpy_fe.cmvn_mean, numpy_fe.cmvn_istd
    expected = numpy_fe(clips, return_tensors="np")
    actual = asrfront_fe(clips, return_tensors="np")
    np.testing.assert_array_equal(actual["feature_attention_mask"], expected["feature_attention_mask"])
    assert max_abs_diff(actual["input_features"], expected["input_features"]) < BACKEND_TOLERANCE


def test_auto_backend_falls_back_to_numpy_without_asrfront(monkeypatch):
    clip = speech_like(8000)
    with_asrfront = PartFeatureExtractor()(clip, return_tensors="np")["input_features"]
    monkeypatch.setattr(feature_extraction_part, "asrfront_sensevoice", None)
    monkeypatch.setattr(feature_extraction_part, "asrfront_whisper", None)
    extractor = PartFeatureExtractor()
    assert not extractor._uses_asrfront()
    np.testing.assert_array_equal(extractor(clip, return_tensors="np")["input_features"], kaldi_fbank_lfr(clip))
    assert max_abs_diff(with_asrfront, kaldi_fbank_lfr(clip)[None]) < BACKEND_TOLERANCE
    with pytest.raises(ImportError, match="pip install asrfront"):
        PartFeatureExtractor(backend="asrfront")


def kaldi_fbank_lfr(clip: np.ndarray) -> np.ndarray:
    return apply_lfr(kaldi_fbank(clip))[None]


def test_fit_cmvn_normalises_and_round_trips(tmp_path):
    clips = [speech_like(16000 + 800 * i, seed=i) for i in range(6)] + [speech_like(100)]
    extractor = PartFeatureExtractor().fit_cmvn(iter(clips), batch_size=4)
    assert len(extractor.cmvn_mean) == len(extractor.cmvn_istd) == 560
    batch = extractor(clips, return_tensors="np")
    valid = batch["input_features"][batch["feature_attention_mask"].astype(bool)]
    assert np.abs(valid.mean(axis=0)).max() < 1e-3
    assert np.abs(valid.std(axis=0) - 1).max() < 1e-3

    extractor.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert saved["front_end"] == "sensevoice" and len(saved["cmvn_mean"]) == 560
    reloaded = PartFeatureExtractor.from_pretrained(tmp_path)
    assert reloaded.to_dict() == extractor.to_dict()
    np.testing.assert_array_equal(reloaded(clips, return_tensors="np")["input_features"], batch["input_features"])


def test_load_cmvn_reads_funasr_am_mvn(tmp_path):
    rng = np.random.default_rng(0)
    shift, scale = -rng.uniform(5, 15, 560), rng.uniform(0.1, 0.5, 560)

    def vector(values):
        return "<LearnRateCoef> 0 [ " + " ".join(f"{v:.6f}" for v in values) + " ]"

    am_mvn = tmp_path / "am.mvn"
    am_mvn.write_text(
        "<Nnet>\n<Splice> 560 560\n[ 0 ]\n<AddShift> 560 560\n" + vector(shift) + "\n"
        "<Rescale> 560 560\n" + vector(scale) + "\n</Nnet>\n"
    )
    clip = speech_like(16000)
    plain = PartFeatureExtractor()(clip, return_tensors="np")["input_features"]
    extractor = PartFeatureExtractor().load_cmvn(am_mvn)
    np.testing.assert_allclose(extractor.cmvn_mean, -shift, atol=1e-6)
    np.testing.assert_allclose(extractor.cmvn_istd, scale, atol=1e-6)
    for backend in ("asrfront", "numpy"):
        extractor.backend = backend
        normalised = extractor(clip, return_tensors="np")["input_features"]
        np.testing.assert_allclose(normalised, (plain + shift) * scale, atol=1e-4)


@pytest.mark.parametrize("backend", ["asrfront", "numpy"])
@pytest.mark.parametrize("n_mels", [80, 128])
def test_whisper_matches_transformers(backend, n_mels):
    lengths = [16000, 16001, 117_213, 500_000]
    clips = [speech_like(n, seed=n) for n in lengths]
    reference = WhisperFeatureExtractor(feature_size=n_mels)(
        clips, sampling_rate=16000, return_attention_mask=True, return_tensors="np"
    )
    ours = PartFeatureExtractor(front_end="whisper", feature_size=n_mels, backend=backend)(
        clips, sampling_rate=16000, return_tensors="np"
    )
    assert ours["input_features"].shape == (4, n_mels, 3000)
    assert max_abs_diff(ours["input_features"], reference["input_features"]) < WHISPER_TOLERANCE
    if backend == "numpy":  # without asrfront the Whisper front end is WhisperFeatureExtractor itself
        np.testing.assert_array_equal(ours["input_features"], reference["input_features"])
    np.testing.assert_array_equal(ours["feature_attention_mask"], reference["attention_mask"])


def test_whisper_other_mel_sizes_use_numpy():
    extractor = PartFeatureExtractor(front_end="whisper", feature_size=64)
    assert not extractor._uses_asrfront()
    reference = WhisperFeatureExtractor(feature_size=64)(speech_like(8000), sampling_rate=16000, return_tensors="np")
    ours = extractor(speech_like(8000), return_tensors="np")
    assert max_abs_diff(ours["input_features"], reference["input_features"]) < WHISPER_TOLERANCE
    with pytest.raises(ValueError, match="feature_size"):
        PartFeatureExtractor(front_end="whisper", feature_size=64, backend="asrfront")


@pytest.mark.parametrize("front_end", ["sensevoice", "whisper"])
@pytest.mark.parametrize("backend", ["asrfront", "numpy"])
def test_num_frames_equals_mask_sum(front_end, backend):
    rng = np.random.default_rng(1)
    lengths = EDGE_LENGTHS + rng.integers(1, 64_000, size=12).tolist()
    extractor = PartFeatureExtractor(front_end=front_end, backend=backend)
    noise = (0.1 * rng.standard_normal(max(lengths))).astype(np.float32)
    mask = extractor([noise[:n] for n in lengths], return_tensors="np")["feature_attention_mask"]
    assert mask.sum(-1).tolist() == [extractor.num_frames(n) for n in lengths]


def test_frame_rate_and_minimum_length():
    sensevoice = PartFeatureExtractor()
    whisper = PartFeatureExtractor(front_end="whisper")
    assert sensevoice.frames_per_second == pytest.approx(100 / 6)
    assert whisper.frames_per_second == 100
    assert sensevoice.feature_dim == 560 and whisper.feature_dim == 80
    for extractor in (sensevoice, whisper):
        assert extractor.num_frames(extractor.min_num_samples) == 1
        assert extractor.num_frames(extractor.min_num_samples - 1) == 0
    # num_frames grows with the duration at frames_per_second
    assert sensevoice.num_frames(16000 * 60) == pytest.approx(60 * sensevoice.frames_per_second, abs=1)
    assert whisper.num_frames(16000 * 10) == 1000 and whisper.num_frames(16000 * 60) == 3000


def test_whisper_config_round_trip(tmp_path):
    extractor = PartFeatureExtractor(front_end="whisper", feature_size=128)
    extractor.save_pretrained(tmp_path)
    reloaded = PartFeatureExtractor.from_pretrained(tmp_path)
    assert (reloaded.front_end, reloaded.feature_size, reloaded.backend) == ("whisper", 128, "auto")
    assert reloaded(speech_like(1600))["input_features"].shape == (1, 128, 3000)


def test_inputs_tensor_list_and_2d_batch():
    clip = speech_like(4000)
    extractor = PartFeatureExtractor()
    expected = extractor(clip, return_tensors="np")["input_features"]
    for raw in (torch.from_numpy(clip), clip.tolist(), clip.astype(np.float64), [torch.from_numpy(clip)]):
        np.testing.assert_array_equal(extractor(raw, return_tensors="np")["input_features"], expected)
    batch = extractor(np.stack([clip, clip]), return_tensors="np")["input_features"]
    np.testing.assert_allclose(batch, np.concatenate([expected, expected]), **FLOAT32_ROUNDING)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"front_end": "wav2vec"}, "front_end"),
        ({"backend": "cuda"}, "backend"),
        ({"sampling_rate": 8000}, "load_audio"),
        ({"feature_size": 0}, "feature_size"),
        ({"lfr_n": 0}, "lfr_n"),
        ({"cmvn_mean": [0.0] * 560}, "cmvn_istd"),
        ({"cmvn_mean": [0.0] * 80, "cmvn_istd": [1.0] * 80}, "560"),
        ({"cmvn_mean": [float("nan")] * 560, "cmvn_istd": [1.0] * 560}, "NaN"),
        ({"front_end": "whisper", "cmvn_mean": [0.0] * 80, "cmvn_istd": [1.0] * 80}, "sensevoice"),
    ],
)
def test_invalid_settings_are_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PartFeatureExtractor(**kwargs)


@pytest.mark.parametrize(
    "raw_speech, call_kwargs, match",
    [
        (np.zeros(16000, np.float32), {"sampling_rate": 44100}, "load_audio"),
        (np.zeros((2, 2, 100), np.float32), {}, "shape"),
        ([np.zeros((100, 2), np.float32)], {}, r"raw_speech\[0\].*mono"),
        ([np.zeros(100, np.float32), np.zeros(100, np.int16)], {}, r"raw_speech\[1\].*float"),
        ([np.array([0.0, np.nan], np.float32)], {}, r"raw_speech\[0\].*NaN"),
        ([], {}, "empty"),
        ("clip.wav", {}, "load_audio"),
        ([np.zeros(100, np.float32)], {"padding": False}, "return_tensors=None"),
        ([np.zeros(100, np.float32)], {"padding": "max_length"}, "padding"),
    ],
)
def test_invalid_inputs_are_rejected(raw_speech, call_kwargs, match):
    with pytest.raises(ValueError, match=match):
        PartFeatureExtractor()(raw_speech, **call_kwargs)


def test_cmvn_only_for_sensevoice(tmp_path):
    whisper = PartFeatureExtractor(front_end="whisper")
    with pytest.raises(ValueError, match="sensevoice"):
        whisper.fit_cmvn([speech_like(16000)])
    with pytest.raises(ValueError, match="sensevoice"):
        whisper.load_cmvn(tmp_path / "am.mvn")
    with pytest.raises(ValueError, match="at least one clip"):
        PartFeatureExtractor().fit_cmvn([speech_like(399)])


_WITHOUT_ASRFRONT = """
import sys
sys.modules["asrfront"] = None  # every `import asrfront` now raises ImportError, as when it is not installed
import numpy as np
from modeling_part import PartFeatureExtractor, feature_extraction_part, load_audio

folder = sys.argv[1]
assert feature_extraction_part.asrfront_sensevoice is None
extractor = PartFeatureExtractor().load_cmvn(folder + "/am.mvn")
assert not extractor._uses_asrfront()
np.save(folder + "/features.npy", extractor(np.load(folder + "/clip.npy"), return_tensors="np")["input_features"])
np.save(folder + "/decoded.npy", load_audio(folder + "/clip.pcm"))
try:
    PartFeatureExtractor(backend="asrfront")
except ImportError as error:
    print("ASRFRONT BACKEND:", error)
"""


def test_sensevoice_front_end_without_asrfront(tmp_path):
    """asrfront is optional: with it unimportable (in a fresh process), the SenseVoice front end (`load_cmvn`, the
    features, the decoder of headerless PCM) runs on numpy/soundfile and matches the numpy reference."""
    import os
    import subprocess
    import sys

    rng = np.random.default_rng(0)
    shift, scale = -rng.uniform(5, 15, 560).astype(np.float32), rng.uniform(0.1, 0.5, 560).astype(np.float32)
    (tmp_path / "am.mvn").write_text(
        "<Nnet>\n<Splice> 560 560\n[ 0 ]\n<AddShift> 560 560\n<LearnRateCoef> 0 [ " + " ".join(map(str, shift))
        + " ]\n<Rescale> 560 560\n<LearnRateCoef> 0 [ " + " ".join(map(str, scale)) + " ]\n</Nnet>\n"
    )
    clip = speech_like(16000 + 777)
    np.save(tmp_path / "clip.npy", clip)
    pcm = (clip * 32767).astype("<i2")
    (tmp_path / "clip.pcm").write_bytes(pcm.tobytes())  # headerless s16le: soundfile alone cannot tell its format

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([repo, os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-c", _WITHOUT_ASRFRONT, str(tmp_path)], capture_output=True, text=True,
                            env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]

    reference = PartFeatureExtractor(backend="numpy", cmvn_mean=-shift, cmvn_istd=scale)
    expected = reference(clip, return_tensors="np")["input_features"]
    np.testing.assert_allclose(np.load(tmp_path / "features.npy"), expected, **FLOAT32_ROUNDING)
    np.testing.assert_array_equal(np.load(tmp_path / "decoded.npy"), pcm / np.float32(32768))
    assert "pip install part-speech[asrfront]" in result.stdout
