"""`python -m stages ...` runs the `mer` command (useful where the console script is not on PATH)."""

from stages.cli import main

main()
