import os

from setuptools import find_packages, setup


def default_model_files() -> list[tuple[str, list[str]]]:
    """The embedded default model, installed under <prefix>/share/retrolm/ (RetroLM.from_pretrained() finds it)."""
    entries = []
    for directory, _, files in sorted(os.walk(os.path.join("assets", "retrolm-byte-llama"))):
        target = os.path.join("share", "retrolm", os.path.relpath(directory, "assets"))
        entries.append((target, sorted(os.path.join(directory, name) for name in files)))
    return entries


setup(
    name="retrolm",
    version="0.1.0",
    description="Long-context LLM inference and training by KV-level page retrieval (RetroLM).",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["retrolm", "retrolm.*", "eval", "eval.*", "train", "train.*"]),
    install_requires=[
        "torch>=2.5,<3",  # FlexAttention and enable_gqa in SDPA
        "transformers>=5.17,<6",  # attention registry + layered Cache API; 5.17 is the version tested
        "peft>=0.17,<1",
        "safetensors>=0.4",
        "tokenizers>=0.21",
        "tqdm>=4.60",
        "numpy>=1.24",
    ],
    extras_require={
        "train": ["deepspeed>=0.16,<1", "wandb>=0.17", "datasets>=3.0"],
        "eval": ["datasets>=3.0", "faiss-cpu>=1.8", "matplotlib>=3.7", "jieba>=0.42", "wonderwords>=2.2,<4"],
        "dev": ["pytest>=8"],
    },
    data_files=default_model_files(),
    entry_points={"console_scripts": ["retrolm=retrolm.cli:main"]},
)
