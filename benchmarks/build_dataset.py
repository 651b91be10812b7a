"""Preparation speed of the real-data builders on realistic fake archives.

Writes a fake NYUDv2 (448x576, ATRC layout) and/or PASCALContext (375x500,
JPEG + .mat) archive with tests/fake_archives.py, then times
`download_and_prepare` (array_record) from the .tar.gz or the extracted
folder and prints examples per second (archive writing is not timed).

  python benchmarks/build_dataset.py --dataset nyud_v2 --num 40
  python benchmarks/build_dataset.py --dataset pascal_context --input folder
  python benchmarks/build_dataset.py --maps noise     # zlib worst case
"""

from __future__ import annotations

import argparse
import logging
import pathlib
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

# pylint: disable=g-import-not-at-top,wrong-import-position
from data_builders import nyud_v2
from data_builders import pascal_context
from tests import fake_archives as fa

_SPECS = {
    "nyud_v2": (nyud_v2, "NYUDv2", "NYUDv2.tar.gz", (448, 576)),
    "pascal_context": (pascal_context, "PASCALContext",
                       "PASCALContext.tar.gz", (375, 500)),
}


def _write(name: str, root: pathlib.Path, num: int, hw,
           smooth: bool) -> None:
  n_val = max(1, num // 4)
  train = [f"{i:06d}" for i in range(num - n_val)]
  val = [f"{i:06d}" for i in range(num - n_val, num)]
  if name == "nyud_v2":
    fa.write_nyud(root, train=train, val=val, hw=hw, layout="atrc",
                  smooth=smooth)
  else:
    fa.write_pascal(root, train=train, val=val, hw=hw, voc=train[::2],
                    smooth=smooth)


def run(name: str, num: int, source: str, work: pathlib.Path,
        smooth: bool = True) -> float:
  module, folder, archive, hw = _SPECS[name]
  src = work / "src"
  _write(name, src, num, hw, smooth)
  manual = src
  if source == "tarball":
    manual = pathlib.Path(fa.make_tarball(src / folder, work / archive))
  builder = module.make_builder("all", data_dir=str(work / "tfds"),
                                manual_dir=str(manual))
  t0 = time.perf_counter()
  builder.download_and_prepare(file_format="array_record")
  dt = time.perf_counter() - t0
  n = sum(s.num_examples for s in builder.info.splits.values())
  rate = n / dt
  print(f"{name} ({source}, {'smooth' if smooth else 'noise'} maps, "
        f"{hw[0]}x{hw[1]}, {n} examples): "
        f"{dt:.2f} s, {rate:.1f} examples/s")
  return rate


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--dataset", choices=[*_SPECS, "both"], default="both")
  p.add_argument("--num", type=int, default=40, help="images per dataset")
  p.add_argument("--input", choices=["tarball", "folder"], default="tarball")
  p.add_argument("--maps", choices=["smooth", "noise"], default="smooth",
                 help="content of the fake normals/saliency maps: smooth "
                 "regions like the real distilled maps, or per-pixel noise "
                 "(a worst case for zlib, which dominates preparation)")
  args = p.parse_args()
  logging.basicConfig(level=logging.WARNING)
  names = list(_SPECS) if args.dataset == "both" else [args.dataset]
  for name in names:
    with tempfile.TemporaryDirectory() as tmp:
      run(name, args.num, args.input, pathlib.Path(tmp),
          smooth=args.maps == "smooth")


if __name__ == "__main__":
  main()
