"""What several test modules share: cases, problems and process helpers.

Test modules never import one another; what two of them need lives here. ``tests/conftest.py``
puts ``tests/`` on ``sys.path`` (pytest's default import mode), so this package imports as
``helpers``; subprocesses get the same path from :func:`helpers.processes.checkout_pythonpath`.
"""
