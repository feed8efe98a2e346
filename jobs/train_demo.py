"""Retrain the demo CNN shipped as sgcore/models/weights/demo.pt (CPU, deterministic).

    python -m jobs.train_demo [--out PATH] [--epochs N]
"""

from __future__ import annotations

import argparse

import torch

from sgcore.cli import make_parser
from sgcore.demo import TrainConfig, evaluate, save_demo_checkpoint, train_demo_model
from sgcore.demo.train import config_dict
from sgcore.models import DEMO_WEIGHTS_PATH


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser("python -m jobs.train_demo", __doc__)
    defaults = TrainConfig()
    parser.add_argument("--out", default=str(DEMO_WEIGHTS_PATH), help="checkpoint path (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=defaults.epochs, help="default: %(default)s")
    parser.add_argument("--n-per-class", type=int, default=defaults.n_per_class, help="training images per class (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="training split seed (default: %(default)s)")
    parser.add_argument("--heldout-per-class", type=int, default=200, help="held-out images per class for the accuracy check (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads; the bits of the result depend on it (default: %(default)s)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    config = TrainConfig(epochs=args.epochs, n_per_class=args.n_per_class, seed=args.seed)
    model = train_demo_model(config, log=lambda line: print(line, flush=True))
    accuracy = evaluate(model, n_per_class=args.heldout_per_class)
    print(f"held-out accuracy: {accuracy:.4f}")
    meta = {"train_config": config_dict(config), "heldout_accuracy": accuracy, "threads": args.threads}
    print(f"wrote {save_demo_checkpoint(model, args.out, meta=meta)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
