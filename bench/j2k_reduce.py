"""Reduced-resolution JPEG 2000 decoding: speed-up over a full decode and the pixel cost after resize.

Builds one synthetic mammogram at a real detector size (default 4096x3328, 12-bit), stores it as a
JPEG 2000 lossless DICOM, then times ``decode_dicom`` in full and with ``min_size`` = the shard image
size, and compares the two after ``preprocess_view`` (the images that would go into a shard).

    .venv/bin/python bench/j2k_reduce.py [--height 4096 --width 3328 --out-size 760 480 --repeats 3]
"""

from __future__ import annotations

import argparse
import io
import statistics
import tempfile
import time
from pathlib import Path

import imagecodecs
import numpy as np
import pydicom
from pydicom.encaps import encapsulate
from pydicom.uid import UID

from mmclip_dist.config import SyntheticConfig
from mmclip_dist.data.build.dicom import decode_dicom
from mmclip_dist.data.build.preprocess import preprocess_view
from mmclip_dist.data.synthetic import generate_vindr_dataset


def j2k_dicom(height: int, width: int) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        generate_vindr_dataset(Path(tmp), SyntheticConfig(num_patients=1, height=height, width=width, seed=0))
        ds = pydicom.dcmread(next(Path(tmp).glob("images/*/*.dicom")))
    arr = ds.pixel_array
    # Six resolutions (five wavelet levels), the OpenJPEG default that scanners also use.
    frame = imagecodecs.jpeg2k_encode(
        arr, level=0, codecformat="J2K", reversible=True, bitspersample=int(ds.BitsStored), resolutions=6
    )
    ds.PixelData = encapsulate([frame])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = UID("1.2.840.10008.1.2.4.90")
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def best_time(fn, repeats: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--height", type=int, default=4096)
    parser.add_argument("--width", type=int, default=3328)
    parser.add_argument("--out-size", type=int, nargs=2, default=(760, 480))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    out_size = tuple(args.out_size)

    data = j2k_dicom(args.height, args.width)
    t_full, full = best_time(lambda: decode_dicom(data), args.repeats)
    t_red, reduced = best_time(lambda: decode_dicom(data, min_size=out_size), args.repeats)
    a = preprocess_view(full, np.zeros((0, 4)), full.laterality, out_size).image.astype(np.float64) / 65535
    b = preprocess_view(reduced, np.zeros((0, 4)), reduced.laterality, out_size).image.astype(np.float64) / 65535
    diff = np.abs(a - b)
    print(f"image {args.height}x{args.width}, J2K lossless {len(data) / 1e6:.1f} MB, out size {out_size}")
    print(f"full decode     {t_full * 1000:8.1f} ms  -> {full.pixels.shape}")
    print(f"reduced decode  {t_red * 1000:8.1f} ms  -> {reduced.pixels.shape} (scale {reduced.scale[0]:.4f})")
    print(f"speed-up        {t_full / t_red:8.1f}x")
    print(
        f"after preprocess: mean |diff| {diff.mean():.5f}, p99 {np.percentile(diff, 99):.5f}, "
        f"max {diff.max():.5f} (fraction of full range); median pixel {statistics.median(a.ravel()):.3f}"
    )


if __name__ == "__main__":
    main()
