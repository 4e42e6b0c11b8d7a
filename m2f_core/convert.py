"""Convert any weight source to our format (``model.safetensors`` + ``config.json``).

    python -m m2f_core.convert SOURCE OUT_DIR [--config PRESET_OR_JSON] [--fp16]

SOURCE is anything ``load_model`` accepts: our folder, a Hugging Face folder or hub id, a Detectron2
``.pkl`` / ``.pth``. The result loads without pickle and without ``transformers``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from .checkpoint import load_model, save_model
from .cli import program_name
from .errors import CheckpointError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=program_name("python -m m2f_core.convert"),
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("source", help="weights: folder, .pkl, .pth, or Hugging Face hub id")
    parser.add_argument("out", type=Path, help="output folder (created)")
    parser.add_argument("--config", default=None, help="preset name or config JSON (default: inferred)")
    parser.add_argument("--fp16", action="store_true", help="store weights in float16 (half the size)")
    parser.add_argument("--non-strict", action="store_true", help="load what fits, report the rest")
    args = parser.parse_args(argv)
    try:
        model = load_model(args.source, config=args.config, strict=not args.non_strict)
    except (CheckpointError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    save_model(model, args.out, dtype=torch.float16 if args.fp16 else None)
    cfg = model.config
    params = sum(p.numel() for p in model.parameters()) / 1e6
    print(f"{args.out}: {cfg.name} ({cfg.backbone.type}, {cfg.num_classes} classes of {cfg.dataset}, "
          f"{cfg.num_queries} queries, {params:.1f}M parameters)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
