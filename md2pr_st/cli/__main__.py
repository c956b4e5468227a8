"""``python -m md2pr_st.cli``: the ``md2pr`` command."""

import sys

from md2pr_st.cli import main

sys.exit(main())
