#!/usr/bin/env python3
"""Single-thread throughput of ImageNet training preprocessing: Larq Zoo's tf.data vs Pillow.

Usage
    python scripts/peer-data-bench.py DIR --image-size 224 [--images N] [--repeat R]
        [--implementation both|tf.data|pillow] [--seed 0]

Input: the JPEGs DIR/train/*/* (e.g. from scripts/make-imagenet-like.py), the first N in
sorted path order (default all). Output: one JSON line per implementation, e.g.
    {"implementation": "tf.data", "images_per_second": 95.1, "images": 40, ...}
`images_per_second` is the best of R timed full passes (default 3), after one untimed warm-up
pass (which also brings the files into the page cache). Extra fields: `image_size`, `repeat`,
`pass_seconds` (all timed passes), `cpu_seconds_per_image` (process user+sys CPU time of the
best pass / images, from os.times(), 10 ms resolution: ~1/images_per_second if the work
really ran on one core), `versions`.
With `both` (the default) each implementation runs in its own child process (this script
re-run with --implementation X), so TensorFlow is not loaded while Pillow is timed; the
pillow implementation never imports TensorFlow (it runs in any venv with numpy and Pillow).

Implementations (same work per image: read file, random crop, resize to S x S, random flip,
float32 normalised by the ImageNet mean/std; results are discarded):
  tf.data  Larq Zoo 2.4.0's own training preprocessing,
           larq_zoo.training.data.preprocess_image_bytes(bytes, is_training=True, image_size=S):
           tf.image.extract_jpeg_shape + tf.image.sample_distorted_bounding_box(
           min_object_covered=0.1, aspect_ratio_range=(3/4, 4/3), area_range=(0.08, 1),
           max_attempts=10) + tf.image.decode_and_crop_jpeg of that window (or, when it returns the
           whole image, a decode_and_crop_jpeg centre crop of S/(S+32) of the short side) +
           tf.compat.v1.image.resize_bicubic to S x S + random_flip_left_right + normalise.
           Pipeline: Dataset.from_tensor_slices(paths).map(tf.io.read_file)
           .map(preprocess, num_parallel_calls=1), options: threading.private_threadpool_size=1,
           threading.max_intra_op_parallelism=1, autotune off, no injected prefetch (so no
           prefetch buffer; the parallel map holds at most 1 element), iterated eagerly one
           element at a time. tf.config.threading inter-op and intra-op threads are set to 1
           right after importing TensorFlow, before anything else.
  pillow   Per file: Image.open; crop sampled in full-resolution coordinates by a Python port
           of TF's sampler (aspect uniform in [3/4, 4/3], then the crop height uniform in
           integers, area in [0.08, 1] of the image and >= 0.1 for min_object_covered, 10
           attempts; if none succeeds or the crop is the whole image, Larq Zoo's centre crop of
           S/(S+32) of the short side); img.draft('RGB', size) with
           the largest DCT scale 1/s (s in 1, 2, 4, 8) that keeps the crop's short side >= S
           pixels (libjpeg-turbo scaled decoding); crop + resize to S x S in one call,
           img.resize((S, S), Image.BILINEAR, box=scaled crop) (Pillow's bilinear is
           antialiased: its filter support widens when downscaling); random horizontal flip
           (Image.transpose); float32, (x - mean) * (1/std) as flat contiguous numpy ops.
           One thread (OMP/OpenBLAS/MKL threads = 1).
  TF's sampler is not area-uniform: drawing the height uniformly makes small crops more likely
  (mean area ~0.39 of a 500x375 image, vs 0.54 for area uniform in [0.08, 1]) and
  min_object_covered=0.1 rejects areas under 0.1; see scripts/crop-reference.py. The port draws
  the same distribution (checked against Tests/FlipTests/Fixtures/crop-reference.json), not the
  same random numbers. Random flips: TF's op-seeded stream vs Python's random.Random(--seed).

Versions used (2026-12-07, AMD EPYC Zen 3, 2 cores shared with other jobs):
  Python 3.11.7, TensorFlow (tensorflow-cpu) 2.15.1 (which bundles libjpeg-turbo 2.1.4),
  larq-zoo 2.4.0, numpy 1.26.4, Pillow 13.0.0 whose manylinux wheel bundles libjpeg-turbo 3.2.0
  (PIL.features.check_feature('libjpeg_turbo') == True, features.version('libjpeg_turbo') ==
  '3.2.0'). The script prints the versions it actually finds in each JSON line.

Environment: the Larq Zoo venv, ~/.cache/flip-peers/zoo-venv made by
/work/shared/peers/larq/zoo-setup.sh (TF 2.15.1, larq-zoo 2.4.0, numpy), which has no Pillow:
add it with `~/.cache/flip-peers/zoo-venv/bin/pip install pillow==13.0.0`.
"""
import argparse
import glob
import json
import os
import subprocess
import sys
import time

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "TF_NUM_INTEROP_THREADS",
           "TF_NUM_INTRAOP_THREADS"):
    os.environ.setdefault(_v, "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

MEAN_RGB = [0.485 * 255, 0.456 * 255, 0.406 * 255]
STDDEV_RGB = [0.229 * 255, 0.224 * 255, 0.225 * 255]
CROP_PADDING = 32


def cpu_time():
    t = os.times()
    return t.user + t.system


def time_passes(run_pass, repeat):
    run_pass()  # warm-up: graph tracing, page cache
    walls, cpus = [], []
    for _ in range(repeat):
        c0, t0 = cpu_time(), time.perf_counter()
        run_pass()
        walls.append(time.perf_counter() - t0)
        cpus.append(cpu_time() - c0)
    best = min(range(repeat), key=lambda i: walls[i])
    return walls, walls[best], cpus[best]


def bench_tf(paths, size, repeat, seed):
    import tensorflow as tf
    tf.config.threading.set_inter_op_parallelism_threads(1)
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.get_logger().setLevel("ERROR")  # resize_bicubic deprecation notice
    import larq_zoo
    from larq_zoo.training.data import preprocess_image_bytes
    tf.random.set_seed(seed)

    ds = tf.data.Dataset.from_tensor_slices(paths).map(tf.io.read_file)
    ds = ds.map(lambda b: preprocess_image_bytes(b, is_training=True, image_size=size),
                num_parallel_calls=1)
    opts = tf.data.Options()
    opts.threading.private_threadpool_size = 1
    opts.threading.max_intra_op_parallelism = 1
    opts.autotune.enabled = False
    opts.experimental_optimization.inject_prefetch = False
    ds = ds.with_options(opts)

    def run_pass():
        n = 0
        for x in ds:
            n += 1
        assert n == len(paths) and tuple(x.shape) == (size, size, 3)

    walls, best, cpu = time_passes(run_pass, repeat)
    return best, walls, cpu, {"tensorflow": tf.__version__, "larq_zoo": getattr(larq_zoo, "__version__", "2.4.0")}


def bench_pillow(paths, size, repeat, seed):
    import math
    import random

    import numpy as np
    import PIL
    from PIL import Image, features

    # Per-channel constants tiled to the flat S*S*3 layout: numpy's broadcasting over a
    # trailing axis of 3 runs ~15x slower than a flat contiguous loop.
    mean = np.tile(np.array(MEAN_RGB, np.float32), size * size)
    inv_std = np.tile((1.0 / np.array(STDDEV_RGB, np.float64)).astype(np.float32), size * size)
    rng = random.Random(seed)

    def sample_crop(W, H):
        """TF's SampleDistortedBoundingBox kernel (see scripts/crop-reference.py), ported:
        aspect uniform in [3/4, 4/3], height uniform integer, area in [0.08, 1] x W*H, and
        min_object_covered=0.1 against the whole image; 10 attempts. Then Larq Zoo's rule: a
        crop equal to the whole image (or no crop) becomes the S/(S+32) centre crop."""
        for _ in range(10):
            ar = rng.random() * (4 / 3 - 3 / 4) + 3 / 4
            min_area, max_area = 0.08 * W * H, 1.0 * W * H
            h = round(math.sqrt(min_area / ar))  # round() is half-to-even, like lrintf
            h_max = round(math.sqrt(max_area / ar))
            if round(h_max * ar) > W:
                h_max = int((W + 0.5 - 1e-7) / ar)
                if round(h_max * ar) > W:
                    h_max -= 1
            h_max = min(h_max, H)
            h = min(h, h_max)
            if h < h_max:
                h += rng.randint(0, h_max - h)
            w = round(h * ar)
            if w * h < min_area:
                h += 1
                w = round(h * ar)
            if w * h > max_area:
                h -= 1
                w = round(h * ar)
            if not (min_area <= w * h <= max_area and 0 < w <= W and 0 < h <= H):
                continue
            if w * h < 0.1 * W * H:  # min_object_covered
                continue
            if (w, h) == (W, H):
                break
            return (rng.randrange(W - w) if w < W else 0), (rng.randrange(H - h) if h < H else 0), w, h
        s = int(size / (size + CROP_PADDING) * min(W, H))
        return (W - s + 1) // 2, (H - s + 1) // 2, s, s

    def load(path):
        img = Image.open(path)
        W, H = img.size
        x, y, w, h = sample_crop(W, H)
        s = 8
        while s > 1 and min(w, h) // s < size:
            s //= 2
        if s > 1:
            img.draft("RGB", (W // s, H // s))
        fx, fy = img.size[0] / W, img.size[1] / H
        img = img.convert("RGB") if img.mode != "RGB" else img
        out = img.resize((size, size), Image.BILINEAR, box=(x * fx, y * fy, (x + w) * fx, (y + h) * fy))
        if rng.random() < 0.5:
            out = out.transpose(Image.FLIP_LEFT_RIGHT)
        a = np.asarray(out).reshape(-1).astype(np.float32)
        a -= mean
        a *= inv_std
        return a.reshape(size, size, 3)

    def run_pass():
        for p in paths:
            a = load(p)
        assert a.shape == (size, size, 3) and a.dtype == np.float32

    walls, best, cpu = time_passes(run_pass, repeat)
    return best, walls, cpu, {"pillow": PIL.__version__, "numpy": np.__version__,
                              "pillow_libjpeg_turbo": features.check_feature("libjpeg_turbo"),
                              "libjpeg_turbo": features.version("libjpeg_turbo")}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("dir")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--images", type=int, default=None, help="first N files in sorted order (default all)")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--implementation", choices=["both", "tf.data", "pillow"], default="both")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()

    if a.implementation == "both":
        rc = 0
        for impl in ("tf.data", "pillow"):
            cmd = [sys.executable, os.path.abspath(__file__), a.dir, "--image-size", str(a.image_size),
                   "--repeat", str(a.repeat), "--implementation", impl, "--seed", str(a.seed)]
            if a.images is not None:
                cmd += ["--images", str(a.images)]
            rc |= subprocess.call(cmd)
        return rc

    paths = sorted(glob.glob(os.path.join(a.dir, "train", "*", "*")))
    if a.images is not None:
        paths = paths[:a.images]
    if not paths:
        sys.exit("no files under %s/train/*/*" % a.dir)
    bench = bench_tf if a.implementation == "tf.data" else bench_pillow
    best, walls, cpu, versions = bench(paths, a.image_size, a.repeat, a.seed)
    print(json.dumps({
        "implementation": a.implementation,
        "images_per_second": round(len(paths) / best, 2),
        "images": len(paths),
        "image_size": a.image_size,
        "repeat": a.repeat,
        "pass_seconds": [round(t, 4) for t in walls],
        "cpu_seconds_per_image": round(cpu / len(paths), 5),
        "versions": dict(versions, python=sys.version.split()[0]),
    }), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
