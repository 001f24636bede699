"""``python -m altlas.orchestration`` runs the CLI."""

from altlas.orchestration.cli import main

main()
