"""sdrs: Stable Diffusion 1.x inference in Rust.

Load a model with :meth:`Pipeline.from_file` and call :meth:`Pipeline.generate`::

    import sdrs

    pipe = sdrs.Pipeline.from_file("model.safetensors")
    result = pipe.generate("a lighthouse at dusk", steps=20, seed=42)
    result.images[0].save("out.png")

Errors raised by sdrs derive from :class:`SdrsError` (missing files raise the builtin
:class:`FileNotFoundError`; :class:`InvalidArgumentError` is also a :class:`ValueError`).
"""

from sdrs._sdrs import (
    SCHEDULERS,
    CancelledError,
    DeviceError,
    GenerationResult,
    InvalidArgumentError,
    ModelLoadError,
    Pipeline,
    SdrsError,
    __version__,
)

__all__ = [
    "SCHEDULERS",
    "CancelledError",
    "DeviceError",
    "GenerationResult",
    "InvalidArgumentError",
    "ModelLoadError",
    "Pipeline",
    "SdrsError",
    "__version__",
]
