"""kinema: generative modeling of video with diffusion models.

Importing kinema never touches CUDA; devices are chosen when a model is built or a run starts.
"""

__version__ = "0.1.0"

from kinema.conditioning import Conditioning  # noqa: E402

__all__ = ["Conditioning", "__version__"]
