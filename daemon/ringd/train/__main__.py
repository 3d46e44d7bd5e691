"""``python -m ringd.train SPEC.json`` (see :mod:`ringd.train.job`)."""

from ringd.train.job import main

if __name__ == "__main__":
    raise SystemExit(main())
