"""`python -m jamba_stack.app.cli`: the same as the `jamba-stack` command."""

from jamba_stack.app.cli import main

main()
