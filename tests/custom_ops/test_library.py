"""The build machinery: cache hits, compiler errors surfacing, header discovery, the private apt fetch."""

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from edgeq.custom_ops import library
from edgeq.errors import EdgeqError


@pytest.fixture
def headers():
    return library.find_ort_headers()


@pytest.fixture
def private_tree(tmp_path, monkeypatch, headers):
    """A copy of csrc/ and an empty cache, so builds here never touch the real cache."""
    src = tmp_path / "csrc"
    shutil.copytree(library.CSRC, src)
    monkeypatch.setattr(library, "CSRC", src)
    monkeypatch.setenv("EDGEQ_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("ORT_INCLUDE_DIR", str(headers))
    monkeypatch.setattr(library, "_built", {})
    return src


def test_second_build_is_a_cache_hit_and_source_edits_rebuild(private_tree):
    first = library.build("cpu")
    stamp = first.stat().st_mtime_ns
    start = time.monotonic()
    assert library.build("cpu") == first
    assert time.monotonic() - start < 2 and first.stat().st_mtime_ns == stamp
    assert library.get_library("cpu") == first
    (private_tree / "cpu/group_quant_matmul_cpu.cc").write_text(
        (private_tree / "cpu/group_quant_matmul_cpu.cc").read_text() + "\n// edited\n")
    second = library.build("cpu")
    assert second != first and second.is_file()


def test_failed_build_reports_the_compiler_error(private_tree):
    target = private_tree / "cpu/group_quant_matmul_cpu.cc"
    target.write_text("#error edgeq_test_broken_source\n" + target.read_text())
    with pytest.raises(EdgeqError, match=r"compiling cpu/group_quant_matmul_cpu.cc failed(.|\n)*edgeq_test_broken_source"):
        library.build("cpu")


def test_prebuilt_library_from_environment(tmp_path, monkeypatch):
    lib = tmp_path / "libx.so"
    lib.write_bytes(b"")
    monkeypatch.setenv("EDGEQ_OPS_LIBRARY_CUDA", str(lib))
    assert library.get_library("cuda") == lib.resolve()
    monkeypatch.setenv("EDGEQ_OPS_LIBRARY_CUDA", str(tmp_path / "missing.so"))
    with pytest.raises(EdgeqError, match="no such file"):
        library.get_library("cuda")
    with pytest.raises(EdgeqError, match="device must be one of"):
        library.get_library("tpu")


def test_ort_include_dir_is_checked(tmp_path, monkeypatch, headers):
    monkeypatch.setenv("ORT_INCLUDE_DIR", str(tmp_path))
    with pytest.raises(EdgeqError, match="holds no onnxruntime_cxx_api.h"):
        library.find_ort_headers()
    monkeypatch.setenv("ORT_INCLUDE_DIR", str(headers))
    assert library.find_ort_headers() == headers


def test_every_ort_include_goes_through_the_manual_init_header():
    """One file including an ORT header without ORT_API_MANUAL_INIT makes the library need OrtGetApiBase."""
    for path in library.CSRC.rglob("*"):
        if path.suffix not in {".h", ".cc", ".cu", ".cuh"}:
            continue
        text = path.read_text()
        includes_ort = re.search(r'#include\s*[<"](onnxruntime|cpu_provider|core/)', text)
        if path.name == "ort_api.h":
            assert text.index("#define ORT_API_MANUAL_INIT") < text.index("#include <onnxruntime_cxx_api.h>")
        else:
            assert not includes_ort, f"{path} includes an ORT header directly; include ort_api.h"
    # nvcc cannot compile ORT's headers: no .cu may reach them, even through ort_api.h.
    for path in library.CSRC.rglob("*.cu"):
        assert "ort_api.h" not in path.read_text() and "group_quant_matmul.h\"" not in path.read_text()


@pytest.mark.skipif(shutil.which("nm") is None, reason="needs nm")
def test_library_exports_only_the_entry_point_and_needs_no_ort_symbol():
    lib = library.get_library("cpu")
    undefined = subprocess.run(["nm", "-D", "--undefined-only", str(lib)], capture_output=True, text=True).stdout
    assert "OrtGetApiBase" not in undefined
    defined = subprocess.run(["nm", "-D", "--defined-only", str(lib)], capture_output=True, text=True).stdout
    assert [line.split()[-1] for line in defined.splitlines() if " T " in line] == ["RegisterCustomOps"]


def test_headers_are_never_committed():
    root = Path(library.__file__).resolve().parents[1]
    if shutil.which("git") is None or not (root / ".git").exists():
        pytest.skip("not a git checkout")
    tracked = subprocess.run(["git", "ls-files"], cwd=root, capture_output=True, text=True).stdout.splitlines()
    assert not [f for f in tracked if re.search(r"onnxruntime_.*\.h$", f)]


def test_header_fetch_uses_a_private_apt_configuration(tmp_path, monkeypatch):
    """apt-get runs with sources, lists, cache and status under the cache folder; the system's are never named."""
    calls = []

    def fake_run(cmd, what, cwd=None, timeout=600):
        calls.append((cmd, cwd))
        if "download" in cmd:
            (Path(cwd) / "libonnxruntime-dev_1.23.2+dfsg-6.1_amd64.deb").write_bytes(b"deb")
        if cmd[0] == "dpkg-deb":
            include = Path(cmd[-1]) / "usr/include/onnxruntime"
            include.mkdir(parents=True)
            (include / "onnxruntime_cxx_api.h").write_text("")
            (include / "onnxruntime_c_api.h").write_text("#define ORT_API_VERSION 23\n")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(library, "_run", fake_run)
    monkeypatch.setattr(library.shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(library.Path, "is_file", lambda self: True if str(self).endswith(".gpg") else os.path.isfile(self))
    monkeypatch.setenv("EDGEQ_DEBIAN_MIRROR", "http://mirror.example/debian")
    captured = {}
    real_write_text = Path.write_text

    def spy_write_text(self, text, *a, **kw):
        if self.name == "sources.list":
            captured["sources"] = text
        return real_write_text(self, text, *a, **kw)

    monkeypatch.setattr(library.Path, "write_text", spy_write_text)
    dest = tmp_path / "ort-headers"
    found = library.fetch_ort_headers(dest)
    assert found == dest / "1.23.2+dfsg-6.1/root/usr/include/onnxruntime"
    assert captured["sources"].strip().endswith("http://mirror.example/debian sid main")
    apt_calls = [cmd for cmd, _ in calls if cmd[0] == "apt-get"]
    assert [c[-1] for c in apt_calls] == ["update", "libonnxruntime-dev"]
    for cmd in apt_calls:
        dirs = {o.split("=", 1)[0]: o.split("=", 1)[1] for o in cmd if o.startswith("-oDir")}
        assert set(dirs) >= {"-oDir::Etc::SourceList", "-oDir::Etc::SourceParts", "-oDir::State::Lists",
                             "-oDir::State::status", "-oDir::Cache"}
        assert all(Path(v).is_relative_to(dest) for v in dirs.values()), dirs
    # The apt scratch folder is gone; only the unpacked package stays.
    assert sorted(p.name for p in dest.iterdir() if not p.name.startswith(".")) == ["1.23.2+dfsg-6.1"]
    # A second call finds the unpacked headers and runs nothing.
    calls.clear()
    assert library.fetch_ort_headers(dest) == found and calls == []


def test_debian_archive_comes_from_the_machine_sources(monkeypatch):
    monkeypatch.delenv("EDGEQ_DEBIAN_MIRROR", raising=False)
    assert library._debian_archive().startswith("http")


def _compile_generated(source: Path, tmp_path: Path) -> Path:
    obj = tmp_path / "triton_cubins.o"
    subprocess.run([os.environ.get("CXX", "c++"), "-std=c++17", "-fPIC", "-c", str(source), f"-I{library.CSRC / 'cuda'}",
                    "-o", str(obj)], check=True, capture_output=True)
    return obj


def _symbols(obj: Path) -> dict[str, int]:
    """Defined symbols and their sizes (nm -S)."""
    out = subprocess.run(["nm", "-S", "-C", str(obj)], check=True, capture_output=True, text=True).stdout
    sizes = {}
    for line in out.splitlines():
        parts = line.split(maxsplit=3)
        if len(parts) == 4:
            sizes[parts[3]] = int(parts[1], 16)
        elif len(parts) == 3 and parts[1] not in "Uw":
            sizes[parts[2]] = 0
    return sizes


def test_triton_table_without_triton_is_empty_and_compiles(tmp_path, monkeypatch):
    """No Triton at build time: the CUDA library still links, with a table holding only its end entry (QuantLinear
    then takes cuBLAS)."""
    from edgeq.custom_ops import triton_quant_linear as tql

    monkeypatch.setenv("EDGEQ_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(tql, "triton_version", lambda: None)
    source = library._triton_source()
    text = source.read_text()
    assert ".incbin" not in text and text.count("nullptr, nullptr}") == 1
    symbols = _symbols(_compile_generated(source, tmp_path))
    assert "edgeq::cuda::kTritonCubins" in symbols and "edgeq::cuda::kTritonKernelName" in symbols


def test_triton_cubins_are_linked_whole(tmp_path, monkeypatch):
    """With Triton installed: every variant compiles for sm_90a without a GPU, and the generated object carries each
    cubin byte for byte between its begin and end symbols."""
    pytest.importorskip("triton")
    from edgeq.custom_ops import triton_quant_linear as tql

    monkeypatch.setenv("EDGEQ_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("EDGEQ_CUDA_ARCHS", "90")
    source = library._triton_source()
    cubins = sorted(source.parent.glob("*.cubin"))
    assert [c.stem for c in cubins] == sorted(v.symbol for v in tql.VARIANTS)
    for cubin in cubins:
        assert cubin.read_bytes()[:4] == b"\x7fELF"
    obj = _compile_generated(source, tmp_path)
    section = subprocess.run(["objcopy", "-O", "binary", "--only-section=.rodata", str(obj), str(tmp_path / "ro.bin")],
                             check=True, capture_output=True)
    assert section.returncode == 0
    rodata = (tmp_path / "ro.bin").read_bytes()
    for cubin in cubins:
        assert cubin.read_bytes() in rodata


def test_triton_id_follows_the_kernel_source_and_triton(monkeypatch):
    from edgeq.custom_ops import triton_quant_linear as tql

    before = library._triton_id()
    monkeypatch.setattr(tql, "triton_version", lambda: "0.0-test")
    assert library._triton_id() != before


def test_triton_that_cannot_compile_leaves_the_kernel_out(tmp_path, monkeypatch, caplog):
    """A Triton whose compiler fails (an older API, a missing ptxas) must not fail the CUDA build: the table comes
    out empty, with a warning naming the problem."""
    from edgeq.custom_ops import triton_quant_linear as tql

    def broken(variant):
        raise TypeError("ASTSource() got an unexpected keyword argument")

    monkeypatch.setenv("EDGEQ_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("EDGEQ_CUDA_ARCHS", "90")
    monkeypatch.setattr(tql, "triton_version", lambda: "3.0-test")
    monkeypatch.setattr(tql, "compile_variant", broken)
    with caplog.at_level("WARNING"):
        source = library._triton_source()
    assert ".incbin" not in source.read_text()
    assert "could not compile QuantLinear's GEMM (TypeError" in caplog.text
    assert "edgeq::cuda::kTritonCubins" in _symbols(_compile_generated(source, tmp_path))


def test_triton_k_order_is_the_quantize_kernels_run_order():
    """The packed triton path's K_ORDER (derived from the kernel's reshapes) against the quantize kernel's rule
    (quant_linear_kernels.cu, StoreGroup for kTritonRuns): word w = 4i + j of a 128-code block puts its evens at
    4-code run 8j + i and its odds at run 8j + 4 + i; a permutation of the block."""
    from edgeq.custom_ops.triton_quant_linear import BK, K_ORDER

    assert BK == 128 and sorted(K_ORDER) == list(range(BK))
    expected = [0] * BK
    for w in range(16):
        i, j = divmod(w, 4)
        for n, run in ((0, 8 * j + i), (1, 8 * j + 4 + i)):
            for r in range(4):
                expected[4 * run + r] = 8 * w + 2 * r + n
    assert K_ORDER == expected
