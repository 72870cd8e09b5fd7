"""Builds the edgeq op library on first use and hands ONNX Runtime its path.

``get_library("cpu")`` compiles ``csrc/`` with the system C++ compiler; ``get_library("cuda")`` adds the CUDA
kernels (nvcc) and the CUDA-EP registrations. Results live in a cache keyed by the sources, the flags, the
compilers' versions and the ORT headers, so an unchanged tree never rebuilds. ORT's C/C++ headers come from
``ORT_INCLUDE_DIR``, else the compiler's system include path, else Debian's ``libonnxruntime-dev`` fetched with
``apt-get download`` under a private apt configuration and unpacked into the cache (``fetch_ort_headers``).

Environment:
  EDGEQ_CACHE_DIR            cache root (default: $XDG_CACHE_HOME/edgeq or ~/.cache/edgeq)
  ORT_INCLUDE_DIR            folder holding onnxruntime_cxx_api.h; skips the search and the download
  EDGEQ_OPS_LIBRARY_CPU/_CUDA a prebuilt library to use as is (the GPU machine, which cannot build: no network)
  CXX, NVCC                  compilers (default: c++, nvcc on PATH or /usr/local/cuda/bin/nvcc)
  EDGEQ_CUDA_ARCHS           SM versions to build machine code for (default: 80,90)
  EDGEQ_DEBIAN_MIRROR        Debian archive for the header download (default: the one this machine's apt uses)
"""

from __future__ import annotations

import concurrent.futures
import fcntl
import hashlib
import logging
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from edgeq.errors import EdgeqError

log = logging.getLogger(__name__)

CSRC = Path(__file__).resolve().parent / "csrc"
DEVICES = ("cpu", "cuda")
CUDA_ARCHS = ("80", "90")  # EDGEQ_CUDA_ARCHS="90" narrows it (the GPU machine's carried build must stay small)
HEADER = "onnxruntime_cxx_api.h"
HEADER_PACKAGE = "libonnxruntime-dev"
HEADER_SUITE = "sid"  # the suite whose libonnxruntime-dev ships onnxruntime_lite_custom_op.h and a recent C API

_built: dict[str, Path] = {}


def cache_root() -> Path:
    if os.environ.get("EDGEQ_CACHE_DIR"):
        return Path(os.environ["EDGEQ_CACHE_DIR"]).expanduser().resolve()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return (base / "edgeq").resolve()


def get_library(device: str = "cpu") -> Path:
    """Path of the op library for ``device`` ("cpu" or "cuda"), built first if the cache has no current build."""
    if device not in DEVICES:
        raise EdgeqError(f"edgeq op library: device must be one of {list(DEVICES)}, got {device!r}")
    prebuilt = os.environ.get(f"EDGEQ_OPS_LIBRARY_{device.upper()}")
    if prebuilt:
        path = Path(prebuilt).expanduser().resolve()
        if not path.is_file():
            raise EdgeqError(f"EDGEQ_OPS_LIBRARY_{device.upper()}={prebuilt}: no such file")
        return path
    if device not in _built:
        _built[device] = build(device)
    return _built[device]


# ----------------------------------------------------------------------------------------------- headers


MIN_ORT_API_VERSION = 17  # OrtCustomOp::InferOutputShapeFn and KernelContext_ParallelFor


def _api_version(folder: Path) -> int:
    match = re.search(r"#define\s+ORT_API_VERSION\s+(\d+)", (folder / "onnxruntime_c_api.h").read_text(errors="replace"))
    return int(match.group(1)) if match else 0


def _has_header(folder: Path) -> bool:
    if not (folder / HEADER).is_file() or not (folder / "onnxruntime_c_api.h").is_file():
        return False
    if _api_version(folder) < MIN_ORT_API_VERSION:
        log.warning("ignoring ORT headers in %s: API version %d < %d", folder, _api_version(folder), MIN_ORT_API_VERSION)
        return False
    return True


