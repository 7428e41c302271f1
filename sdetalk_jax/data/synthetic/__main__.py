"""`python -m sdetalk_jax.data.synthetic`: see `sdetalk_jax.data.synthetic.main`.

Kept apart from the generator so that worker processes, which re-import the main module, import
nothing but this stub.
"""

import sys

from sdetalk_jax.data.synthetic import main

if __name__ == "__main__":
    sys.exit(main())
