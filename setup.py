"""Packaging for PART (Progressive Alignment Representation Training) on Hugging Face Transformers."""

from setuptools import find_packages, setup

INSTALL_REQUIRES = [
    "torch>=2.4,<3",  # 2.13.0 (the CPU build used here) satisfies this range
    "transformers>=5.23,<6",
    "peft>=0.17",
    "datasets>=3.0",
    "evaluate>=0.4",
    "accelerate>=1.0",
    "soundfile>=0.12",
    "soxr>=0.3",
    "asrfront>=0.2.2",
    "numpy>=1.24",
    "pyyaml>=6.0",
    "sacrebleu>=2.4",
    "jiwer>=3.0",
    "matplotlib>=3.7",
    "tqdm>=4.0",
    "jinja2>=3.0",
]

EXTRAS = {
    "deepspeed": ["deepspeed>=0.16"],
    "demo": ["espeakng-loader>=0.2", "num2words>=0.5", "babel>=2.12", "tokenizers>=0.20"],
    "test": ["pytest>=8", "kaldi-native-fbank>=1.20"],
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
