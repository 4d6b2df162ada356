# Sphinx configuration for the spacrd documentation.
#
# Build (warnings are errors):  sphinx-build -W --keep-going -b html docs docs/_build/html

import os
import socket
import warnings
from datetime import datetime
from importlib.metadata import metadata
from pathlib import Path

from sphinx.util import logging

HERE = Path(__file__).resolve().parent
logger = logging.getLogger(__name__)
# sphinx-autodoc-typehints still calls an API that Sphinx 9 deprecates; the Python warning is noise
# (it is not a Sphinx warning and does not affect the output).
warnings.filterwarnings(
    "ignore", message=".*set_application.*is deprecated", module="sphinx_autodoc_typehints"
)

# -- Project -------------------------------------------------------------------------------------------
info = metadata("spacrd")
project = info["Name"]
author = "spacrd developers"
copyright = f"{datetime.now():%Y}, {author}"
version = info["Version"]
release = version
repository_url = "https://github.com/spacrd/spacrd"

# -- General -------------------------------------------------------------------------------------------
extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.intersphinx",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "sphinx_autodoc_typehints",  # after napoleon, so that it sees the converted docstrings
]

templates_path = ["_templates"]
exclude_patterns = ["_build", "_scripts", "Thumbs.db", ".DS_Store", "**.ipynb_checkpoints", "tutorials/data"]
# .rst first: autosummary writes its generated pages with the first suffix, and they are reStructuredText.
source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
master_doc = "index"
default_role = "literal"
nitpicky = True
# Cross-references Sphinx cannot resolve on its own: objects of other projects documented under their
# private module path (resolved by intersphinx where it runs) ...
nitpick_ignore_regex = [
    (r"py:.*", r"(anndata|scvi|lightning|spatialdata|pandas|matplotlib|scipy\.sparse|torch)\._.*"),
    (r"py:.*", r".*\._[a-z].*\.[A-Z].*"),  # e.g. anndata._core.anndata.AnnData in signatures
    # a private module's class in a signature (_thinning.DepthThinning)
    (r"py:class", r"_[a-z]\w*\.[A-Z]\w*"),
    (r"py:class", r"geopandas\.geodataframe\.GeoDataFrame"),  # documented as geopandas.GeoDataFrame
]

# -- autodoc / autosummary / napoleon -----------------------------------------------------------------
autosummary_generate = True
autosummary_imported_members = True
autosummary_ignore_module_all = False  # document what each sub-package exports in __all__
autodoc_member_order = "groupwise"
autodoc_typehints = "description"
typehints_defaults = "comma"
always_use_bars_union = True
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_include_init_with_doc = False
napoleon_use_rtype = True
napoleon_use_param = True
napoleon_custom_sections = [("Params", "Parameters")]
# scvi-tools' base classes carry docstrings with their own (not always Sphinx-clean) markup; the
# inherited members are documented in scvi-tools itself.
autodoc_inherit_docstrings = False

# -- intersphinx ----------------------------------------------------------------------------------------
intersphinx_mapping = {
    "python": ("https://docs.python.org/3", None),
    "numpy": ("https://numpy.org/doc/stable/", None),
    "pandas": ("https://pandas.pydata.org/pandas-docs/stable/", None),
    "matplotlib": ("https://matplotlib.org/stable/", None),
    "anndata": ("https://anndata.readthedocs.io/en/stable/", None),
    "scanpy": ("https://scanpy.readthedocs.io/en/stable/", None),
    "squidpy": ("https://squidpy.readthedocs.io/en/stable/", None),
    "scvi-tools": ("https://docs.scvi-tools.org/en/stable/", None),
    "spatialdata": ("https://spatialdata.scverse.org/en/stable/", None),
    "spatialdata_plot": ("https://spatialdata.scverse.org/projects/plot/en/stable/", None),
    "torch": ("https://docs.pytorch.org/docs/stable/", None),
    "geopandas": ("https://geopandas.org/en/stable/", None),
    "shapely": ("https://shapely.readthedocs.io/en/stable/", None),
}


def _online(host: str = "docs.python.org", timeout: float = 3.0) -> bool:
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


