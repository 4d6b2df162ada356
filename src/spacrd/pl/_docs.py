"""Parameter descriptions that several plotting functions share, substituted with :mod:`docrep`.

A docstring decorated with ``@d.dedent`` holds ``%(name)s`` where a shared block goes; each block is
written at the indentation of a dedented numpydoc ``Parameters`` section.
"""

from docrep import DocstringProcessor

_prob_key = """\
prob_key
    Column of ``obs`` with the cancer probability in [0, 1], as written by
    :meth:`spacrd.model.SpaCRD.predict`."""

_uns_key = """\
uns_key
    ``uns`` entry that :meth:`~spacrd.model.SpaCRD.predict` wrote (its ``uns_key``), read for the
    threshold of the call. If it is absent or records another ``prob_key``, the one ``uns`` entry with a
    ``"threshold"`` and this ``prob_key`` is used."""

_ax = """\
ax
    Axes to draw into; a new figure is made if `None`.
return_ax
    Return the axes."""

_show_save = """\
show
    Call :func:`matplotlib.pyplot.show`; by default only when the axes are not returned.
save
    Path to save the figure to, with the extension choosing the format."""

d = DocstringProcessor(prob_key=_prob_key, uns_key=_uns_key, ax=_ax, show_save=_show_save)
