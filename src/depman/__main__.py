"""`python -m depman` runs the CLI."""

from depman.cli import main

if __name__ == "__main__":
    main()
