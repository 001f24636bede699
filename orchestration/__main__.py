"""``python -m altlas.orchestration`` runs the CLI."""

from altlas.orchestration.cli import main

if __name__ == "__main__":
    main()
