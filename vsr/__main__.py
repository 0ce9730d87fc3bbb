"""`python -m vsr` is the same as the `vsr` console script."""

from vsr.cli.main import main

if __name__ == "__main__":
    main()
