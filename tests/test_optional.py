"""Optional dependencies: what needs them says how to install them; import spacrd stays light."""

import subprocess
import sys

import pytest

from spacrd._optional import import_optional


def test_missing_optional_package_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "squidpy", None)  # as if it were not installed
    with pytest.raises(ImportError, match=r'spacrd.pl.ctr on an AnnData needs .*"spacrd\[plot\]"'):
        import_optional("squidpy", "spacrd.pl.ctr on an AnnData")


def test_import_spacrd_loads_no_heavy_dependency():
    code = "import sys, spacrd; print(sorted(m for m in ('torch', 'scanpy', 'squidpy', 'lightning') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
