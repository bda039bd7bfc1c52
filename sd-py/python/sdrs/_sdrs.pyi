"""Type stubs of the native module ``sdrs._sdrs`` (checked by ``mypy.stubtest``)."""

import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any, final

import numpy as np
import numpy.typing as npt

__all__ = [
    "Pipeline",
    "GenerationResult",
    "SdrsError",
    "ModelLoadError",
    "InvalidArgumentError",
    "DeviceError",
    "CancelledError",
    "SCHEDULERS",
    "ScanReport",
    "Lora",
    "Embedding",
    "Hypernetwork",
    "scan_checkpoint",
    "convert_checkpoint",
    "__version__",
]

__version__: str
SCHEDULERS: list[str]

class SdrsError(Exception):
    """Base class of every error sdrs raises itself."""

class ModelLoadError(SdrsError):
    """A model or weight file is malformed, incomplete, or does not fit its configuration."""

class InvalidArgumentError(SdrsError, ValueError):
    """An argument is out of range or malformed; the message names the parameter."""

class DeviceError(SdrsError):
    """The compute device is unavailable or failed."""

class CancelledError(SdrsError):
    """Generation was cancelled because the progress callback returned False."""

@final
class GenerationResult:
    """The result of one ``Pipeline.generate`` call."""

    @property
    def images(self) -> list[Any]:
        """PIL images, or numpy uint8 (H, W, 3) arrays when Pillow is not installed."""
    @property
    def latents(self) -> npt.NDArray[np.float32]:
        """The final latents before decoding, float32 NCHW."""
    @property
    def infotexts(self) -> list[str]:
        """One A1111-style parameters text per image."""
    @property
    def adapter_report(self) -> str:
        """What the adapters did: LoRA modules and keys not applied, hypernetwork warnings,
        embeddings skipped (empty without adapters)."""
    @property
    def unapplied_keys(self) -> dict[str, list[tuple[str, str]]]:
        """Per LoRA name, every key of its file that was not applied, with the reason."""
    @property
    def skipped_embeddings(self) -> dict[str, str]:
        """Per embedding name, why the prompts could not use it (its name stayed text)."""
    def __len__(self) -> int: ...
    def __getitem__(self, index: int, /) -> Any: ...
    def __iter__(self) -> Iterator[Any]: ...

@final
class Lora:
    """A LoRA / LyCORIS file, loaded once."""

    def __new__(cls, path: str | os.PathLike[str]) -> Lora: ...
    @property
    def name(self) -> str:
        """The file name without extension (what <lora:NAME> matches)."""
    @property
    def alias(self) -> str:
        """ss_output_name, else name."""
    @property
    def short_hash(self) -> str | None:
        """AUTOMATIC1111's short hash."""
    @property
    def metadata(self) -> dict[str, str]:
        """The file's metadata."""
    @property
    def modules(self) -> list[tuple[str, str]]:
        """(module, algorithm) of every module."""

@final
class Embedding:
    """A textual-inversion embedding, loaded once."""

    def __new__(cls, path: str | os.PathLike[str], token: str | None = None) -> Embedding: ...
    @property
    def name(self) -> str:
        """The trigger word."""
    @property
    def vectors(self) -> int:
        """The number of vectors."""
    @property
    def width(self) -> int:
        """The width of each vector."""
    @property
    def short_hash(self) -> str | None:
        """AUTOMATIC1111's short hash."""

@final
class Hypernetwork:
    """An AUTOMATIC1111 hypernetwork, loaded once."""

    def __new__(cls, path: str | os.PathLike[str]) -> Hypernetwork: ...
    @property
    def name(self) -> str:
        """The file name without extension (what <hypernet:NAME> matches)."""
    @property
    def short_hash(self) -> str | None:
        """AUTOMATIC1111's short hash."""
    @property
    def widths(self) -> list[int]:
        """The context widths it has modules for."""

_LoraItem = (
    Lora
    | str
    | os.PathLike[str]
    | tuple[Lora | str | os.PathLike[str], float]
    | tuple[Lora | str | os.PathLike[str], float, float]
)
_HypernetworkItem = (
    Hypernetwork | str | os.PathLike[str] | tuple[Hypernetwork | str | os.PathLike[str], float]
)
_Folders = str | os.PathLike[str] | list[str | os.PathLike[str]]

@final
class Pipeline:
    """A loaded Stable Diffusion 1.x model, shareable between threads."""

    @staticmethod
    def from_file(
        path: str | os.PathLike[str],
        device: str = "cpu",
        *,
        prefer_ema: bool = False,
        config_dir: str | os.PathLike[str] | None = None,
    ) -> Pipeline:
        """Loads a model from a single-file checkpoint or a diffusers folder."""
    @property
    def device(self) -> str:
        """The device the model runs on."""
    @property
    def default_size(self) -> tuple[int, int]:
        """The model's native image size (width, height)."""
    def generate(
        self,
        prompt: str,
        negative_prompt: str | None = None,
        *,
        steps: int = 20,
        guidance_scale: float = 7.5,
        width: int | None = None,
        height: int | None = None,
        seed: int | None = None,
        scheduler: str = "pndm",
        batch_size: int = 1,
        clip_skip: int = 1,
        init_image: str | os.PathLike[str] | npt.NDArray[np.uint8] | Any | None = None,
        strength: float = 0.8,
        latents: npt.NDArray[np.float32] | None = None,
        callback: Callable[[int, int], bool | None] | None = None,
        progress: bool = False,
        loras: Iterable[_LoraItem] | None = None,
        embeddings: Iterable[Embedding | str | os.PathLike[str]] | None = None,
        hypernetworks: Iterable[_HypernetworkItem] | None = None,
        lora_dir: _Folders | None = None,
        hypernetwork_dir: _Folders | None = None,
        prompt_syntax: str = "a1111",
        emphasis: str = "original",
        pad_cond_uncond: bool = False,
    ) -> GenerationResult:
        """Generates images from a prompt, or from ``init_image``."""

@final
class ScanReport:
    """What ``scan_checkpoint`` found in a file; ``str()`` gives the full report."""

    @property
    def path(self) -> str:
        """The file scanned."""
    @property
    def format(self) -> str:
        """The container in words."""
    @property
    def loadable(self) -> bool:
        """Whether the file can be loaded (nothing would run; every global is allowed)."""
    @property
    def reason(self) -> str | None:
        """Why the file was refused, or None."""
    @property
    def tensors(self) -> list[tuple[str, str, list[int]]]:
        """(name, dtype, shape) of every tensor, in file order."""
    @property
    def globals(self) -> list[tuple[str, str, int]]:
        """(module, name, count) of every global a pickle names (a loadable file)."""
    @property
    def refused_globals(self) -> list[tuple[str, str, int, str | None]]:
        """For a refused file: (module, name, count, why refused or None) of every global."""
    @property
    def metadata(self) -> dict[str, str]:
        """Safetensors metadata or a checkpoint's scalar entries."""

def scan_checkpoint(path: str | os.PathLike[str]) -> ScanReport:
    """Reports what a checkpoint holds and whether it is safe to load, running nothing from it."""

def convert_checkpoint(
    input: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    dtype: str | None = None,
) -> int:
    """Converts a checkpoint to .safetensors without running code from it; returns the tensor count."""
