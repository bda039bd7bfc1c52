"""Text-to-image from Python with sdrs.

    pip install ./sd-py pillow tqdm
    python examples/python/txt2img.py --prompt "a lighthouse at dusk" --steps 20 --seed 42

With no --model it uses the tiny random-weight model in tests/fixtures (noise-like pictures).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import sdrs


def main() -> None:
    root = Path(__file__).resolve().parents[2]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(root / "tests" / "fixtures" / "tiny-sd"))
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--negative-prompt", default=None)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=7.5)
    parser.add_argument("--scheduler", default="pndm", choices=sdrs.SCHEDULERS)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--output", default="output.png")
    args = parser.parse_args()

    pipe = sdrs.Pipeline.from_file(args.model, device=args.device)
    result = pipe.generate(
        args.prompt,
        args.negative_prompt,
        steps=args.steps,
        guidance_scale=args.guidance,
        scheduler=args.scheduler,
        seed=args.seed,
        progress=True,
    )
    image = result.images[0]
    if not hasattr(image, "save"):
        raise SystemExit("saving needs Pillow: pip install pillow")
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("parameters", result.infotexts[0])
    image.save(args.output, pnginfo=info)
    print(result.infotexts[0])


if __name__ == "__main__":
    main()
