"""Package discovery; everything else is in setup.cfg.

Every subpackage of ``md2pr_st`` is found automatically (a new one cannot be left out of the wheel), and the
top-level ``model_cards/`` folder (the model card template) ships as ``md2pr_st.model_cards``.
"""

from setuptools import find_packages, setup

setup(packages=[*find_packages(include=["md2pr_st", "md2pr_st.*"]), "md2pr_st.model_cards"])
