"""`python -m common.sample_data OUT [--size tiny|smoke|demo]`: small generated copies of the
three dataset trees, for the tests and the demo.

The generator itself is common/data/synthetic.py.
"""
import sys

from common.data.synthetic import main

if __name__ == "__main__":
    sys.exit(main())
