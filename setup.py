import os

from setuptools import find_packages, setup


def shipped_files() -> list[tuple[str, list[str]]]:
    """The embedded default model and the configs, installed under <prefix>/share/retrolm/ (retrolm/resources.py
    finds them there: RetroLM.from_pretrained() with no name, `retrolm train-retriever --preset`)."""
    entries = []
    for root in (os.path.join("assets", "retrolm-byte-llama"), "configs"):
        for directory, _, files in sorted(os.walk(root)):
            target = os.path.join("share", "retrolm", directory)
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
    # Each range admits only releases `make test` runs: the lowest end pinned in .ci/lowest.txt, the newest
    # end as pip resolves it today (README, "Tested versions"). Raise an upper bound only with a green run.
    install_requires=[
        "torch>=2.13,<2.15",  # 2.13.0 is the floor CI tests (its CPU wheel)
        "transformers>=5.17,<5.26",  # 5.24 renamed past_key_values -> cache; retrolm/compat.py handles both
        "peft>=0.18,<0.22",  # 0.17 cannot import with transformers 5
        "safetensors>=0.8,<1",
        "tokenizers>=0.23.1,<0.24",
        "tqdm>=4.66,<5",
        "numpy>=2.0,<3",
    ],
    extras_require={
        "train": ["deepspeed>=0.19.3,<0.20", "wandb>=0.18,<0.32", "datasets>=3.0,<5.3"],
        "eval": ["datasets>=3.0,<5.3", "matplotlib>=3.9,<3.12", "jieba>=0.42,<0.43", "wonderwords>=2.2,<4"],
        # faiss: one of the two (both install the module `faiss`; never both)
        "cpu": ["faiss-cpu>=1.9,<1.16"],
        "dev": ["pytest>=8,<10", "pytest-timeout>=2.2,<3"],
    },
    data_files=shipped_files(),
    entry_points={"console_scripts": ["retrolm=retrolm.cli:main"]},
)