# Sphinx reports an unreachable inventory as an untyped warning, which -W turns into a failed build.
# Offline builds (sandboxed CI) therefore skip cross-project links; online builds (Read the Docs) keep
# them. SPACRD_DOCS_OFFLINE=1 forces the offline behaviour.
if os.environ.get("SPACRD_DOCS_OFFLINE") == "1" or not _online():
    intersphinx_mapping = {}
    # ... and, offline, every object of another project (no inventory to resolve it against)
    nitpick_ignore_regex += [
        (
            r"py:.*",
            r"(numpy|np|pandas|pd|anndata|scanpy|squidpy|scvi|torch|torchmetrics|lightning|spatialdata|"
            r"spatialdata_plot|matplotlib|scipy|sklearn|pathlib|collections|typing|timm|pooch|PIL|xarray|"
            r"dask|zarr|tifffile|geopandas|shapely|os)(\..*)?",
        ),
        (r"py:data", r"Ellipsis"),
    ]
    logger.info("spacrd docs: no network, building without intersphinx links")

# -- MyST / myst-nb --------------------------------------------------------------------------------------
myst_enable_extensions = ["colon_fence", "deflist", "dollarmath", "amsmath"]
myst_heading_anchors = 3
# Tutorials are executed at build time; results are cached by notebook content, so an unchanged
# notebook is not re-run. A notebook that raises fails the build.
nb_execution_mode = os.environ.get("SPACRD_NB_EXECUTION_MODE", "cache")
nb_execution_timeout = 600
nb_execution_raise_on_error = True
nb_execution_show_tb = True
nb_execution_cache_path = str(HERE / "_build" / ".jupyter_cache")
nb_merge_streams = True

# -- HTML -----------------------------------------------------------------------------------------------
html_theme = "sphinx_book_theme"
html_title = "spacrd"
html_static_path = ["_static"]
html_theme_options = {
    "repository_url": repository_url,
    "use_repository_button": True,
    "path_to_docs": "docs/",
    "navigation_with_keys": False,
}
html_show_sourcelink = False

# -- benchmark tables -----------------------------------------------------------------------------------
# `python benchmarks/run_benchmark.py --docs-table` writes _static/benchmark_table.md and
# `python benchmarks/studies/image_blocks.py --docs-table` writes _static/image_blocks_table.md. The benchmark page
# carries a marker per table that is replaced by an include of its file when it exists, so the page builds
# before the first run too.
BENCHMARK_TABLES = {  # marker -> (table, how far its headings move down: its "#" lands below the page's)
    "<!-- benchmark-table -->": ("_static/benchmark_table.md", 1),
    "<!-- image-blocks-table -->": ("_static/image_blocks_table.md", 2),
}


def _include_benchmark_table(app, docname, source):
    if docname != "benchmark":
        return
    for marker, (table, offset) in BENCHMARK_TABLES.items():
        if (HERE / table).is_file():
            include = f"```{{include}} {table}\n:heading-offset: {offset}\n```\n"
            source[0] = source[0].replace(marker, include)


# -- tutorials ------------------------------------------------------------------------------------------
# docs/tutorials links to the repository's tutorials/ folder. Its notebooks are listed explicitly (an
# empty glob would be an untyped, unsuppressable warning), so the page also builds before the first one.
TUTORIALS = HERE.parent / "tutorials"
TUTORIALS_MARKER = "<!-- tutorials-toctree -->"


def _list_tutorials(app, docname, source):
    if docname != "tutorials":
        return
    notebooks = sorted(TUTORIALS.glob("*.ipynb")) if TUTORIALS.is_dir() else []
    if notebooks:
        entries = "\n".join(f"tutorials/{nb.stem}" for nb in notebooks)
        listing = f"```{{toctree}}\n:maxdepth: 1\n\n{entries}\n```\n"
    else:
        listing = "There are no notebooks in `tutorials/` in this checkout yet.\n"
    source[0] = source[0].replace(TUTORIALS_MARKER, listing)


def setup(app):
    app.connect("source-read", _include_benchmark_table)
    app.connect("source-read", _list_tutorials)
