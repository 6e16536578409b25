"""``python -m hacluster.testing.history``: a writer in its own process (see ``writer.main``).

Owns nothing but the entry point. It must never be imported by the package (run as
``__main__`` while also imported, it would be executed twice).
"""

from hacluster.testing.history.writer import main

if __name__ == "__main__":
    raise SystemExit(main())
