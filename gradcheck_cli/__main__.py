"""Entry point for ``python -m gradcheck_cli``."""

from gradcheck_cli.cli import main

if __name__ == "__main__":
    main()
