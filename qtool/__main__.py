"""`python -m qtool`: the same as the `qtool` console script."""

from qtool.cli import main

main()
