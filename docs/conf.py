"""Sphinx configuration: API reference from the docstrings, guides in Markdown (MyST).

Build: ``sphinx-build -W -b html docs docs/_build/html`` (``pip install -e '.[docs]'``).
"""

import znorm_optax

project = "znorm-optax"
author = "znorm-optax authors"
copyright = "the znorm-optax authors, Apache-2.0"  # noqa: A001
release = version = znorm_optax.__version__

extensions = [
  "sphinx.ext.autodoc",
  "sphinx.ext.autosummary",
  "sphinx.ext.napoleon",  # Google-style Args / Returns / Example sections
  "sphinx.ext.mathjax",
  "sphinx.ext.viewcode",  # "[source]" links from every API page to the code
  "myst_parser",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]
templates_path = ["_templates"]

autosummary_generate = True
autosummary_ignore_module_all = False
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
# Keep the public type aliases as written instead of expanding them into long unions.
autodoc_type_aliases = {
  name: name
  for name in (
    "chex.Numeric",
    "chex.ArrayTree",
    "optax.Updates",
    "optax.Params",
    "optax.OptState",
    "optax.ScalarOrSchedule",
    "optax.GradientTransformation",
    "_numerics.Axis",
  )
}
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False

myst_enable_extensions = ["dollarmath"]
myst_heading_anchors = 3

html_theme = "furo"
html_title = f"znorm-optax {release}"
