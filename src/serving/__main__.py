"""`python -m src.serving`: run the API without the pipeline's imports (the Docker image's CMD)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from src.utils.config import load_config


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the flags and serve until interrupted."""
    parser = argparse.ArgumentParser(prog="python -m src.serving", description=__doc__)
    parser.add_argument("--params", type=Path, default=None, help="default params.yaml")
    parser.add_argument("--host", default=None, help="default serving.host")
    parser.add_argument("--port", type=int, default=None, help="default serving.port")
    parser.add_argument("--backend", choices=["onnx", "spark"], default=None)
    parser.add_argument("--bundle", type=Path, default=None,
                        help="a bundle folder instead of serving.model_uri")
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    from src.serving.app import serve

    serve(load_config(args.params), args.host, args.port, args.backend, args.bundle,
          log_level=args.log_level)
    return 0


if __name__ == "__main__":
    sys.exit(main())