def _system_include_dirs(cxx: str) -> list[Path]:
    """The compiler's own search path for <...> includes, as `cxx -E -v` prints it."""
    try:
        out = subprocess.run([cxx, "-x", "c++", "-E", "-v", "-"], input="", capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return []
    dirs, inside = [], False
    for line in out.stderr.splitlines():
        if line.startswith("#include <...> search starts here"):
            inside = True
        elif line.startswith("End of search list"):
            break
        elif inside:
            dirs.append(Path(line.strip().split(" (")[0]))
    return dirs


def find_ort_headers(fetch: bool = True) -> Path:
    """The folder holding ORT's C/C++ API headers: ORT_INCLUDE_DIR, the system include path, the cache, apt."""
    explicit = os.environ.get("ORT_INCLUDE_DIR")
    if explicit:
        folder = Path(explicit).expanduser()
        for candidate in (folder, folder / "onnxruntime"):
            if _has_header(candidate):
                return candidate.resolve()
        raise EdgeqError(f"ORT_INCLUDE_DIR={explicit} holds no {HEADER}")
    for folder in _system_include_dirs(_cxx()):
        for candidate in (folder, folder / "onnxruntime"):
            if _has_header(candidate):
                return candidate.resolve()
    cached = sorted((cache_root() / "ort-headers").glob(f"*/root/usr/include/onnxruntime/{HEADER}"))
    if cached:
        return cached[-1].parent
    if not fetch:
        raise EdgeqError("ONNX Runtime C/C++ headers not found (set ORT_INCLUDE_DIR)")
    return fetch_ort_headers(cache_root() / "ort-headers")


def _debian_archive() -> str:
    """The Debian archive this machine's apt uses (its non-security entry), to fetch sid packages from."""
    if os.environ.get("EDGEQ_DEBIAN_MIRROR"):
        return os.environ["EDGEQ_DEBIAN_MIRROR"].rstrip("/")
    texts = []
    for path in [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]:
        try:
            texts.append(path.read_text(errors="replace"))
        except OSError:
            continue
    uris = re.findall(r"^\s*URIs:\s*(\S+)", "\n".join(texts), re.M)
    uris += re.findall(r"^\s*deb\s+(?:\[[^\]]*\]\s+)?(\S+)", "\n".join(texts), re.M)
    for uri in uris:
        if uri.rstrip("/").endswith("/debian"):
            return uri.rstrip("/")
    return "http://deb.debian.org/debian"


def _run(cmd: list[str], what: str, cwd: Path | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    log.debug("%s: %s", what, " ".join(cmd))
    try:
        result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError as e:
        raise EdgeqError(f"{what}: {cmd[0]} not found") from e
    except subprocess.TimeoutExpired as e:
        raise EdgeqError(f"{what}: timed out after {timeout}s: {' '.join(cmd)}") from e
    if result.returncode != 0:
        raise EdgeqError(f"{what} failed (exit {result.returncode}): {' '.join(cmd)}\n{result.stdout}{result.stderr}".rstrip())
    return result


def fetch_ort_headers(dest: Path) -> Path:
    """Download libonnxruntime-dev from Debian sid and unpack it under ``dest``; returns the header folder.

    apt runs with its own sources list, lists, cache and (empty) status file inside ``dest``, so the machine's
    apt configuration and state are read for the mirror's address only and never written.
    """
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        raise EdgeqError(
            "ONNX Runtime C/C++ headers not found and this machine has no apt-get/dpkg-deb to fetch "
            f"{HEADER_PACKAGE}; point ORT_INCLUDE_DIR at a folder holding {HEADER}")
    keyring = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
    if not keyring.is_file():
        raise EdgeqError(f"fetching ORT headers needs Debian's archive keyring at {keyring}; or set ORT_INCLUDE_DIR")
    dest.mkdir(parents=True, exist_ok=True)
    with _locked(dest / ".lock"):
        existing = sorted(dest.glob(f"*/root/usr/include/onnxruntime/{HEADER}"))
        if existing:
            return existing[-1].parent
        apt = Path(tempfile.mkdtemp(prefix="apt-", dir=dest))
        try:
            for sub in ("etc/sources.list.d", "etc/preferences.d", "lists/partial", "cache/archives/partial", "debs"):
                (apt / sub).mkdir(parents=True, exist_ok=True)
            (apt / "status").touch()
            (apt / "etc/sources.list").write_text(
                f"deb [signed-by={keyring}] {_debian_archive()} {HEADER_SUITE} main\n")
            options = {
                "Dir::Etc::SourceList": apt / "etc/sources.list",
                "Dir::Etc::SourceParts": apt / "etc/sources.list.d",
                "Dir::Etc::Preferences": apt / "etc/preferences",
                "Dir::Etc::PreferencesParts": apt / "etc/preferences.d",
                "Dir::State::Lists": apt / "lists",
                "Dir::State::status": apt / "status",
                "Dir::Cache": apt / "cache",
                "Dir::Cache::archives": apt / "cache/archives",
                "Debug::NoLocking": "1",
                "APT::Get::List-Cleanup": "0",
            }
            if os.geteuid() == 0:
                # apt would drop to _apt for downloads, which cannot write into our private folders.
                options["APT::Sandbox::User"] = "root"
            args = [f"-o{key}={value}" for key, value in options.items()]
            _run(["apt-get", "-q", *args, "update"], f"apt-get update (private sources: {HEADER_SUITE})", timeout=300)
            _run(["apt-get", "-q", *args, "download", HEADER_PACKAGE], f"apt-get download {HEADER_PACKAGE}", cwd=apt / "debs")
            debs = sorted((apt / "debs").glob(f"{HEADER_PACKAGE}_*.deb"))
            if not debs:
                raise EdgeqError(f"apt-get download {HEADER_PACKAGE} produced no .deb")
            version = debs[-1].name.split("_")[1]
            target = dest / version
            staging = Path(tempfile.mkdtemp(prefix="unpack-", dir=dest))
            _run(["dpkg-deb", "-x", str(debs[-1]), str(staging / "root")], f"dpkg-deb -x {debs[-1].name}")
            if not _has_header(staging / "root/usr/include/onnxruntime"):
                raise EdgeqError(f"{debs[-1].name} holds no usr/include/onnxruntime/{HEADER}")
            os.replace(staging, target)
            log.info("ORT headers %s unpacked into %s", version, target)
        finally:
            shutil.rmtree(apt, ignore_errors=True)
        return target / "root/usr/include/onnxruntime"


# ----------------------------------------------------------------------------------------------- build


def _cxx() -> str:
    return os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++") or "c++"


def _nvcc() -> str:
    found = os.environ.get("NVCC") or shutil.which("nvcc")
    if found:
        return found
    default = Path("/usr/local/cuda/bin/nvcc")
    if default.is_file():
        return str(default)
    raise EdgeqError("building the CUDA op library needs nvcc (set NVCC or put it on PATH)")


def _cuda_lib_dir(nvcc: str) -> Path:
    """Where nvcc itself finds libcudart_static.a (nvcc may be a wrapper script, so ask it: --dryrun)."""
    out = subprocess.run([nvcc, "--dryrun", "-o", os.devnull, "edgeq_probe.o"], capture_output=True, text=True, timeout=60)
    candidates = [Path(d) for d in re.findall(r'-L"?([^"\s]+)"?', "".join(
        line for line in out.stderr.splitlines() if "LIBRARIES=" in line))]
    root = Path(nvcc).resolve().parent.parent
    candidates += [root / "lib64", root / "targets/x86_64-linux/lib", root / "lib"]
    for candidate in candidates:
        if (candidate / "libcudart_static.a").is_file():
            return candidate.resolve()
    raise EdgeqError(f"libcudart_static.a not found in nvcc's library path ({[str(c) for c in candidates]})")


def _version_line(tool: str) -> str:
    try:
        out = subprocess.run([tool, "--version"], capture_output=True, text=True, timeout=60).stdout
    except OSError:
        return f"{tool}: missing"
    lines = [line for line in out.splitlines() if line.strip()]
    return " | ".join(lines[:1] + lines[-1:])


def _cpu_flags_id() -> str:
    """What -march=native depends on: a build made on another processor must not be reused."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return hashlib.sha256(line.encode()).hexdigest()[:12]
    except OSError:
        pass
    return "unknown"


def _sources(device: str) -> dict[str, list[Path]]:
    cc = [CSRC / "entry.cc", CSRC / "group_quant_matmul.cc", CSRC / "quant_linear.cc", CSRC / "spqr_matmul.cc",
          CSRC / "integer_ops.cc", *sorted((CSRC / "cpu").glob("*.cc"))]
    cu: list[Path] = []
    if device == "cuda":
        cc += sorted((CSRC / "cuda").glob("*.cc"))
        cu = sorted((CSRC / "cuda").glob("*.cu"))
    return {"cc": cc, "cu": cu}


def _triton_id() -> str:
    """What the Triton cubins depend on: the kernel's source, Triton's version (or its absence) and the archs."""
    from edgeq.custom_ops import triton_quant_linear as tql

    archs = os.environ.get("EDGEQ_CUDA_ARCHS", ",".join(CUDA_ARCHS))
    return hashlib.sha256("\0".join([Path(tql.__file__).read_text(), str(tql.triton_version()), archs]).encode()
                          ).hexdigest()[:20]


def _triton_source() -> Path:
    """The generated C++ file that links QuantLinear's Triton cubins into the library (``csrc/cuda/triton_gemm.h``
    declares its table). Without Triton, or without sm_90 among the archs, the table is empty and QuantLinear
    takes cuBLAS."""
    from edgeq.custom_ops import triton_quant_linear as tql

    folder = cache_root() / "build" / f"triton-{_triton_id()}"
    source = folder / "triton_cubins.cc"
    if source.is_file():
        return source
    archs = os.environ.get("EDGEQ_CUDA_ARCHS", ",".join(CUDA_ARCHS))
    variants = []
    if tql.triton_version() is None:
        log.warning("triton is not installed: the CUDA library is built without QuantLinear's fused GEMM "
                    "(pip install triton to add it)")
    elif not any(a.strip().startswith("90") for a in archs.split(",")):
        log.info("EDGEQ_CUDA_ARCHS=%s has no sm_90: QuantLinear's Triton GEMM (sm_90a) left out", archs)
    else:
        variants = tql.VARIANTS
    folder.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="triton-", dir=folder.parent))
    try:
        compiled = []
        try:
            compiled = [tql.compile_variant(v) for v in variants]
        except Exception as e:  # noqa: BLE001 - any Triton failure leaves the kernel out, never the library
            log.warning("Triton %s could not compile QuantLinear's GEMM (%s: %s): the CUDA library is built "
                        "without it (triton>=3.5 is known to work)", tql.triton_version(), type(e).__name__, e)
            variants = []
        rows, blobs = [], []
        for v, (cubin, shared) in zip(variants, compiled):
            (work / f"{v.symbol}.cubin").write_bytes(cubin)
            blobs.append(f'  ".balign 16\\n.globl {v.symbol}\\n.hidden {v.symbol}\\n.globl {v.symbol}_end\\n'
                         f'.hidden {v.symbol}_end\\n{v.symbol}:\\n.incbin \\"{folder / (v.symbol + ".cubin")}\\"\\n'
                         f'{v.symbol}_end:\\n"')
            tile = tql.TILES[v.tile]
            flags = ", ".join("true" if f else "false" for f in (v.half, v.w_zero, v.act_zero, tile.packed))
            rows.append(f"    {{{flags}, {tile.bm}, {tile.bn}, {tile.warps * 32}, {shared}, {v.symbol}, {v.symbol}_end}},")
        decls = "".join(f"extern \"C\" const unsigned char {v.symbol}[], {v.symbol}_end[];\n" for v in variants)
        text = ["// Generated by edgeq.custom_ops.library from triton_quant_linear.py "
                f"(Triton {tql.triton_version()}): do not edit.",
                '#include "triton_gemm.h"', ""]
        if variants:
            text += ["asm(\".section .rodata\\n\"", *blobs, "    \".text\\n\");", "", decls]
        text += ["namespace edgeq {", "namespace cuda {", "",
                 f'const char* const kTritonKernelName = "{tql.KERNEL_NAME}";',
                 f"const TritonCubin kTritonCubins[] = {{", *rows,
                 "    {false, false, false, false, 0, 0, 0, 0, nullptr, nullptr},  // end", "};", "",
                 "}  // namespace cuda", "}  // namespace edgeq", ""]
        (work / "triton_cubins.cc").write_text("\n".join(text))
        try:
            os.replace(work, folder)
        except OSError:  # a parallel build got there first
            pass
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return source


def _flags(device: str, headers: Path) -> dict[str, list[str]]:
    # Reassociation lets the compiler vectorise the float reductions; no other fast-math rule is taken, so
    # NaN and infinity propagate as in the reference.
    common = ["-std=c++17", "-O3", "-fPIC", "-fvisibility=hidden", "-fvisibility-inlines-hidden",
              "-fno-math-errno", "-fno-trapping-math", "-fassociative-math", "-fno-signed-zeros",
              "-Wall", "-Wno-unused-parameter", f"-I{headers}"]
    if device == "cpu":
        cxx = common + ["-march=native"]
        link = []
    else:
        # The CUDA library is built here and carried to the GPU machine: target a processor every such host has.
        cxx = common + ["-march=x86-64-v3", "-DEDGEQ_WITH_CUDA"]
        link = []
    archs = tuple(a.strip() for a in os.environ.get("EDGEQ_CUDA_ARCHS", ",".join(CUDA_ARCHS)).split(",") if a.strip())
    gencode = []
    for arch in archs:
        gencode += ["-gencode", f"arch=compute_{arch},code=sm_{arch}"]
    gencode += ["-gencode", f"arch=compute_{archs[-1]},code=compute_{archs[-1]}"]
    # Line tables let Nsight Compute map stalls to source; the carried build (device/prepare.py) drops them to fit.
    lineinfo = ["-lineinfo"] if os.environ.get("EDGEQ_CUDA_LINEINFO", "1") != "0" else []
    nvcc = ["-std=c++17", "-O3", *lineinfo, "--expt-relaxed-constexpr", *gencode,
            "-Xcompiler", "-fPIC,-fvisibility=hidden", "-Xptxas", "-warn-spills"]
    link += ["-shared", "-Wl,--no-undefined", f"-Wl,--version-script={CSRC / 'exports.map'}"]
    return {"cxx": cxx, "nvcc": nvcc, "link": link}


def _build_key(device: str, headers: Path, sources: dict[str, list[Path]], flags: dict[str, list[str]]) -> str:
    h = hashlib.sha256()
    h.update(f"edgeq-ops-1 {device}\n".encode())
    for path in sorted(CSRC.rglob("*")):
        if path.is_file() and path.suffix in {".cc", ".cu", ".h", ".cuh", ".map"}:
            h.update(str(path.relative_to(CSRC)).encode() + b"\0" + path.read_bytes() + b"\0")
    h.update((headers / "onnxruntime_c_api.h").read_bytes())
    for name in sorted(flags):
        h.update((name + "=" + " ".join(flags[name]) + "\n").encode())
    h.update(_version_line(_cxx()).encode())
    if device == "cpu":
        h.update(_cpu_flags_id().encode())
    if sources["cu"]:
        h.update(_version_line(_nvcc()).encode())
        h.update(_triton_id().encode())
    return h.hexdigest()[:20]


class _locked:
    """An exclusive flock on ``path`` for the duration of a with-block (builds from parallel processes)."""

    def __init__(self, path: Path):
        self.path = path

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(self.path, "w")
        fcntl.flock(self.file, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        fcntl.flock(self.file, fcntl.LOCK_UN)
        self.file.close()


def library_path(device: str) -> Path | None:
    """The cached library for the current sources, or None when it would have to be built."""
    headers = find_ort_headers(fetch=False)
    sources = _sources(device)
    flags = _flags(device, headers)
    path = cache_root() / "build" / f"{device}-{_build_key(device, headers, sources, flags)}" / f"libedgeq_ops_{device}.so"
    return path if path.is_file() else None


def build(device: str = "cpu", force: bool = False) -> Path:
    """Compile and link the library for ``device`` unless the cache already holds this exact build."""
    if device not in DEVICES:
        raise EdgeqError(f"edgeq op library: device must be one of {list(DEVICES)}, got {device!r}")
    headers = find_ort_headers()
    sources = _sources(device)
    flags = _flags(device, headers)
    key = _build_key(device, headers, sources, flags)
    out_dir = cache_root() / "build" / f"{device}-{key}"
    library = out_dir / f"libedgeq_ops_{device}.so"
    with _locked(cache_root() / "build" / f".{device}.lock"):
        if library.is_file() and not force:
            log.debug("edgeq %s op library up to date: %s", device, library)
            return library
        log.info("building the edgeq %s op library (ORT headers: %s)", device, headers)
        work = Path(tempfile.mkdtemp(prefix=f"{device}-", dir=cache_root() / "build"))
        try:
            # Objects are cached too (keyed by their source, every header and the flags), so an edit to one
            # file recompiles that file only: the CUDA kernels alone take minutes.
            headers_id = hashlib.sha256(b"".join(
                p.read_bytes() for p in [*sorted(CSRC.rglob("*")), headers / "onnxruntime_c_api.h"]
                if p.suffix in {".h", ".cuh"})).hexdigest()
            objects_dir = cache_root() / "build" / "objects"
            objects_dir.mkdir(parents=True, exist_ok=True)
            jobs, objects = [], []
            generated = [_triton_source()] if device == "cuda" else []
            for src in sources["cc"] + sources["cu"] + generated:
                compiler, compile_flags = (_nvcc(), flags["nvcc"]) if src.suffix == ".cu" else (_cxx(), flags["cxx"])
                if src in generated:
                    compile_flags = [*compile_flags, f"-I{CSRC / 'cuda'}"]
                obj_key = hashlib.sha256("\0".join([src.read_text(), headers_id, compiler, _version_line(compiler),
                                                     *compile_flags]).encode()).hexdigest()[:20]
                obj = objects_dir / f"{src.stem}-{obj_key}.o"
                objects.append(obj)
                if not obj.is_file() or force:
                    staged_obj = work / obj.name
                    jobs.append(([compiler, *compile_flags, "-c", str(src), "-o", str(staged_obj)], staged_obj, obj, src))
            with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, os.cpu_count() or 1)) as pool:
                futures = [pool.submit(_run, cmd, f"compiling {src.relative_to(CSRC) if src.is_relative_to(CSRC) else src}")
                           for cmd, _, _, src in jobs]
                errors = []
                for future, (_, staged_obj, obj, _) in zip(futures, jobs):
                    try:
                        future.result()
                        os.replace(staged_obj, obj)
                    except EdgeqError as e:
                        errors.append(str(e))
                if errors:
                    raise EdgeqError("\n\n".join(errors))
            link = [_cxx(), *[str(obj) for obj in objects], *flags["link"]]
            if device == "cuda":
                link += [f"-L{_cuda_lib_dir(_nvcc())}", "-lcudart_static", "-ldl", "-lrt", "-lpthread"]
            staged = work / library.name
            _run([*link, "-o", str(staged)], f"linking {library.name}")
            out_dir.mkdir(parents=True, exist_ok=True)
            os.replace(staged, library)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        log.info("built %s", library)
        _built.pop(device, None)
        return library
