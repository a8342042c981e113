"""``python -m lud ...`` (and ``torchrun -m lud train ...``) run the ``lud`` command line."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
