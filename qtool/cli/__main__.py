"""`python -m qtool.cli`: the same as the `qtool` console script."""

from qtool.cli.main import main

main()
