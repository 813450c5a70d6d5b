#!/usr/bin/env python3
"""Compile every fused op's CUDA C with NVRTC, as `recipe` does on a GPU at run time, on a
machine without one: each `crates/recipe-kernels/src/<op>/kernels.cu` after `cuda/common.cuh`,
to PTX for NVRTC's default architecture (what `recipe` loads) and to SASS for sm_90 (which
runs the assembler too, so register and shared-memory overruns show). Prints each module's
log and fails on any error or warning, and when an entry point the Rust side names is missing.

Needs NVRTC: `pip install nvidia-cuda-nvrtc==13.0.88`; scripts/check-cuda-kernels.sh sets it up."""

import ctypes
import glob
import os
import re
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "crates", "recipe-kernels", "src")


def load_nvrtc():
    import nvidia  # the pip namespace package that holds cu13/lib

    for base in nvidia.__path__:
        for lib in glob.glob(os.path.join(base, "cu1*", "lib", "libnvrtc.so.*")) + glob.glob(
            os.path.join(base, "cuda_nvrtc", "lib", "libnvrtc.so.*")
        ):
            if "alt" not in lib and "builtins" not in lib:
                # NVRTC opens its builtins by name; loaded first, they are found in the process.
                for builtins in glob.glob(os.path.join(os.path.dirname(lib), "libnvrtc-builtins.so.*")):
                    if "alt" not in builtins:
                        ctypes.CDLL(builtins, mode=ctypes.RTLD_GLOBAL)
                return ctypes.CDLL(lib)
    sys.exit("libnvrtc not found: pip install nvidia-cuda-nvrtc")


def compile_source(nvrtc, name, source, options):
    prog = ctypes.c_void_p()
    check(nvrtc, nvrtc.nvrtcCreateProgram(ctypes.byref(prog), source.encode(), name.encode(), 0, None, None))
    opts = (ctypes.c_char_p * len(options))(*[o.encode() for o in options])
    result = nvrtc.nvrtcCompileProgram(prog, len(options), opts)
    size = ctypes.c_size_t()
    nvrtc.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
    log = ctypes.create_string_buffer(size.value)
    nvrtc.nvrtcGetProgramLog(prog, log)
    ptx = ""
    if result == 0:
        nvrtc.nvrtcGetPTXSize(prog, ctypes.byref(size))
        buf = ctypes.create_string_buffer(size.value)
        nvrtc.nvrtcGetPTX(prog, buf)
        ptx = buf.value.decode()
    nvrtc.nvrtcDestroyProgram(ctypes.byref(prog))
    return result, log.value.decode().strip(), ptx


def check(nvrtc, code):
    if code != 0:
        nvrtc.nvrtcGetErrorString.restype = ctypes.c_char_p
        sys.exit(f"nvrtc: {nvrtc.nvrtcGetErrorString(code).decode()}")


def main():
    nvrtc = load_nvrtc()
    common = open(os.path.join(ROOT, "cuda", "common.cuh")).read()
    failed = False
    modules = sorted(glob.glob(os.path.join(ROOT, "*", "kernels.cu")))
    if not modules:
        sys.exit("no kernels.cu found")
    for path in modules:
        op = os.path.basename(os.path.dirname(path))
        source = common + "\n" + open(path).read()
        # The kernels the op's `cuda.rs` names: its string literals that are identifiers, but
        # for the module's own name.
        rust = open(os.path.join(os.path.dirname(path), "cuda.rs")).read()
        wanted = set(re.findall(r'"([a-z][a-z0-9_]*)(?:_\{[^}]*\})?"', rust)) - {op}
        for arch in ([], ["--gpu-architecture=sm_90"]):
            result, log, ptx = compile_source(nvrtc, f"{op}.cu", source, arch)
            label = f"{op} ({arch[0] if arch else 'default architecture'})"
            if result != 0 or log:
                failed = True
                print(f"FAILED {label}\n{log}\n")
                continue
            # A name may be instantiated per head dimension too: NAME_HD_SUFFIX.
            missing = [
                f"{name}_{suffix}"
                for name in sorted(wanted)
                for suffix in ("f32", "bf16", "f16")
                if not arch and not re.search(rf"\.entry {name}(_\d+)?_{suffix}\(", ptx)
            ]
            if missing:
                failed = True
                print(f"FAILED {label}: no entry point {', '.join(missing)}")
                continue
            print(f"ok {label}" + (f": {len(wanted) * 3} entry points" if not arch else ""))
    sys.exit(1 if failed else 0)


main()
