"""Build heat_fast and its native extension heat_fast._C (csrc/).

    pip install --no-build-isolation -e .     # or: pip install --no-build-isolation .

- C++ CPU kernels are always built; CUDA kernels too when nvcc and a CUDA build of torch are
  present, or when HEAT_FAST_FORCE_CUDA=1 (with TORCH_CUDA_ARCH_LIST, e.g. "9.0", when no GPU
  is visible).
- HEAT_FAST_NO_NATIVE=1 skips the extension: pure Python + Triton.
- Sources are globbed from csrc/*.cpp, csrc/cpu/*.cpp and, for CUDA builds, csrc/cuda/*.cpp
  and csrc/cuda/*.cu (CMakeLists.txt globs the same directories).
- Versions of torch, CUDA and the compilers go to heat_fast/_build_info.py, shown by
  ``python -m heat_fast info`` and by the warning when a mismatched build fails to load.
"""
from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
from typing import Dict, List, Optional

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))
BUILD_INFO_PATH = os.path.join(ROOT, "heat_fast", "_build_info.py")


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _sources(with_cuda: bool) -> List[str]:
    patterns = ["csrc/*.cpp", "csrc/cpu/*.cpp"]
    if with_cuda:
        patterns += ["csrc/cuda/*.cpp", "csrc/cuda/*.cu"]
    return sorted(path for pattern in patterns for path in glob.glob(pattern, root_dir=ROOT))


def _first_line(command: List[str]) -> Optional[str]:
    try:
        result = subprocess.run(command, capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    return lines[0].strip() if lines else None


def _write_build_info(info: Dict[str, object]) -> None:
    body = ",\n".join(f"    {key!r}: {value!r}" for key, value in info.items())
    with open(BUILD_INFO_PATH, "w", encoding="utf-8") as f:
        f.write('"""Build metadata of heat_fast._C, written by setup.py."""\n')
        f.write(f"BUILD_INFO = {{\n{body},\n}}\n")


def _native_build():
    """(ext_modules, cmdclass) for heat_fast._C."""
    import torch
    from torch.utils import cpp_extension

    force_cuda = _flag("HEAT_FAST_FORCE_CUDA")
    nvcc = os.path.join(cpp_extension.CUDA_HOME, "bin", "nvcc") if cpp_extension.CUDA_HOME else None
    with_cuda = torch.version.cuda is not None and nvcc is not None
    if force_cuda and not with_cuda:
        sys.exit("HEAT_FAST_FORCE_CUDA=1 needs nvcc (CUDA_HOME) and a CUDA build of torch; found "
                 f"torch {torch.__version__}, CUDA_HOME={cpp_extension.CUDA_HOME}")
    if force_cuda and not torch.cuda.is_available() and not os.environ.get("TORCH_CUDA_ARCH_LIST"):
        sys.exit("HEAT_FAST_FORCE_CUDA=1 without a visible GPU needs TORCH_CUDA_ARCH_LIST, "
                 "e.g. '9.0'")
    cxx_flags = ["-O3", "-g0", "-fno-math-errno", "-fno-trapping-math"]
    link_flags: List[str] = []
    if "OpenMP" in torch.__config__.parallel_info() and sys.platform.startswith("linux"):
        cxx_flags.append("-fopenmp")
        link_flags.append("-fopenmp")
    macros = [("HEAT_FAST_WITH_CUDA", None)] if with_cuda else []
    extension = cpp_extension.CUDAExtension if with_cuda else cpp_extension.CppExtension
    extra_compile_args = {"cxx": cxx_flags}
    if with_cuda:
        extra_compile_args["nvcc"] = ["-O3"]
    ext = extension(
        name="heat_fast._C",
        sources=_sources(with_cuda),
        define_macros=macros,
        extra_compile_args=extra_compile_args,
        extra_link_args=link_flags,
    )
    compiler = os.environ.get("CXX", "c++")
    _write_build_info({
        "torch": torch.__version__,
        "cuda": torch.version.cuda if with_cuda else None,
        "compiler": _first_line([compiler, "--version"]) or compiler,
        "nvcc": _nvcc_release(nvcc) if with_cuda else None,
        "cuda_arch_list": os.environ.get("TORCH_CUDA_ARCH_LIST") if with_cuda else None,
        "with_cuda": with_cuda,
    })
    use_ninja = shutil.which("ninja") is not None
    build_ext = cpp_extension.BuildExtension.with_options(use_ninja=use_ninja)
    return [ext], {"build_ext": build_ext}


def _nvcc_release(nvcc: str) -> Optional[str]:
    try:
        out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    releases = [line.split("release", 1)[1].strip()
                for line in out.splitlines() if "release" in line]
    return releases[0] if releases else None


if _flag("HEAT_FAST_NO_NATIVE"):
    ext_modules, cmdclass = [], {}
    if os.path.exists(BUILD_INFO_PATH):
        os.remove(BUILD_INFO_PATH)  # describes a build this install does not ship
else:
    ext_modules, cmdclass = _native_build()

setup(
    name="heat_fast",
    version="0.1.0",
    description="Fast adversarial training with hypersphere embedding (HE): fused ops, "
                "training frameworks and honest evaluation",
    packages=find_packages(include=["heat_fast*"]),
    python_requires=">=3.10",
    install_requires=["torch>=2.6", "numpy", "tqdm", "scikit-learn"],
    # none of the extras depends on torch, so none pulls another torch build
    extras_require={"test": ["pytest", "pytest-benchmark", "hypothesis", "pyyaml", "tensorboard"],
                    "plot": ["matplotlib"], "tensorboard": ["tensorboard"], "yaml": ["pyyaml"]},
    entry_points={"console_scripts": ["heat-fast = heat_fast.cli:main"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    zip_safe=False,
)
