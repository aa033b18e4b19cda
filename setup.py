"""vlrm_jax: VLRM (arXiv 2404.01911) in JAX/Flax."""
from setuptools import find_packages, setup

# Ranges that resolve together on Python 3.11 (checked with the versions in the README).
CORE = [
    "jax>=0.10.2,<0.13",
    "flax>=0.12.8,<0.13",
    "optax>=0.2.5,<0.3",
    "orbax-checkpoint>=0.11,<0.13",
    "transformers>=5.17,<6",
    "tokenizers>=0.22,<0.24",
    "ml_collections>=1.0,<2",
    "absl-py>=2.1",
    "numpy>=1.26",
    "pillow>=10",
    "safetensors>=0.4",
    "tqdm>=4.66",
    "tensorboard>=2.18",
    "tensorboardX>=2.6",
    "matplotlib>=3.8",
    # BLEU / METEOR / ROUGE-L / CIDEr-D of the evaluation: the field's reference implementation
    # (its tokenizer and METEOR run on Java: `make install` installs Debian's runtime)
    "pycocoevalcap>=1.2,<2",
]
CONVERT = ["torch>=2.9,<=2.14.1", "torchvision>=0.24,<=0.29.1", "open_clip_torch>=3.3,<4"]
DATA = ["tensorflow-cpu>=2.20,<2.22", "tensorflow-datasets>=4.9.9,<5"]

setup(
    name="vlrm_jax",
    version="0.1.0",
    description="Vision-language models as reward models for image captioning, in JAX/Flax",
    python_requires=">=3.10",
    packages=find_packages(include=["vlrm_jax*", "convert*"]),
    package_data={"vlrm_jax": ["assets/*.txt"]},
    install_requires=CORE,
    extras_require={
        "convert": CONVERT,
        "data": DATA,
        "tpu": ["jax[tpu]>=0.10.2,<0.13"],
        "gpu": ["jax[cuda12]>=0.10.2,<0.13"],
        # peft: the LoRA side of the PyTorch reference of the A2C step; jax[tpu]: libtpu at jax's own
        # version, which compiles for TPU slices on this CPU machine (tests/aot, python -m vlrm_jax.aot)
        "dev": CONVERT + DATA + ["jax[cpu,tpu]>=0.10.2,<0.13", "pytest>=8", "pytest-xdist>=3.5", "peft>=0.17,<0.22"],
    },
)
