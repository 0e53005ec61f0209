"""The node's slim CoreDNS (envtest/coredns/) compiles in every plugin the node's Corefile uses, and its
cached binary is rebuilt when that source changes.

A plugin added to envtest/node.py `_corefile` but not to envtest/coredns/main.go would otherwise show up
only on a real node, as a CoreDNS that refuses the Corefile ("Unknown directive").
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from envtest import binaries, node
from envtest.plane import ControlPlane

MAIN_GO = binaries.COREDNS_SOURCE / "main.go"
# plugin.cfg maps a directive to its package; it is plugin/<directive> for all but these.
PACKAGE_OF = {"prometheus": "metrics"}


def _corefile_directives(corefile: str) -> list[str]:
    """The plugins a Corefile names: first words of the lines directly inside a server block."""
    names, depth = [], 0
    for line in corefile.splitlines():
        words = line.split()
        if depth == 1 and words and words[0] != "}":
            names.append(words[0])
        depth += line.count("{") - line.count("}")
    return names


def _main_directives() -> list[str]:
    block = re.search(r"var directives = \[\]string\{(.*?)\}", MAIN_GO.read_text(), flags=re.S).group(1)
    return re.findall(r'"(\w+)"', block)


def _main_plugin_packages() -> set[str]:
    return set(re.findall(r'_ "github\.com/coredns/coredns/plugin/(\w+)"', MAIN_GO.read_text()))


def _node_corefile(tmp_path: Path) -> str:
    parts = node.node_components(dns=True)
    plane = ControlPlane(tmp_path, Path("/nonexistent"), components=parts, address=node.NODE_IP)
    return node._corefile(plane)


def test_the_parser_reads_plugins_not_their_options():
    corefile = ".:53 {\n errors\n kubernetes cluster.local {\n  pods insecure\n }\n cache 30\n}\n"
    assert _corefile_directives(corefile) == ["errors", "kubernetes", "cache"]


def test_every_corefile_plugin_is_compiled_in_and_a_directive(tmp_path):
    used = _corefile_directives(_node_corefile(tmp_path))
    assert {"kubernetes", "forward"} <= set(used)  # the parser found the node's real plugins
    missing_directive = [name for name in used if name not in _main_directives()]
    missing_import = [name for name in used if PACKAGE_OF.get(name, name) not in _main_plugin_packages()]
    assert not missing_directive, f"add {missing_directive} to `directives` in {MAIN_GO}"
    assert not missing_import, f"blank-import the packages of {missing_import} in {MAIN_GO}"


def test_directives_and_imports_name_the_same_plugins():
    directives = _main_directives()
    assert len(directives) == len(set(directives))
    assert {PACKAGE_OF.get(name, name) for name in directives} == _main_plugin_packages()


def test_go_mod_pins_the_version_binaries_py_names():
    gomod = (binaries.COREDNS_SOURCE / "go.mod").read_text()
    pin = f"{binaries.COREDNS_MODULE} {binaries.COREDNS_VERSION}"
    assert re.search(rf"^require {re.escape(pin)}$", gomod, flags=re.M)
    # -mod=readonly builds only with the module's checksums already in the committed go.sum
    assert f"{pin} h1:" in (binaries.COREDNS_SOURCE / "go.sum").read_text()


def test_source_hash_follows_sources_but_not_stray_files(tmp_path):
    source = tmp_path / "coredns"
    shutil.copytree(binaries.COREDNS_SOURCE, source)
    before = binaries.coredns_source_hash(source)
    assert before == binaries.coredns_source_hash(binaries.COREDNS_SOURCE)
    (source / "coredns").write_bytes(b"\x7fELF a binary from a manual go build")
    assert binaries.coredns_source_hash(source) == before
    main_go = source / "main.go"
    main_go.write_text(main_go.read_text().replace('"cache",', '"cache",\n\t"log",'))
    assert binaries.coredns_source_hash(source) != before


def test_a_binary_without_the_current_stamp_counts_as_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    bin_dir = binaries.cache_dir() / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "coredns").write_bytes(b"an older build of every plugin")
    with pytest.raises(binaries.BinariesUnavailable, match="make node-dns"):
        binaries.ensure_coredns(build=False)
    (bin_dir / binaries.COREDNS_STAMP).write_text("0" * 64 + "\n")
    with pytest.raises(binaries.BinariesUnavailable):
        binaries.ensure_coredns(build=False)
    (bin_dir / binaries.COREDNS_STAMP).write_text(binaries.coredns_source_hash() + "\n")
    assert binaries.ensure_coredns(build=False) == bin_dir / "coredns"
