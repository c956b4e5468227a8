"""The MD2PR paper's BibTeX: the losses' ``citation`` property and the model card quote it."""

from __future__ import annotations

__all__ = ["MD2PR_CITATION"]

MD2PR_CITATION = """
@misc{li2023md2pr,
      title={A Multi-level Distillation based Dense Passage Retrieval Model},
      author={Haifeng Li and Mo Hai and Dong Tang},
      year={2023},
      eprint={2312.16821},
      archivePrefix={arXiv},
      primaryClass={cs.IR},
      url={https://arxiv.org/abs/2312.16821},
}
"""
