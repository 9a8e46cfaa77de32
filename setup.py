from setuptools import find_packages, setup

setup(
    name="vxl",
    version="0.1.0",
    description="Triton-accelerated inference engine for Video-XL (hour-long video LLM with Visual Summarization Tokens)",
    long_description=open("README.md").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["vxl", "vxl.*"]),
    # the trained demo checkpoint (official layout, a few MB): LLM("demo") and `vxl demo` load it
    package_data={"vxl": ["data/demo/*", "data/demo/clip/*"]},
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.4,<2.15",
        "triton>=3.0,<3.10",
        "transformers>=4.44,<6",
        "safetensors>=0.4",
        "tokenizers>=0.19",
        "decord>=0.6,<0.7",
        "nvtx>=0.2",
        "tqdm>=4.60",
        "numpy>=1.24",
        "av>=11",
        "fastapi>=0.110",
        "uvicorn>=0.29",
        "prometheus-client>=0.20",
    ],
    extras_require={
        # pytest < 9.1: schemathesis 4.32's pytest plugin fails on 9.2 ("'Function' object has no attribute '_nodeid'")
        "test": ["pytest>=7,<9.1", "pytest-benchmark>=4", "hypothesis>=6", "av>=11", "pillow>=9", "import-linter>=2",
                 "openai>=1.30", "ray[data]>=2.40,<3", "schemathesis>=4.30,<5"],
        "ray": ["ray[data]>=2.40,<3"],
        "bench": ["matplotlib>=3.6", "pytest-benchmark>=4"],
        # `lmms-eval --model vxl`: lmms-eval's large dependency set stays out of the core (CI tests the plugin in
        # a venv of its own: .ci/eval_env); lmms-eval 0.7.3's evaluator imports filelock._api, gone in 4.3
        "eval": ["lmms-eval>=0.7.3,<0.8", "filelock<4.3"],
    },
    entry_points={"console_scripts": ["vxl=vxl.cli:main"],
                  # `lmms-eval --model vxl`: lmms-eval >= 0.7 loads model manifests from this group
                  "lmms_eval.models": ["vxl=vxl.integrations.lmms_eval:MANIFEST"]},
)
