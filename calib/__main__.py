"""``python -m calib``: the ``calib`` command (:mod:`calib.cli`)."""

from calib.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
