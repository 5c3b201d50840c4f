"""Builds ferry's Python module and the `ferry` command with CMake, for `pip install .`.

    pip install --no-build-isolation .        # offline, with Debian's setuptools and wheel

FERRY_BUILD_DIR names a CMake build directory to build in (an existing one is reused as it is
configured, so CI that built build/ already compiles nothing twice); otherwise a directory under
setuptools' build_temp is configured for Release. FERRY_CMAKE_ARGS adds configure arguments
(e.g. "-DFERRY_WITH_CUDA=OFF").
"""
import os
import shlex
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).parent.resolve()


class CMakeBuild(build_ext):
    def build_extension(self, ext):
        env_dir = os.environ.get("FERRY_BUILD_DIR")
        build_dir = Path(env_dir) if env_dir else Path(self.build_temp).resolve() / "cmake"
        if not build_dir.is_absolute():
            build_dir = ROOT / build_dir
        jobs = os.environ.get("CMAKE_BUILD_PARALLEL_LEVEL") or str(os.cpu_count() or 2)
        if not (build_dir / "CMakeCache.txt").exists():
            args = ["cmake", "-S", str(ROOT), "-B", str(build_dir),
                    "-DCMAKE_BUILD_TYPE=Release", "-DFERRY_PYTHON=ON",
                    "-DFERRY_BUILD_TESTS=OFF", "-DFERRY_BUILD_BENCH=OFF",
                    f"-DPython3_EXECUTABLE={sys.executable}"]
            if shutil.which("ninja"):
                args += ["-G", "Ninja"]
            if shutil.which("ccache"):
                args += ["-DCMAKE_CXX_COMPILER_LAUNCHER=ccache",
                         "-DCMAKE_CUDA_COMPILER_LAUNCHER=ccache"]
            args += shlex.split(os.environ.get("FERRY_CMAKE_ARGS", ""))
            subprocess.run(args, check=True)
        else:
            # A build directory made without the module (FERRY_PYTHON=OFF): turn it on.
            cache = (build_dir / "CMakeCache.txt").read_text(errors="replace")
            if "FERRY_PYTHON:BOOL=ON" not in cache:
                subprocess.run(["cmake", "-B", str(build_dir), "-DFERRY_PYTHON=ON"], check=True)
        subprocess.run(["cmake", "--build", str(build_dir), "--target", "_ferry", "ferry",
                        "-j", jobs], check=True)

        suffix = sysconfig.get_config_var("EXT_SUFFIX")
        built = build_dir / "python" / "ferry" / f"_ferry{suffix}"
        if not built.exists():
            found = sorted(p.name for p in (build_dir / "python" / "ferry").glob("_ferry*"))
            raise RuntimeError(
                f"{build_dir} built {found or 'no module'}, not _ferry{suffix} for this Python "
                f"({sys.executable}); configure it with -DPython3_EXECUTABLE={sys.executable}, "
                "or leave FERRY_BUILD_DIR unset")
        target = Path(self.get_ext_fullpath(ext.name))
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(built, target)
        # The `ferry` command rides in the package (ferry/bin/ferry); the `ferry` script
        # installed on PATH runs it (ferry._cli).
        bin_dir = target.parent / "bin"
        bin_dir.mkdir(exist_ok=True)
        shutil.copy2(build_dir / "tools" / "ferry", bin_dir / "ferry")


(ROOT / "build-pip").mkdir(exist_ok=True)
setup(
    ext_modules=[Extension("ferry._ferry", sources=[])],
    cmdclass={"build_ext": CMakeBuild},
    # setuptools' own build/ would land inside the CMake build directory of the same name.
    options={"build": {"build_base": "build-pip"}, "egg_info": {"egg_base": "build-pip"}},
)
