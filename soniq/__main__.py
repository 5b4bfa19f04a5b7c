"""``python -m soniq`` is the ``soniq`` command."""

from soniq.cli import main

if __name__ == "__main__":
    main()
