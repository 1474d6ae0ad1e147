"""``python -m danp_pipeline.cli``: the same as the ``danp-protect`` command."""

from . import cli_main

cli_main()
