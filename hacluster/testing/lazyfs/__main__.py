"""``python -m hacluster.testing.lazyfs``: the LazyFS server process (see ``daemon``).

Owns nothing but the entry point. It must never be imported by the package (run as
``__main__`` while also imported, it would be executed twice).
"""

import sys

from hacluster.testing.lazyfs.daemon import main

if __name__ == "__main__":
    sys.exit(main())
