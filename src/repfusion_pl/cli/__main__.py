"""``python -m repfusion_pl.cli``: the ``repfusion`` command without its console script."""

from repfusion_pl.cli.main import main

main()
