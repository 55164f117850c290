"""depthcurse: train depth-grown transformers and measure how they use their depth.

Importing the package stays light: transformers and TransformerLens are
imported only by the functions that need them (`load`, export, analyses).
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def load(source: Any, **kwargs: Any) -> Any:
    """Load a checkpoint, Hugging Face folder, GGUF file or bundled model as a hooked model.

    See `depthcurse.hooked.load` for the arguments.
    """
    from depthcurse.hooked import load as load_hooked

    return load_hooked(source, **kwargs)
