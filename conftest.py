"""Root pytest configuration: the package's docstring examples run as doctests (``--doctest-modules``).

``lympho_features/cnn_nets.py`` imports torch when imported, and torch is optional (the ``cnn``
extra): it is left out of the doctest collection so that ``make test`` runs without torch.
"""

collect_ignore = ["lympho_features/cnn_nets.py"]
