#!/usr/bin/env python3
"""Compile every fused op's CUDA C with NVRTC, as `recipe` does on a GPU at run time, on a
machine without one: each `crates/recipe-kernels/src/<op>/*.cu` after `cuda/common.cuh`, to PTX
for the virtual architecture its first line names (`// arch: compute_80`; else NVRTC's default,
what `recipe` loads) and to SASS for sm_90 (which runs the assembler too, so register and
shared-memory overruns show, and it warns when a kernel spills registers or puts an array in
local memory: slow on a GPU, so an error here). Prints each module's log and fails on any
error or warning, and
when a kernel name the op's `cuda.rs` spells out is in none of its modules' entry points.

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
        for lib in glob.glob(os.path.join(base, "cu1*", "lib", "libnvrtc.so.*")):
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
    if result == 0 and not any(o.startswith("--gpu-architecture=sm_") for o in options):
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
    folders = sorted({os.path.dirname(p) for p in glob.glob(os.path.join(ROOT, "*", "*.cu"))})
    if not folders:
        sys.exit("no kernels found")
    for folder in folders:
        op = os.path.basename(folder)
        entries = set()
        for path in sorted(glob.glob(os.path.join(folder, "*.cu"))):
            text = open(path).read()
            arch = re.match(r"// arch: (\w+)", text)
            virtual = [f"--gpu-architecture={arch.group(1)}"] if arch else []
            source = common + "\n" + text
            label = f"{op}/{os.path.basename(path)}"
            for options in (virtual, ["--gpu-architecture=sm_90", "--ptxas-options=--warn-on-spills", "--ptxas-options=--warn-on-local-memory-usage"]):
                result, log, ptx = compile_source(nvrtc, label, source, options)
                what = f"{label} ({options[0].split('=')[1] if options else 'default architecture'})"
                if result != 0 or log:
                    failed = True
                    print(f"FAILED {what}\n{log}\n")
                    continue
                found = re.findall(r"\.entry (\w+)\(", ptx)
                entries.update(found)
                print(f"ok {what}" + (f": {len(found)} entry points" if ptx else ""))
        # Every identifier the op's cuda.rs spells out in a string, but for module names, is a
        # kernel name or a part of one (`format!` may build the rest: `attention_mma_dq_64_bf16`).
        rust = open(os.path.join(folder, "cuda.rs")).read()
        modules = set(re.findall(r'name: "(\w+)"', rust))
        archs = re.findall(r'source: include_str!\("([\w.]+)"\),\s*arch: (?:None|Some\("(\w+)"\))', rust)
        for file, arch in archs:
            marked = re.match(r"// arch: (\w+)", open(os.path.join(folder, file)).read())
            if (marked.group(1) if marked else "") != arch:
                failed = True
                print(f"FAILED {op}: cuda.rs compiles {file} for {arch or 'the default'}, its first line says otherwise")
        if len(archs) != len(modules):
            failed = True
            print(f"FAILED {op}: every Module in cuda.rs needs `source: include_str!(...), arch: ...`")
        named = set(re.findall(r'"([a-z][a-z0-9_]*)(?:_\{[^}]*\})?"', rust)) - modules - {a for _, a in archs}
        missing = [n for n in sorted(named) if not any(re.search(rf"(^|_){n}(_|$)", e) for e in entries)]
        if missing:
            failed = True
            print(f"FAILED {op}: cuda.rs names {', '.join(missing)}, which no entry point of its modules has")
    sys.exit(1 if failed else 0)


main()
