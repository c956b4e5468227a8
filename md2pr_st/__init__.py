"""md2pr-st: multi-level distillation (MD2PR) of cross-encoders into sentence-transformers dense retrievers."""

from __future__ import annotations

__version__ = "0.1.0"
