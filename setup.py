"""Packaging for PART (Progressive Alignment Representation Training) on Hugging Face Transformers."""

from setuptools import find_packages, setup

# Supported ranges. Each lower end is the version in requirements/lock.txt, on which `make test` runs; each upper
# end stops before the next release that may break the API and has not been through the suite (`make test-latest`
# runs it on the newest releases these ranges allow). Widen a range only after the suite passed on its new end.
INSTALL_REQUIRES = [
    "torch>=2.13,<2.14",
    "transformers>=5.24,<5.26",  # 5.24 renamed the KV cache to `cache`; 5.23 and older are not supported
    "peft>=0.21.2,<0.22",
    "accelerate>=1.15,<2",
    "datasets>=5.2,<6",
    "evaluate>=0.4.6,<0.5",
    "huggingface_hub>=2.4,<3",
    "safetensors>=0.8,<1",
    "soundfile>=0.14,<1",
    "soxr>=1.1,<2",
    "numpy>=2.4,<3",
    "pyyaml>=6.0,<7",
    "sacrebleu>=2.6,<3",
    "jiwer>=4.0,<5",
    "matplotlib>=3.11,<4",
    "tqdm>=4.70,<5",
    "jinja2>=3.1,<4",
]

EXTRAS = {
    # Optional C kernels for the feature extractor and decoder of headerless PCM; numpy/soundfile do the same without.
    "asrfront": ["asrfront>=0.2.2,<0.3"],
    "deepspeed": ["deepspeed>=0.19.8,<0.20"],
    "demo": ["espeakng-loader>=0.2.4,<0.3", "num2words>=0.5.14,<0.6", "babel>=2.19,<3", "tokenizers>=0.23,<0.24",
             "py-nanotts>=0.1.1,<0.2"],
    "test": ["pytest>=9.2,<10", "kaldi-native-fbank>=1.23,<2", "parameterized>=0.9,<0.10"],
}
EXTRAS["all"] = sorted({req for reqs in EXTRAS.values() for req in reqs})

setup(
    name="part-speech",
    version="0.1.0",
    description="PART: Progressive Alignment Representation Training for multilingual speech-to-text LLMs, on Transformers",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["modeling_part", "modeling_part.*", "trainers", "trainers.*", "model_cards", "model_cards.*"]),
    package_data={"trainers": ["evaluate_metrics/*/*.py"], "model_cards": ["*.md"]},
    python_requires=">=3.10",
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
    license="Apache-2.0",
)
